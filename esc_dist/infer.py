"""Teacher-forced inference: one prediction per gold supporter turn of a split.

Every gold supporter turn of the split is predicted with the gold history as context, through
the sharded, resumable engine of :mod:`esc_dist.generation` (same result on any number of
ranks; a killed run resumes from its chunk files; a completed one is skipped).

* ``decoupled`` -- phase 1: the planner predicts a strategy for every turn. Phase 2: the
  generator writes the reply conditioned on the **predicted** strategy
  (``generator_prompt(history, predicted, max_history)``, ``max_history`` being the data's
  ``max_history_messages``). A planner output that names no strategy is recorded as
  ``pred_strategy: null`` (its text stays in ``pred_strategy_raw``) and the generator is then
  conditioned on "Others".
* ``vanilla`` -- one phase: the joint model writes "[Strategy] reply", split with
  :func:`esc_dist.strategies.parse_tagged`; ``pred_strategy_raw`` is the whole output and
  ``pred_strategy`` null when it carries no strategy tag.
* ``planner`` -- one phase: the planner alone (``pred_reply`` is empty): its strategy metrics
  cost a few new tokens a turn, so a whole test split is cheap to predict.
* ``generator-gold`` -- one phase: the generator writes the reply for the **gold** strategy
  (``pred_strategy`` = the gold strategy): how well it realises a strategy it is given.

The planner's and the vanilla model's prompts show the supporter's past strategy tags when the
prepared data says so (``data.history_strategy_tags``, recorded in its manifest), and the planner
reads the dialogue in the form the data was prepared with (``data.planner_prompt``: chat turns,
or the paper's one-message transcript).

**Decoding** (:func:`decoding`): under ``eval.protocol: paper`` the paper's -- sampled at
temperature 0.7, top-p 0.95, no top-k -- over ``infer.decode_seeds`` decodes; under ``ours``
``infer.do_sample`` / ``temperature`` / ``top_p`` / ``top_k`` (greedy by default), over
``infer.decode_seeds`` decodes when sampling and one when greedy. Decode k draws with its own
per-turn seeds (the engine's sample index k), so each decode is reproducible on any number of
ranks. Output directory: ``chunks/{planner,generator,vanilla}/`` (decode 0) and
``chunks/decode-K/...``, ``predictions.jsonl`` (decode 0, sorted by id, the schema
:func:`esc_dist.eval.predictions.load_predictions` reads) and ``predictions.decode-K.jsonl`` for
K >= 1, ``manifest.json`` (``config.decoding``, ``decodes``: the files) and ``COMPLETED``.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import dist
from .config import InferConfig, Recipe
from .constants import MODES
from .data.tasks import prompt_settings_of
from .errors import ConfigError
from .generation import Sampling, WorkItem, merge, stage
from .generation.stage import GenerationStage, Phase, generation_summary, run_stage, settings_errors
from .io import output_record, write_jsonl
from .layout import RunLayout
from .log import get_logger
from .strategies import parse_strategy, parse_tagged

log = get_logger(__name__)

# what the generator is conditioned on when the planner's is unparseable
FALLBACK_STRATEGY = "Others"
PREDICTION_KEYS = (
    "id",
    "dialogue_id",
    "turn_index",
    "gold_strategy",
    "gold_reply",
    "pred_strategy",
    "pred_strategy_raw",
    "pred_reply",
    "mode",
)


# the DecoupledESC paper's decoding
PAPER_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.95, "top_k": 0}


def phases(mode: str) -> tuple[str, ...]:
    return {
        "decoupled": ("planner", "generator"),
        "planner": ("planner",),
        "vanilla": ("vanilla",),
        "generator-gold": ("generator",),
    }[mode]


def decoding(recipe: Recipe) -> dict:
    """How the predictions are decoded: the protocol's sampling settings and how many decodes."""
    cfg = recipe.infer
    if recipe.eval.protocol == "paper":
        sampling = dict(PAPER_SAMPLING)
    else:
        sampling = {
            "do_sample": cfg.do_sample,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "top_k": cfg.top_k,
        }
    return {
        "protocol": recipe.eval.protocol,
        **sampling,
        "decodes": cfg.decode_seeds if sampling["do_sample"] else 1,
    }


def infer_sampling(cfg: InferConfig, phase: str, how: Mapping[str, Any] | None = None) -> Sampling:
    """One phase's sampling settings; ``how`` is a :func:`decoding` (default: infer's own)."""
    max_new = cfg.max_new_tokens
    if phase == "planner" and cfg.planner_max_new_tokens is not None:
        max_new = cfg.planner_max_new_tokens
    how = how or {
        "do_sample": cfg.do_sample,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "top_k": cfg.top_k,
    }
    return Sampling(
        max_new_tokens=max_new,
        do_sample=how["do_sample"],
        temperature=how["temperature"],
        top_p=how["top_p"],
        top_k=how["top_k"],
        min_new_tokens=min(cfg.min_new_tokens, max_new),
    )


def predictions_name(decode: int) -> str:
    return "predictions.jsonl" if decode == 0 else f"predictions.decode-{decode}.jsonl"


def load_turns(data_dir: str | Path, split: str, max_dialogues: int | None = None) -> list[dict]:
    """The split's turns by id; with ``max_dialogues``, those of the first N dialogue ids."""
    from .data.tasks import load_task

    turns = load_task(data_dir, "turns")
    if split not in turns:
        raise ConfigError(f"{data_dir}: no split {split!r} (have {', '.join(turns)})")
    rows = sorted(turns[split], key=lambda t: t["id"])
    if max_dialogues is not None:
        keep = set(sorted({t["dialogue_id"] for t in rows})[:max_dialogues])
        rows = [t for t in rows if t["dialogue_id"] in keep]
    return rows


def _gold(turn: Mapping[str, Any]) -> dict:
    return {
        "dialogue_id": turn["dialogue_id"],
        "turn_index": turn["turn_index"],
        "gold_strategy": turn["strategy"],
        "gold_reply": turn["reply"],
    }


def planner_items(
    turns: Iterable[Mapping],
    sampling: Sampling,
    max_history: int | None,
    tagged: bool = True,
    decode: int = 0,
    form: str = "chat",
) -> list[WorkItem]:
    from .data.tasks import history_messages, planner_prompt

    return [
        WorkItem(
            t["id"],
            planner_prompt(history_messages(t["history"]), max_history, tagged, form),
            sampling,
            sample=decode,
            meta=_gold(t),
        )
        for t in turns
    ]


def vanilla_items(
    turns: Iterable[Mapping],
    sampling: Sampling,
    max_history: int | None,
    tagged: bool = True,
    decode: int = 0,
) -> list[WorkItem]:
    from .data.tasks import history_messages, vanilla_prompt

    return [
        WorkItem(
            t["id"],
            vanilla_prompt(history_messages(t["history"]), max_history, tagged),
            sampling,
            sample=decode,
            meta=_gold(t),
        )
        for t in turns
    ]


def gold_generator_items(
    turns: Iterable[Mapping],
    sampling: Sampling,
    max_history: int | None,
    tagged: bool = True,
    decode: int = 0,
) -> list[WorkItem]:
    """The generator's items under each turn's gold strategy (``generator-gold``)."""
    from .data.tasks import generator_prompt, history_messages

    return [
        WorkItem(
            t["id"],
            generator_prompt(history_messages(t["history"]), t["strategy"], max_history),
            sampling,
            sample=decode,
            meta={
                **_gold(t),
                "pred_strategy": t["strategy"],
                "pred_strategy_raw": t["strategy"],
                "conditioned_on": t["strategy"],
            },
        )
        for t in turns
    ]


def planned(raw: str) -> tuple[str | None, str]:
    """A planner output's strategy (None when it names none) and the strategy the generator is
    conditioned on (the fallback when none)."""
    pred = parse_strategy(raw) if raw else None
    return pred, pred or FALLBACK_STRATEGY


def generator_items(
    turns: Iterable[Mapping],
    planner_records: Iterable[Mapping],
    sampling: Sampling,
    max_history: int | None,
    decode: int = 0,
) -> list[WorkItem]:
    """Phase-2 items: each turn's generator prompt under the planner's predicted strategy."""
    from .data.tasks import generator_prompt, history_messages

    by_id = {t["id"]: t for t in turns}
    items = []
    for rec in planner_records:
        turn = by_id[rec["id"]]
        raw = rec["text"].strip()
        pred, cond = planned(raw)
        items.append(
            WorkItem(
                turn["id"],
                generator_prompt(history_messages(turn["history"]), cond, max_history),
                sampling,
                sample=decode,
                meta={
                    **_gold(turn),
                    "pred_strategy": pred,
                    "pred_strategy_raw": raw,
                    "conditioned_on": cond,
                },
            )
        )
    return items


def prediction(rec: Mapping[str, Any], mode: str) -> dict:
    """One line of predictions.jsonl from a last-phase engine record."""
    m, text = rec["meta"], rec["text"].strip()
    if mode == "planner":
        pred, raw, reply = planned(text)[0], text, ""
    elif mode in ("decoupled", "generator-gold"):
        pred, raw, reply = m["pred_strategy"], m["pred_strategy_raw"], text
    else:
        pred, reply = parse_tagged(text)
        raw = text
    return {
        "id": rec["id"],
        "dialogue_id": m["dialogue_id"],
        "turn_index": m["turn_index"],
        "gold_strategy": m["gold_strategy"],
        "gold_reply": m["gold_reply"],
        "pred_strategy": pred,
        "pred_strategy_raw": raw,
        "pred_reply": reply,
        "mode": mode,
    }


def summary(preds: list[dict]) -> dict:
    n = len(preds)
    unparseable = sum(1 for p in preds if p["pred_strategy"] is None)
    correct = sum(1 for p in preds if p["pred_strategy"] == p["gold_strategy"])
    return {
        "turns": n,
        "unparseable": unparseable,
        "strategy_accuracy": round(correct / n, 4) if n else 0.0,
        "mean_reply_words": round(sum(len(p["pred_reply"].split()) for p in preds) / n, 3)
        if n
        else 0.0,
    }


def chunk_dir(phase: str, decode: int = 0) -> str:
    return f"chunks/{phase}" if decode == 0 else f"chunks/decode-{decode}/{phase}"


def decodes_of(job: dict) -> int:
    """How many decodes a job made (jobs from before decodes existed made one)."""
    return int((job["config"].get("decoding") or {}).get("decodes", 1))


def write_predictions(out: Path, job: dict) -> tuple[dict, dict]:
    """Merge and verify every phase's chunks of ``out``; write one predictions file a decode."""
    mode = job["mode"]
    outputs, counts = {}, {}
    for decode in range(decodes_of(job)):
        records = None
        for phase in phases(mode):
            records = merge(out / chunk_dir(phase, decode))
        preds = [prediction(r, mode) for r in records]
        name = predictions_name(decode)
        write_jsonl(out / name, preds)
        key = "predictions" if decode == 0 else f"predictions_decode_{decode}"
        outputs[key] = output_record(out, name)
        if decode == 0:
            counts = summary(preds)
    counts["decodes"] = [predictions_name(d) for d in range(decodes_of(job))]
    return outputs, counts


def finalize(
    out: str | Path, job: dict, generation: dict | None = None, t0: float | None = None
) -> dict:
    """Merge and verify every phase's chunks, write predictions, manifest and COMPLETED.

    Used at the end of :func:`infer` (rank 0) and alone by ``esc-dist merge``.
    """
    return stage.finalize(out, job, write_predictions, generation, t0)


def _wandb_summary(out: Path, manifest: dict, generation: dict) -> dict:
    flat = {f"infer/{k}": v for k, v in manifest["counts"].items()}
    for name, g in generation.items():
        flat.update(
            generation_summary(
                f"infer/{name}", g, ("items_per_s", "tokens_per_s", "chunks_computed")
            )
        )
    return flat


def _report(out: Path, manifest: dict) -> None:
    c = manifest["counts"]
    log.info(
        "infer %s on %s: %d turns, strategy accuracy %.3f, %d unparseable -> %s",
        manifest["mode"],
        manifest["split"],
        c["turns"],
        c["strategy_accuracy"],
        c["unparseable"],
        out / "predictions.jsonl",
    )


def infer(
    recipe: Recipe,
    mode: str,
    data_dir: str | Path | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    *,
    planner: str | Path | None = None,
    generator: str | Path | None = None,
    model: str | Path | None = None,
) -> dict:
    """Predict every gold supporter turn of ``split`` (every rank calls this); returns the
    manifest. Decoupled mode needs ``planner`` and ``generator``, planner mode ``planner``,
    generator-gold mode ``generator``, vanilla mode ``model`` (defaults: the run directory's
    ``models/sft-*`` exports)."""
    t0 = time.time()
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
    cfg = recipe.infer
    split = split or cfg.split
    dist.init(recipe.run.dist_timeout_s)
    run = RunLayout.of(recipe)
    data_dir = Path(data_dir or run.data)
    out = Path(out or run.predictions(f"{mode}-{split}"))
    if mode == "decoupled":
        models = {
            "planner": Path(planner or run.model("sft", "planner")),
            "generator": Path(generator or run.model("sft", "generator")),
        }
    elif mode == "planner":
        models = {"planner": Path(planner or run.model("sft", "planner"))}
    elif mode == "generator-gold":
        models = {"generator": Path(generator or run.model("sft", "generator"))}
    else:
        models = {"vanilla": Path(model or run.model("sft", "vanilla"))}
    turns = load_turns(data_dir, split, cfg.max_dialogues)
    if not turns:
        raise ConfigError(f"{data_dir}: split {split!r} has no supporter turns")
    max_history, tagged, form = prompt_settings_of(data_dir)
    how = decoding(recipe)
    first = phases(mode)[0]
    with_form = functools.partial(planner_items, form=form)
    build = {
        "decoupled": with_form,
        "planner": with_form,
        "vanilla": vanilla_items,
        "generator-gold": gold_generator_items,
    }[mode]
    with settings_errors("infer"):
        first_sampling = infer_sampling(cfg, first, how)
        generator_sampling = infer_sampling(cfg, "generator", how)

    steps = []
    for decode in range(how["decodes"]):
        suffix = "" if decode == 0 else f".decode-{decode}"
        with settings_errors("infer"):
            items = build(turns, first_sampling, max_history, tagged, decode)
        steps.append(
            Phase(
                f"infer-{mode}-{first}",
                models[first],
                chunk_dir(first, decode),
                items,
                key=first + suffix,
            )
        )
        if mode == "decoupled":

            def conditioned(planned: list[dict], decode: int = decode) -> list[WorkItem]:
                return generator_items(turns, planned, generator_sampling, max_history, decode)

            steps.append(
                Phase(
                    f"infer-{mode}-generator",
                    models["generator"],
                    chunk_dir("generator", decode),
                    conditioned,
                    key="generator" + suffix,
                )
            )
    return run_stage(
        recipe,
        GenerationStage(
            name="infer",
            labels={"mode": mode, "split": split},
            job_type=f"infer-{mode}",
            out=out,
            data_dir=data_dir,
            models=models,
            settings=cfg,
            phases=steps,
            write_outputs=write_predictions,
            extra_config={
                "max_history_messages": max_history,
                "history_strategy_tags": tagged,
                "planner_prompt": form,
                "decoding": how,
            },
            wandb_config={"turns": len(turns)},
            wandb_summary=_wandb_summary,
            report=_report,
        ),
        t0,
    )
