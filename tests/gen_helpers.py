"""Shared setup of the generation, mining and inference tests: small data, the tiny model and
"parrot" models programmed to always answer a given text."""

from __future__ import annotations

import json
from pathlib import Path

PLANNER_ANSWER = "Reflection of feelings"
VANILLA_ANSWER = "[Question] What happened?"
MAX_HISTORY = 6


def build_parrot(base_dir: str | Path, out_dir: str | Path, text: str) -> Path:
    """A copy of the tiny model that answers ``text`` to any chat prompt.

    Attention and MLP outputs are zeroed, so the hidden state is the current token's embedding
    and the next token depends on the current one only: a programmed chain from the last token
    of the generation prompt through the tokens of ``text`` to eos (untied output layer with
    large logits on the chain, so sampling at temperature 0.7 follows it too).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esc_dist.generation import prompt_ids

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), tie_word_embeddings=False)
    start = prompt_ids(tok, [{"role": "user", "content": "hi"}])[-1]
    chain = [start] + tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(set(chain)) == len(chain) <= model.config.hidden_size, chain
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        head = torch.nn.Parameter(emb.detach().clone() * 0.01)
        model.lm_head.weight = head
        for i, (a, b) in enumerate(zip(chain, chain[1:])):
            emb[a] = 0.0
            emb[a, i] = 1.0
            head[b, i] = 20.0
    model.config.tie_word_embeddings = False
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return Path(out_dir)


def gen_setup(tmp_path_factory, esconv_dir) -> Path:
    """Data (4/2/3 dialogues, 6 history messages), the tiny model and two parrots, built once
    per test session (the directory is shared by the modules that use it)."""
    from esc_dist.config import DataConfig, TinyModelConfig
    from esc_dist.data.tasks import prepare
    from esc_dist.models.tiny import build_tiny_model

    root = tmp_path_factory.getbasetemp() / "gen-setup"
    if (root / "READY").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    prepare(DataConfig(esconv=str(esconv_dir / "esconv.json"),
                       split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
                       max_dialogues={"train": 4, "validation": 2, "test": 3},
                       max_history_messages=MAX_HISTORY), root / "data")
    build_tiny_model(TinyModelConfig(vocab_size=2048, hidden_size=64, num_layers=2,
                                     intermediate_size=176), esconv_dir / "esconv.json",
                     root / "tiny")
    build_parrot(root / "tiny", root / "parrot-planner", PLANNER_ANSWER)
    build_parrot(root / "tiny", root / "parrot-vanilla", VANILLA_ANSWER)
    (root / "READY").write_text("")
    return root


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()
            if line.strip()]


def chunk_records(chunk_dir: str | Path) -> list[dict]:
    return [r for p in sorted(Path(chunk_dir).glob("chunk-*.jsonl")) for r in read_jsonl(p)]


class AnyChunk:
    """A marker for ``tests.launch.kill_rank_when``: "exists" once any chunk file is written."""

    def __init__(self, chunk_dir: Path):
        self.chunk_dir = Path(chunk_dir)

    def exists(self) -> bool:
        return any(self.chunk_dir.glob("chunk-*.jsonl"))
