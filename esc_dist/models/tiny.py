"""A small causal LM built from scratch, with a byte-level BPE tokenizer trained on ESConv.

It is the CPU default the whole pipeline runs on: random initialisation from a seed, a ChatML-style
chat template whose assistant turns are wrapped in ``{% generation %}`` markers (so assistant-only
losses work), pad and eos set. Same config and corpus → byte-identical files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from ..config import TinyModelConfig
from ..errors import ConfigError
from ..io import mark_completed, write_manifest
from ..outputs import check_output, staged_dir
from .chatml import chatml_template

BOS, EOS, PAD = "<|endoftext|>", "<|im_end|>", "<|pad|>"
IM_START = "<|im_start|>"
SPECIAL_TOKENS = [PAD, BOS, IM_START, EOS]

CHAT_TEMPLATE = chatml_template()


def corpus_texts(corpus: str | Path) -> Iterator[str]:
    """Texts to train the tokenizer on.

    ``corpus`` is an ESConv file (every utterance) or an `esc-dist prepare` directory (the train
    split of every task, prompts included). The prompts' fixed wording is always added so that
    it tokenizes compactly.
    """
    from ..data import tasks
    from ..strategies import DESCRIPTIONS, STRATEGIES

    corpus = Path(corpus)
    seen: set[str] = set()  # prompts repeat the history of every earlier turn: count each once
    if corpus.is_dir():
        for task in tasks.TASKS:
            ds = tasks.load_task(corpus, task)["train"]
            for row in ds:
                for m in row["prompt"] + row["completion"]:
                    if m["content"] not in seen:
                        seen.add(m["content"])
                        yield m["content"]
    else:
        from ..data.esconv import load_esconv

        for conv in load_esconv(corpus):
            for m in conv.messages:
                yield m.text
    yield tasks.VANILLA_SYSTEM
    yield tasks.PLANNER_SYSTEM
    for s in STRATEGIES:
        yield tasks.GENERATOR_SYSTEM.format(strategy=s, description=DESCRIPTIONS[s])
        yield f"[{s}]"


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with the chat template and special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.padding_side = "left"  # generation pads on the left; trainers set their own side
    return hf


def build_model(cfg: TinyModelConfig, tokenizer):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if cfg.architecture != "llama":
        raise ConfigError(
            f"tiny_model.architecture {cfg.architecture!r} is not supported; use 'llama'"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def build_tiny_model(cfg: TinyModelConfig, corpus: str | Path, out: str | Path) -> dict:
    """Train the tokenizer, initialise the model and save both to ``out``; returns a summary."""
    check_output(out, "tiny-model", [corpus])
    tokenizer = train_tokenizer(corpus_texts(corpus), cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"parameters": n_params, "vocab_size": len(tokenizer), "architecture": cfg.architecture}
    with staged_dir(out, "tiny-model", [corpus]) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        write_manifest(
            tmp, {"stage": "tiny-model", "config": cfg.__dict__, "corpus": str(corpus), **info}
        )
        mark_completed(tmp)
    return info
