"""DPO under DeepSpeed ZeRO on 2 CPU ranks (gloo) with the tiny model and synthetic pairs."""

import contextlib
import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import (
    ROOT,
    assert_close_weights,
    export_weights,
    kill_rank_when,
    launch,
    launch_env,
    log_history,
    planner_pairs,
    single_rank,
    wait_for_offline_runs,
    work_dir,
)

pytestmark = pytest.mark.distributed

STEPS = 8
LOSS_TOL = 1e-5  # absolute, on losses of about 0.4-0.7
BF16_LOSS_TOL = 0.02  # absolute; measured 4.4e-3 (test_bf16_losses_track_fp32)
REWARD_TOL_AT_START = 1e-4  # absolute, on beta-scaled rewards (beta 0.1) at step 0


@pytest.fixture(scope="module")
def setup(small_setup, tmp_path_factory):
    """64 synthetic planner pairs: chosen = the gold strategy, rejected = its name reversed."""
    root = tmp_path_factory.mktemp("dpo")
    planner_pairs(small_setup / "data", root / "pairs", 64)
    (root / "tiny").symlink_to(small_setup / "tiny")
    (root / "data").symlink_to(small_setup / "data")
    return root


def dpo_args(setup, out, zero=3, grad_acc=1, extra=()):
    ds = (
        f"dpo.deepspeed={ROOT}/esc_dist/ds_configs/zero{zero}.json"
        if zero
        else "dpo.deepspeed=null"
    )
    return [
        "dpo",
        "--role",
        "planner",
        "--pairs",
        str(setup / "pairs"),
        "--model",
        str(setup / "tiny"),
        "--out",
        str(out),
        f"run.output_dir={setup}",
        ds,
        f"dpo.max_steps={STEPS}",
        "dpo.save_steps=2",
        "dpo.keep_checkpoints=true",
        "dpo.logging_steps=1",
        "dpo.per_device_train_batch_size=4",
        f"dpo.gradient_accumulation_steps={grad_acc}",
        "dpo.learning_rate=2e-3",
        "dpo.warmup_ratio=0",
        "dpo.precision=fp32",
        "run.dist_timeout_s=120",
        *extra,
    ]


def losses(out):
    return [h["loss"] for h in log_history(out, STEPS)]


@pytest.fixture(scope="module")
def reference(setup):
    """One process, no DeepSpeed, global batch 8 (4 x 2 accumulation)."""
    out = setup / "ref" / "dpo-planner"
    launch(
        dpo_args(setup, out, zero=0, grad_acc=2), nproc=1, launcher="python", log=setup / "ref.log"
    )
    return out


@pytest.fixture(scope="module")
def zero3_run(setup):
    out = setup / "z3" / "dpo-planner"
    launch(dpo_args(setup, out, zero=3), log=setup / "z3.log")
    return out


def test_reward_accuracy_rises_and_margin_grows(reference):
    hist = log_history(reference, STEPS)
    acc = [h["rewards/accuracies"] for h in hist]
    margins = [h["rewards/margins"] for h in hist]
    # At the first step the policy is the reference: its rewards are 0 up to the last bits of
    # the log-probs (reference precomputed in other batches), so their signs, and the accuracy
    # counted from them, are noise; margins from the second step on are ~0.1 or more.
    first = hist[0]
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(first[k]) <= REWARD_TOL_AT_START, (k, first[k])
    assert min(acc[-3:]) > 0.9, acc
    assert margins[-1] > 3 * margins[1] > 0, margins
    assert all(
        k in hist[-1]
        for k in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")
    )


@pytest.mark.parametrize("zero", [2, 3])
def test_zero_losses_equal_one_process(setup, reference, zero3_run, zero):
    if zero == 3:
        out = zero3_run
    else:
        out = setup / "z2" / "dpo-planner"
        launch(dpo_args(setup, out, zero=2), log=setup / "z2.log")
    ref, got = losses(reference), losses(out)
    assert len(ref) == len(got) == STEPS
    assert max(abs(a - b) for a, b in zip(ref, got)) <= LOSS_TOL, (ref, got)
    assert_close_weights(export_weights(reference), export_weights(out), 1e-4)


def test_bf16_losses_track_fp32(setup, reference):
    """bf16 under ZeRO-3 (what ``precision: auto`` picks on a CPU with native bf16) follows the
    fp32 loss curve within BF16_LOSS_TOL (absolute, on losses of about 0.4-0.7)."""
    out = setup / "bf16" / "dpo-planner"
    launch(dpo_args(setup, out, zero=3, extra=["dpo.precision=bf16"]), log=setup / "bf16.log")
    ref, got = losses(reference), losses(out)
    diff = [abs(a - b) for a, b in zip(ref, got)]
    print(f"bf16: losses {got} vs fp32 {ref}, max difference {max(diff):.2e}")
    assert len(got) == STEPS and got[-1] < got[0]
    assert max(diff) <= BF16_LOSS_TOL, (ref, got)
    assert max(diff) > 0  # it really ran in bf16


def test_live_reference_equals_precomputed(setup, zero3_run):
    """A live reference model (ZeRO-3 partitioned, parameters offloaded to CPU) gives the same
    losses as the precomputed reference log-probs, at every step, not only the first."""
    out = setup / "live" / "dpo-planner"
    launch(
        dpo_args(setup, out, zero=3, extra=["dpo.reference=live", "dpo.reference_offload=true"]),
        log=setup / "live.log",
    )
    pre, live = losses(zero3_run), losses(out)
    assert pre[0] == pytest.approx(0.6931, abs=1e-3)
    assert max(abs(a - b) for a, b in zip(pre, live)) <= LOSS_TOL, (pre, live)


def test_sigkill_then_resume_matches_uninterrupted(setup, zero3_run):
    out = setup / "killed" / "dpo-planner"
    ckpts = work_dir(out) / "checkpoints"
    args = dpo_args(setup, out, zero=3)
    kill_rank_when(args, ckpts / "checkpoint-2" / "COMPLETED", setup / "killed-1.log")
    assert not (out / "COMPLETED").exists()
    cached = {p: p.stat().st_mtime_ns for p in (work_dir(out) / "tokenized").rglob("cache-*.arrow")}
    assert cached, "reference log-probs were not cached on disk"
    launch(args, log=setup / "killed-2.log")
    m = json.loads((out / "manifest.json").read_text())
    assert m["resumed_from"] and m["global_step"] == STEPS
    assert_close_weights(export_weights(zero3_run), export_weights(out), 1e-6)
    # the resumed run read the cached reference log-probs back instead of recomputing them
    assert {p: p.stat().st_mtime_ns for p in cached} == cached


def test_export_loads_without_deepspeed(zero3_run):
    m = json.loads((zero3_run / "manifest.json").read_text())
    assert m["stage"] == "dpo" and m["final_reward_accuracy"] is not None
    code = (
        "import sys; sys.modules['deepspeed'] = None\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"d = {str(zero3_run)!r}\n"
        "tok = AutoTokenizer.from_pretrained(d); m = AutoModelForCausalLM.from_pretrained(d)\n"
        "enc = tok.apply_chat_template([{'role': 'user', 'content': 'hi'}], "
        "add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
        "print(m.generate(**enc, max_new_tokens=4, do_sample=False).shape)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=launch_env(), timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]


def in_process_trainer(
    setup, tmp_path, monkeypatch, reference, cpu_head=True, shared=False, padding_free=False, *extra
):
    """A DPO trainer built in this process (one rank, no DeepSpeed, batch 4 pairs), not trained;
    ``cpu_head=False`` keeps TRL's fused LM head (what the GPU runs); ``shared``: shared-prompt
    batches (dpo.shared_prompt); ``padding_free``: a batch in one row (dpo.padding_free)."""
    from esc_dist.config import load_recipe
    from esc_dist.train import dpo
    from esc_dist.train.common import stage_paths

    single_rank(monkeypatch)
    recipe = load_recipe(
        None,
        [
            f"run.output_dir={tmp_path}",
            "dpo.deepspeed=null",
            "dpo.per_device_train_batch_size=4",
            "wandb.mode=disabled",
            f"dpo.reference={reference}",
            "dpo.sft_weight=0.5",
            f"dpo.shared_prompt={str(shared).lower()}",
            f"dpo.padding_free={str(padding_free).lower()}",
            *extra,
        ],
    )
    with monkeypatch.context() as m:
        if not cpu_head:
            m.setattr(dpo, "completion_lm_head", lambda everywhere: contextlib.nullcontext())
        trainer, _, _ = dpo.build_dpo_trainer(
            recipe,
            "planner",
            str(setup / "pairs"),
            str(setup / "tiny"),
            stage_paths(recipe, "dpo", "planner"),
            None,
            False,
        )
    return trainer


def one_step(trainer) -> dict:
    """One loss and backward on the first 4 pairs, the policy moved off the reference first
    (log-ratios not 0): loss, gradients, logged metrics, the LM head's projected rows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    models = [m for m in (trainer.model, trainer.ref_model) if m is not None]
    rows = []  # rows the LM head module projected, per call
    hooks = [
        m.get_output_embeddings().register_forward_hook(
            lambda mod, args, out, rows=rows: rows.append(args[0].shape[:-1].numel())
        )
        for m in models
    ]
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    for h in hooks:
        h.remove()
    return {
        "loss": loss.item(),
        "rows": rows,
        "batch": batch,
        "grads": {n: p.grad.clone() for n, p in trainer.model.named_parameters()},
        "metrics": {k: v[-1] for mode in trainer._metrics.values() for k, v in mode.items()},
    }


@pytest.mark.parametrize("reference", ["precomputed", "live"])
def test_cpu_head_and_packed_batches_equal_trl(setup, tmp_path, monkeypatch, reference):
    """On CPU the LM head runs at completion positions only (esc_dist/train/heads.py), and the
    batches may be packed (esc_dist/train/packing.py): each pair one [prompt | chosen |
    rejected] sequence (dpo.shared_prompt), all sequences in one row without padding
    (dpo.padding_free), or both. In each, the DPO loss (+ SFT term), every parameter's gradient,
    the reference log-probs and the logged metrics equal those of TRL's fused head over two
    padded sequences per pair."""
    layouts = {  # (cpu head, shared, padding-free)
        "trl": (False, False, False),
        "ours": (True, False, False),
        "shared": (True, True, False),
        "free": (True, False, True),
        "shared-free": (True, True, True),
    }
    if reference == "live":  # the reference's layout is the policy's: one packed layout does
        layouts = {k: layouts[k] for k in ("trl", "ours", "shared", "shared-free")}
    runs = {
        impl: one_step(
            in_process_trainer(
                setup, tmp_path / impl, monkeypatch, reference, head, shared, padding_free
            )
        )
        for impl, (head, shared, padding_free) in layouts.items()
    }
    trl = runs["trl"]
    assert "packed_input_ids" not in runs["ours"]["batch"]
    real = trl["batch"]["attention_mask"].sum()
    shared = runs["shared"]["batch"]
    # one packed row per pair, with fewer real tokens than its two sequences
    assert shared["packed_input_ids"].shape[0] == 4
    assert 0 < (shared["packed_sequences"] >= 0).sum() < real
    # padding-free: one row of exactly the real tokens, or of the shared ones
    if "free" in runs:
        assert runs["free"]["batch"]["packed_input_ids"].shape == (1, real)
    both = runs["shared-free"]["batch"]["packed_sequences"]
    assert both.shape == (1, (shared["packed_sequences"] >= 0).sum()) and (both >= 0).all()
    for impl in (k for k in runs if k != "trl"):
        ours = runs[impl]
        ids, completion = ours["batch"]["input_ids"], ours["batch"]["completion_mask"]
        assert torch.equal(ids, trl["batch"]["input_ids"])
        assert (completion.sum(1) != completion.sum(1)[0]).any()  # completions' lengths vary
        assert (ours["batch"]["attention_mask"] == 0).any()  # and padding
        labelled = int(completion[:, 1:].sum())
        assert labelled < ids.shape[0] * (ids.shape[1] - 1) / 3
        # our head saw the labelled positions only, once for the policy and once for a live
        # reference
        assert ours["rows"] == [labelled] * (2 if reference == "live" else 1), ours["rows"]
        if reference == "precomputed":
            for k in ("ref_chosen_logps", "ref_rejected_logps"):
                torch.testing.assert_close(ours["batch"][k], trl["batch"][k], rtol=1e-5, atol=1e-5)
        assert ours["loss"] == pytest.approx(trl["loss"], rel=1e-5, abs=1e-6), impl
        assert ours["grads"].keys() == trl["grads"].keys()
        for name, g in trl["grads"].items():
            torch.testing.assert_close(
                ours["grads"][name], g, rtol=1e-5, atol=1e-6, msg=f"{impl} {name}"
            )
        assert ours["metrics"].keys() == trl["metrics"].keys()
        for k, v in trl["metrics"].items():
            assert ours["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (impl, k)
    assert trl["rows"] == []  # TRL's fused head reads the weight without calling the module


def test_planner_guard_logs_validation_and_exports_the_best_step(setup):
    """dpo.validation_every: the planner's validation B, Q and strategy shares at step 0 (the
    SFT model) and every 2 steps, in the manifest and the W&B offline run; dpo.export_best: the
    export holds the weights of the step the rule picks (lowest B among steps within the Q
    tolerance), recomputed here from the logged evaluations."""
    from esc_dist.io import read_json
    from esc_dist.strategies import STRATEGIES

    out = setup / "guard" / "dpo-planner"
    launch(
        dpo_args(
            setup,
            out,
            zero=2,
            extra=[
                "--data",
                str(setup / "data"),
                "dpo.validation_every=2",
                "dpo.validation_turns=10",
                "dpo.export_best=true",
                "dpo.best_q_tolerance=100",
                "dpo.save_total_limit=10",
                "dpo.learning_rate=2e-2",
            ],
        ),
        log=setup / "guard.log",
    )
    guard = read_json(out / "manifest.json")["guard"]
    assert [h["step"] for h in guard["history"]] == [0, 2, 4, 6, 8]
    assert guard["reference"] == guard["history"][0] and guard["turns"] == 10
    for h in guard["history"]:
        assert set(h["shares"]) == set(STRATEGIES)
        assert abs(sum(h["shares"].values()) + h["unparseable"] - 1) < 1e-9
    ok = [h for h in guard["history"] if h["Q"] >= guard["reference"]["Q"] - 1.0]
    best = min(ok, key=lambda h: (h["B"], h["step"]))
    assert guard["best"] == {"step": best["step"], "B": best["B"], "Q": best["Q"]}
    exported = export_weights(out)
    at = {
        0: export_weights(setup / "tiny"),
        **{
            k: export_weights(work_dir(out) / "checkpoints" / f"checkpoint-{k}")
            for k in (2, 4, 6, 8)
        },
    }
    assert_close_weights(exported, at[best["step"]], 0.0)
    # DPO moved the weights: the export is the chosen step's, not any step's
    changed = [
        k
        for k in (2, 4, 6, 8)
        if not torch.equal(at[k]["model.norm.weight"], at[0]["model.norm.weight"])
    ]
    assert changed == [2, 4, 6, 8]
    runs = wait_for_offline_runs(work_dir(out) / "wandb")
    rows = [h for h in runs[0]["history"] if "guard/B" in h]
    assert [r["train/global_step"] for r in rows] == [0, 2, 4, 6, 8]
    assert [r["guard/B"] for r in rows] == [h["B"] for h in guard["history"]]
    assert all(r["guard/sft_B"] == guard["reference"]["B"] for r in rows)
    assert all(f"guard/share/{s}" in rows[0] for s in STRATEGIES)


def test_a_roles_own_settings_reach_its_trainer(setup, tmp_path, monkeypatch):
    """dpo.roles.planner: the planner's DPO trains with its own learning rate and beta."""
    trainer = in_process_trainer(
        setup, tmp_path, monkeypatch, "precomputed", True, True, False,
        "dpo.roles.planner.learning_rate=2e-6", "dpo.roles.generator.beta=0.9",
    )  # fmt: skip
    assert trainer.args.learning_rate == 2e-6 and trainer.args.beta == 0.1
