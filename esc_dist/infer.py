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

Greedy by default (``infer.do_sample: false``); sampling uses ``infer.temperature``, ``top_p``
and ``top_k`` with per-turn seeds. Output directory: ``chunks/{planner,generator}/`` or
``chunks/vanilla/``, ``predictions.jsonl`` (sorted by id, the schema
:func:`esc_dist.eval.predictions.load_predictions` reads), ``manifest.json`` and ``COMPLETED``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import __version__, dist, tracking
from .config import InferConfig, Recipe
from .constants import MODES
from .errors import ConfigError
from .generation import (EngineConfig, Sampling, WorkItem, claim_output, finalize_on_main,
                         generate, items_fingerprint, merge, model_fingerprint, throughput_summary)
from .io import (mark_completed, read_manifest, sha256_file, sha256_json, write_jsonl,
                 write_manifest)
from .log import get_logger
from .strategies import parse_strategy, parse_tagged

log = get_logger(__name__)

FALLBACK_STRATEGY = "Others"  # what the generator is conditioned on when the planner's is unparseable
PREDICTION_KEYS = ("id", "dialogue_id", "turn_index", "gold_strategy", "gold_reply",
                   "pred_strategy", "pred_strategy_raw", "pred_reply", "mode")


def phases(mode: str) -> tuple[str, ...]:
    return ("planner", "generator") if mode == "decoupled" else ("vanilla",)


def infer_sampling(cfg: InferConfig, phase: str) -> Sampling:
    max_new = cfg.max_new_tokens
    if phase == "planner" and cfg.planner_max_new_tokens is not None:
        max_new = cfg.planner_max_new_tokens
    return Sampling(max_new_tokens=max_new, do_sample=cfg.do_sample,
                    temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                    min_new_tokens=min(cfg.min_new_tokens, max_new))


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


def max_history_of(data_dir: str | Path) -> int | None:
    manifest = read_manifest(data_dir) or {}
    return (manifest.get("config") or {}).get("max_history_messages")


def _gold(turn: Mapping[str, Any]) -> dict:
    return {"dialogue_id": turn["dialogue_id"], "turn_index": turn["turn_index"],
            "gold_strategy": turn["strategy"], "gold_reply": turn["reply"]}


def planner_items(turns: Iterable[Mapping], sampling: Sampling,
                  max_history: int | None) -> list[WorkItem]:
    from .data.tasks import history_messages, planner_prompt

    return [WorkItem(t["id"], planner_prompt(history_messages(t["history"]), max_history),
                     sampling, meta=_gold(t)) for t in turns]


def vanilla_items(turns: Iterable[Mapping], sampling: Sampling,
                  max_history: int | None) -> list[WorkItem]:
    from .data.tasks import history_messages, vanilla_prompt

    return [WorkItem(t["id"], vanilla_prompt(history_messages(t["history"]), max_history),
                     sampling, meta=_gold(t)) for t in turns]


def generator_items(turns: Iterable[Mapping], planner_records: Iterable[Mapping],
                    sampling: Sampling, max_history: int | None) -> list[WorkItem]:
    """Phase-2 items: each turn's generator prompt under the planner's predicted strategy."""
    from .data.tasks import generator_prompt, history_messages

    by_id = {t["id"]: t for t in turns}
    items = []
    for rec in planner_records:
        turn = by_id[rec["id"]]
        raw = rec["text"].strip()
        pred = parse_strategy(raw) if raw else None
        cond = pred or FALLBACK_STRATEGY
        items.append(WorkItem(
            turn["id"], generator_prompt(history_messages(turn["history"]), cond, max_history),
            sampling, meta={**_gold(turn), "pred_strategy": pred, "pred_strategy_raw": raw,
                            "conditioned_on": cond}))
    return items


def prediction(rec: Mapping[str, Any], mode: str) -> dict:
    """One line of predictions.jsonl from a last-phase engine record."""
    m, text = rec["meta"], rec["text"].strip()
    if mode == "decoupled":
        pred, raw, reply = m["pred_strategy"], m["pred_strategy_raw"], text
    else:
        pred, reply = parse_tagged(text)
        raw = text
    return {"id": rec["id"], "dialogue_id": m["dialogue_id"], "turn_index": m["turn_index"],
            "gold_strategy": m["gold_strategy"], "gold_reply": m["gold_reply"],
            "pred_strategy": pred, "pred_strategy_raw": raw, "pred_reply": reply, "mode": mode}


def summary(preds: list[dict]) -> dict:
    n = len(preds)
    unparseable = sum(1 for p in preds if p["pred_strategy"] is None)
    correct = sum(1 for p in preds if p["pred_strategy"] == p["gold_strategy"])
    return {"turns": n, "unparseable": unparseable,
            "strategy_accuracy": round(correct / n, 4) if n else 0.0,
            "mean_reply_words": round(sum(len(p["pred_reply"].split()) for p in preds) / n, 3)
            if n else 0.0}


def finalize(out: str | Path, job: dict, generation: dict | None = None,
             t0: float | None = None) -> dict:
    """Merge and verify every phase's chunks, write predictions, manifest and COMPLETED.

    Used at the end of :func:`infer` (rank 0) and alone by ``esc-dist merge``.
    """
    out = Path(out)
    mode = job["mode"]
    records = None
    for phase in phases(mode):
        records = merge(out / "chunks" / phase)
    preds = [prediction(r, mode) for r in records]
    write_jsonl(out / "predictions.jsonl", preds)
    counts = summary(preds)
    manifest = {
        "stage": "infer", "mode": mode, "split": job["split"],
        "esc_dist_version": __version__,
        "fingerprint": job["fingerprint"],
        "inputs": job["inputs"], "config": job["config"],
        "outputs": {"predictions": {"path": "predictions.jsonl",
                                    "sha256": sha256_file(out / "predictions.jsonl")}},
        "counts": counts,
    }
    if generation is not None:
        manifest["generation"] = generation
        manifest["world_size"] = next(iter(generation.values()))["world_size"]
    else:
        prev = read_manifest(out) or {}
        manifest["generation"] = prev.get("generation")
        manifest["world_size"] = prev.get("world_size")
        manifest["merged_alone"] = True
    if t0 is not None:
        manifest["seconds"] = round(time.time() - t0, 3)
    write_manifest(out, manifest)
    mark_completed(out)
    return manifest


def infer(recipe: Recipe, mode: str, data_dir: str | Path | None = None,
          split: str | None = None, out: str | Path | None = None, *,
          planner: str | Path | None = None, generator: str | Path | None = None,
          model: str | Path | None = None) -> dict:
    """Predict every gold supporter turn of ``split`` (every rank calls this); returns the
    manifest. Decoupled mode needs ``planner`` and ``generator``, vanilla mode ``model``
    (defaults: the run directory's ``models/sft-*`` exports)."""
    t0 = time.time()
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
    cfg = recipe.infer
    split = split or cfg.split
    dist.init(recipe.run.dist_timeout_s)
    run_dir = Path(recipe.run.output_dir)
    data_dir = Path(data_dir or run_dir / "data")
    out = Path(out or run_dir / "predictions" / f"{mode}-{split}")
    if mode == "decoupled":
        models = {"planner": Path(planner or run_dir / "models" / "sft-planner"),
                  "generator": Path(generator or run_dir / "models" / "sft-generator")}
    else:
        models = {"vanilla": Path(model or run_dir / "models" / "sft-vanilla")}
    turns = load_turns(data_dir, split, cfg.max_dialogues)
    if not turns:
        raise ConfigError(f"{data_dir}: split {split!r} has no supporter turns")
    max_history = max_history_of(data_dir)
    first = "planner" if mode == "decoupled" else "vanilla"
    try:
        build = planner_items if mode == "decoupled" else vanilla_items
        first_items = build(turns, infer_sampling(cfg, first), max_history)
        infer_sampling(cfg, "generator")
        EngineConfig(batch_size=cfg.batch_size, chunk_size=cfg.chunk_size)
    except ValueError as e:  # bad sampling or batch settings
        raise ConfigError(f"infer: {e}") from None
    model_fps = {name: model_fingerprint(p) for name, p in models.items()}
    config = {"infer": asdict(cfg), "seed": recipe.run.seed, "max_history_messages": max_history,
              "model": {"trust_remote_code": recipe.model.trust_remote_code,
                        "attn_implementation": recipe.model.attn_implementation}}
    job = {
        "stage": "infer", "mode": mode, "split": split,
        "inputs": {"data": {"path": str(data_dir),
                            "sha256": sha256_json(read_manifest(data_dir) or {})},
                   **{name: {"path": str(p), "fingerprint": model_fps[name]}
                      for name, p in models.items()}},
        "config": config,
        # What the result depends on (paths and timings left out: the items carry the data).
        "fingerprint": sha256_json({"stage": "infer", "mode": mode, "split": split,
                                    "models": model_fps, "config": config,
                                    "items": items_fingerprint(first_items)}),
    }
    done = claim_output(out, job, f"infer {mode}")
    if done is not None:
        return done

    def engine(phase: str) -> EngineConfig:
        return EngineConfig(batch_size=cfg.batch_size, chunk_size=cfg.chunk_size,
                            seed=recipe.run.seed, stream=f"infer-{mode}-{phase}",
                            trust_remote_code=recipe.model.trust_remote_code,
                            attn_implementation=recipe.model.attn_implementation)

    run = tracking.start_run(recipe, f"infer-{mode}", out,
                             config={"stage": "infer", "mode": mode, "split": split,
                                     "turns": len(turns)})
    generation: dict[str, dict] = {}
    try:
        if mode == "decoupled":
            generation["planner"] = generate(first_items, models["planner"],
                                             out / "chunks" / "planner",
                                             engine("planner"), label=f"infer-{mode}-planner")
            log.info("%s", throughput_summary(generation["planner"]))
            planned = merge(out / "chunks" / "planner")  # every rank reads (after the barrier)
            items = generator_items(turns, planned, infer_sampling(cfg, "generator"),
                                    max_history)
            phase = "generator"
        else:
            items, phase = first_items, "vanilla"
        generation[phase] = generate(items, models[phase], out / "chunks" / phase,
                                     engine(phase), label=f"infer-{mode}-{phase}")
        log.info("%s", throughput_summary(generation[phase]))

        def write_output() -> dict:
            manifest = finalize(out, job, generation, t0)
            if run is not None:
                run.summary.update({f"infer/{k}": v for k, v in manifest["counts"].items()})
                for name, g in generation.items():
                    for k in ("items_per_s", "tokens_per_s", "chunks_computed"):
                        if g.get(k) is not None:
                            run.summary[f"infer/{name}/{k}"] = g[k]
            return manifest

        manifest = finalize_on_main(out, write_output)
    finally:
        tracking.finish(run)
    if dist.is_main():
        c = manifest["counts"]
        log.info("infer %s on %s: %d turns, strategy accuracy %.3f, %d unparseable -> %s",
                 mode, split, c["turns"], c["strategy_accuracy"], c["unparseable"],
                 out / "predictions.jsonl")
    return manifest
