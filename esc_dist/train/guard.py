"""The planner's validation guard during DPO: the predicted-strategy distribution, B and Q on a
fixed validation subset every ``dpo.validation_every`` steps, and (``dpo.export_best``) the
weights of the best step.

DPO on strategy pairs moves probability between strategies; pushed too far, the planner answers
one or two strategies for everything (preference bias B up, Q down) while the DPO loss keeps
falling. The guard makes that visible while training: before the first step (the SFT model, the
reference line) and every N steps, the policy decodes greedily a few tokens for each of
``dpo.validation_turns`` validation turns (spread evenly over the split, the same turns every
time; prompts built as inference builds them), and the stage logs, to the console and W&B,
``guard/B`` (converged fit), ``guard/Q``, ``guard/accuracy``, ``guard/unparseable`` and
``guard/share/STRATEGY``, beside ``guard/sft_B`` and ``guard/sft_Q``.

With ``dpo.export_best`` it keeps the weights of the step with the lowest validation B among the
evaluated steps whose Q is at most ``dpo.best_q_tolerance`` points below the SFT model's (step 0,
the SFT model itself, is a candidate: a DPO that never beats it exports the SFT weights and says
so); one directory, replaced when a better step comes, never a checkpoint per evaluation.
``guard.json`` in the work directory holds the reference, every evaluation and the best step,
so a resumed run goes on with them.

The decoding runs on every rank over an equal share of the turns (a forward under ZeRO-3 is a
collective), with the metrics computed by the ``score`` function the stage is given
(:func:`esc_dist.eval.strategy.strategy_metrics`, passed in by the command layer).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import dist
from ..io import atomic_write_json, read_json
from ..log import get_logger
from ..strategies import STRATEGIES, parse_strategy

log = get_logger(__name__)

Score = Callable[[Sequence[str], Sequence[str | None]], dict]
GUARD_JSON, BEST_DIR = "guard.json", "guard-best"
GUARD_NEW_TOKENS = 8  # a strategy name is at most ~6 tokens in the tokenizers we use


def spread(n_items: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``range(n_items)`` (all of them when ``n >= n_items``)."""
    if n >= n_items:
        return list(range(n_items))
    return [(i * n_items) // n for i in range(n)]


def validation_prompts(data_dir: str | Path, n: int) -> tuple[list[list[dict]], list[str]]:
    """The planner prompts and gold strategies of ``n`` validation turns of the prepared data,
    spread evenly over the split's turns in id order, built as inference builds them."""
    from ..data.tasks import history_messages, load_task, planner_prompt, prompt_settings_of

    turns = load_task(data_dir, "turns")
    if "validation" not in turns or len(turns["validation"]) == 0:
        from ..errors import ConfigError

        raise ConfigError(
            f"{data_dir}: no validation turns for dpo.validation_every (prepare "
            "the data with a validation split, or set dpo.validation_every=0)"
        )
    rows = sorted(turns["validation"], key=lambda t: t["id"])
    rows = [rows[i] for i in spread(len(rows), n)]
    max_history, tagged, form = prompt_settings_of(data_dir)
    prompts = [
        planner_prompt(history_messages(t["history"]), max_history, tagged, form) for t in rows
    ]
    return prompts, [t["strategy"] for t in rows]


def greedy_strategies(
    model,
    tokenizer,
    prompts: Sequence[list[dict]],
    max_new_tokens: int,
    batch_size: int,
    context: int | None,
) -> list[str]:
    """This rank's greedy decodes of ``prompts`` (its equal share: every rank runs as many
    batches and steps, as ZeRO-3 needs), gathered over the ranks in the prompts' order."""
    import torch

    from ..generation import Sampling, WorkItem, fit_prompts

    world, me = dist.world_size(), dist.rank()
    per_rank = -(-len(prompts) // world)
    mine = list(range(me * per_rank, min(len(prompts), (me + 1) * per_rank)))
    sampling = Sampling(max_new_tokens=max_new_tokens, do_sample=False)
    items = [WorkItem(str(i), prompts[i], sampling) for i in mine]
    ids, _ = fit_prompts(items, tokenizer, context)
    ids += [ids[-1] if ids else tokenizer("x")["input_ids"]] * (per_rank - len(ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    texts: list[str] = []
    try:
        with torch.no_grad():
            for a in range(0, per_rank, batch_size):
                batch = ids[a : a + batch_size]
                width = max(len(x) for x in batch)
                input_ids = torch.tensor(
                    [[pad] * (width - len(x)) + x for x in batch], device=device
                )
                mask = torch.tensor(
                    [[0] * (width - len(x)) + [1] * len(x) for x in batch], device=device
                )
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask,
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=1,
                    do_sample=False,
                    pad_token_id=pad,
                    use_cache=True,
                    synced_gpus=world > 1,
                )
                texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        model.train(was_training)
    gathered = dist.all_gather_object(texts[: len(mine)])
    return [t for part in gathered for t in part]


def summary(metrics: dict, pred: Sequence[str | None]) -> dict:
    """The numbers the guard logs and compares: B, Q and accuracy from ``score``'s result (an
    unparseable answer counted as Others), and the share of the turns given to each strategy
    and to no strategy at all."""
    m, n = metrics["as_others"], len(pred)
    shares = {s: sum(1 for p in pred if p == s) / n for s in STRATEGIES}
    return {
        "B": m["B"],
        "Q": m["Q"],
        "accuracy": m["accuracy"],
        "unparseable": sum(1 for p in pred if p is None) / n,
        "shares": shares,
    }


class PlannerGuard:
    """The validation guard of one planner DPO run; :meth:`callback` gives its trainer callback.

    ``work``: the stage's work directory (``guard.json``, ``guard-best/``); ``every``: steps
    between evaluations; ``export_best``: keep the best step's weights; ``tolerance``: points of
    Q below the SFT model's that a step may lose and still be the best.
    """

    def __init__(
        self,
        prompts: Sequence[list[dict]],
        gold: Sequence[str],
        tokenizer,
        score: Score,
        work: Path,
        every: int,
        export_best: bool,
        tolerance: float,
        max_new_tokens: int,
        batch_size: int,
        context: int | None,
    ):
        self.prompts, self.gold, self.tok, self.score = list(prompts), list(gold), tokenizer, score
        self.work, self.every, self.export_best = Path(work), every, export_best
        self.tolerance, self.max_new, self.batch, self.context = (
            tolerance,
            max_new_tokens,
            batch_size,
            context,
        )
        self.trainer, self.key = None, ""  # set by the stage once the trainer is built
        self.state: dict[str, Any] = self.fresh()

    def fresh(self) -> dict:
        return {
            "key": self.key,
            "turns": len(self.prompts),
            "reference": None,
            "history": [],
            "best": None,
        }

    def begin(self, model, step: int) -> None:
        """At the start of training: a fresh run evaluates the SFT model (step 0); a resumed one
        goes on with the state its checkpoint's run saved (same training key)."""
        saved = self.work / GUARD_JSON
        state = read_json(saved) if step > 0 and saved.is_file() else {}
        if state.get("key") == self.key:
            self.state = state
            return
        self.state = self.fresh()
        if step > 0:
            log.warning(
                "guard: no state of this run to resume; the reference is the resumed "
                "step %d, not the SFT model",
                step,
            )
        self.record(model, step)

    @property
    def best_dir(self) -> Path:
        return self.work / BEST_DIR

    def evaluate(self, model, step: int) -> dict:
        texts = greedy_strategies(
            model, self.tok, self.prompts, self.max_new, self.batch, self.context
        )
        pred = [parse_strategy(t.strip()) if t.strip() else None for t in texts]
        return {"step": step, **summary(self.score(self.gold, pred), pred)}

    def qualifies(self, entry: dict) -> bool:
        ref = self.state["reference"]
        return entry["Q"] >= ref["Q"] - self.tolerance / 100

    def record(self, model, step: int) -> None:
        """Evaluate at ``step``, log, keep the best weights; every rank calls this."""
        entry = self.evaluate(model, step)
        if self.state["reference"] is None:
            self.state["reference"] = entry
        hist = [h for h in self.state["history"] if h["step"] != step] + [entry]
        self.state["history"] = sorted(hist, key=lambda h: h["step"])
        best = self.state["best"]
        if self.export_best and self.qualifies(entry) and (best is None or entry["B"] < best["B"]):
            self._save_best(step)
            self.state["best"] = {"step": step, "B": entry["B"], "Q": entry["Q"]}
        if dist.is_main():
            atomic_write_json(self.work / GUARD_JSON, self.state)
        self._log(entry)

    def _save_best(self, step: int) -> None:
        saving = self.work / f"{BEST_DIR}.saving"
        if dist.is_main():
            shutil.rmtree(saving, ignore_errors=True)
        dist.barrier()
        self.trainer.save_model(str(saving))  # collective under ZeRO-3
        dist.barrier()
        if dist.is_main():
            shutil.rmtree(self.best_dir, ignore_errors=True)
            saving.rename(self.best_dir)
        dist.barrier()

    def _log(self, entry: dict) -> None:
        ref = self.state["reference"]
        logs = {
            "guard/B": entry["B"],
            "guard/Q": entry["Q"],
            "guard/accuracy": entry["accuracy"],
            "guard/unparseable": entry["unparseable"],
            "guard/sft_B": ref["B"],
            "guard/sft_Q": ref["Q"],
            **{f"guard/share/{s}": v for s, v in entry["shares"].items()},
        }
        top = sorted(entry["shares"].items(), key=lambda kv: -kv[1])[:3]
        log.info(
            "guard step %d on %d validation turns: B %.3f (SFT %.3f), Q %.1f (SFT %.1f), top %s",
            entry["step"],
            len(self.prompts),
            entry["B"],
            ref["B"],
            100 * entry["Q"],
            100 * ref["Q"],
            ", ".join(f"{s} {100 * v:.0f}%" for s, v in top),
        )
        # straight to the stage's W&B run (rank 0), on the trainer's step axis: the trainer's own
        # log() would fold its pending training metrics into these and clear them
        wandb = sys.modules.get("wandb")
        run = getattr(wandb, "run", None) if dist.is_main() else None
        if run is not None:
            run.log({**logs, "train/global_step": entry["step"]})

    def outcome(self) -> dict:
        """What the manifest records: the reference, every evaluation, the best step."""
        return {
            "turns": len(self.prompts),
            "every": self.every,
            "export_best": self.export_best,
            "q_tolerance_points": self.tolerance,
            **self.state,
        }

    def callback(self):
        from transformers import TrainerCallback

        guard = self

        class GuardCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                guard.begin(model, state.global_step)

            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step % guard.every == 0 or state.global_step == state.max_steps:
                    guard.record(model, state.global_step)

        return GuardCallback()
