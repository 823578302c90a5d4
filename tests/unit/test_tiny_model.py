import hashlib

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from esc_dist.config import DataConfig, TinyModelConfig
from esc_dist.data.tasks import prepare
from esc_dist.models.tiny import EOS, PAD, build_tiny_model


def _digests(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_same_seed_identical_files(tmp_path, esconv_dir, tiny_model_dir):
    build_tiny_model(TinyModelConfig(), esconv_dir / "esconv.json", tmp_path / "again")
    assert _digests(tmp_path / "again") == _digests(tiny_model_dir)
    build_tiny_model(TinyModelConfig(seed=1), esconv_dir / "esconv.json", tmp_path / "other")
    other = _digests(tmp_path / "other")
    assert other["model.safetensors"] != _digests(tiny_model_dir)["model.safetensors"]
    assert other["tokenizer.json"] == _digests(tiny_model_dir)["tokenizer.json"]


def test_reload_and_generate(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 5_000_000
    assert tok.eos_token == EOS and tok.pad_token == PAD
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    text = "I have been feeling anxious about my exams."
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level BPE round trip
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": text}]
    enc = tok.apply_chat_template(
        msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]
    # greedy generation is deterministic
    again = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, again)


def test_chat_template_marks_assistant_tokens(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [
        {"role": "user", "content": "I lost my job."},
        {"role": "assistant", "content": "[Question] How are you coping?"},
    ]
    enc = tok.apply_chat_template(msgs, return_dict=True, return_assistant_tokens_mask=True)
    marked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(marked) == "[Question] How are you coping?" + EOS


def test_datasets_usable_as_is_by_trl(tmp_path, esconv_dir, tiny_model_dir):
    """TRL's SFTTrainer reads a prepared dataset unchanged and puts the loss on the completion."""
    from trl import SFTConfig, SFTTrainer

    cfg = DataConfig(
        esconv=str(esconv_dir / "esconv.json"),
        split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
        max_dialogues={"train": 2, "validation": 1, "test": 1},
        max_history_messages=4,
    )
    prepare(cfg, tmp_path / "data")
    from datasets import load_from_disk

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for task in ("vanilla", "planner", "generator"):
        train = load_from_disk(str(tmp_path / "data" / task))["train"]
        args = SFTConfig(
            output_dir=str(tmp_path / "o"),
            max_steps=1,
            report_to=[],
            use_cpu=True,
            bf16=False,
            max_length=1024,
            save_strategy="no",
            per_device_train_batch_size=2,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
        assert len(trainer.train_dataset) == len(train)  # nothing dropped or truncated away
        for row in trainer.train_dataset:
            learned = [i for i, label in zip(row["input_ids"], row["labels"]) if label != -100]
            assert tok.decode(learned) == row["completion"][0]["content"] + EOS + "\n"
    assert trainer.train().training_loss > 0
