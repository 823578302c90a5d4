"""The eval and compare stages (`esc-dist eval`, `esc-dist compare`, the pipeline's eval-SYSTEM
and compare): predictions in, a report out; reports in, a comparison out; each with its W&B
run. The command layer only parses and prints."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import tracking
from ..config import Recipe
from ..errors import ConfigError
from ..io import read_manifest
from ..names import check_name
from ..outputs import check_output, claim_dir


def read_llm_scores(path: str | Path) -> dict:
    """A JSON object of LLM-judge scores given with ``--llm-scores``."""
    try:
        scores = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"cannot read a JSON object ({e})", path=path) from None
    if not isinstance(scores, dict):
        raise ConfigError("expected a JSON object of LLM-judge scores", path=path)
    return scores


def decode_files(paths: list[Path]) -> list[Path]:
    """The predictions files to score: as given, or -- for the one ``predictions.jsonl`` of an
    inference output that made several decodes -- all of them, as its manifest lists them."""
    if len(paths) != 1 or paths[0].name != "predictions.jsonl":
        return paths
    names = ((read_manifest(paths[0].parent) or {}).get("counts") or {}).get("decodes")
    if (
        not isinstance(names, list)
        or len(names) < 2
        or not all(isinstance(n, str) and "/" not in n for n in names)
    ):
        return paths
    return [paths[0].parent / n for n in names]


@dataclass
class Evaluated:
    report: dict
    out: Path
    decodes: list[Path]  # the predictions files scored
    judged: dict | None  # the LLM judge's summary (eval.llm_judge), else None


def eval_stage(
    recipe: Recipe,
    predictions: list[str | Path],
    out: str | Path | None = None,
    name: str | None = None,
    llm_scores: str | Path | None = None,
    data: str | Path | None = None,
) -> Evaluated:
    """Score one system's predictions (several files: decodes) into ``out`` (default: a
    ``report`` directory beside the first file) and log the report to W&B."""
    from .report import evaluate, log_report

    preds = decode_files([Path(p) for p in predictions])
    inputs = [*preds, llm_scores, data]
    out = check_output(out or preds[0].parent / "report", "eval", inputs)
    # the name titles the report's rows and charts and the W&B job type
    name = check_name(
        name if name is not None else preds[0].stem,
        "--name"
        if name is not None
        else "system name (the predictions file's stem; --name gives another)",
    )
    scores = read_llm_scores(llm_scores) if llm_scores else None
    extra = judged = None
    if recipe.eval.llm_judge:
        if scores is not None:
            raise ConfigError("give either --llm-scores or eval.llm_judge=true, not both")
        if not data:
            raise ConfigError(
                "eval.llm_judge needs --data DIR (the prepared data, for the "
                "dialogue histories the judge reads)"
            )
    if data:
        from .predictions import load_predictions
        from .with_data import data_metrics

        first = load_predictions(preds[0])  # validated before any request is made
        if recipe.eval.llm_judge:  # the judge's answer cache lives in the report directory
            claim_dir(out, "eval", inputs)
        judged, extra = data_metrics(first, recipe, data, out / "llm_cache", preds[0])
        scores = judged or scores
    report = evaluate(
        preds, out, name=name, protocol=recipe.eval.protocol, llm_scores=scores, extra=extra
    )
    with tracking.stage_run(
        recipe,
        f"eval-{name}",
        out,
        config={
            "eval": {
                "name": name,
                "predictions": [str(p) for p in preds],
                "protocol": report["protocol"],
                "sha256": report["input"]["sha256"],
            }
        },
    ) as run:
        log_report(run, report, out)
        tracking.log_reference(run, out, f"{recipe.run.name}-eval-{name}", "report")
    return Evaluated(report, out, preds, judged or None)


def compare_stage(
    recipe: Recipe,
    reports: list[str | Path],
    out: str | Path,
    names: list[str] | None = None,
    variant: str = "as_others",
    protocol: str | None = None,
) -> tuple[dict, str]:
    """Put evaluation reports side by side into ``out`` and log the comparison to W&B; returns
    (comparison, its Markdown)."""
    from .compare import compare, log_comparison

    out = Path(out)
    comparison, markdown = compare(reports, names, out, variant=variant, protocol=protocol)
    with tracking.stage_run(
        recipe,
        "compare",
        out,
        config={
            "compare": {
                "reports": [str(r) for r in reports],
                "names": [x["name"] for x in comparison["systems"]],
                "variant": variant,
                "protocol": comparison["protocol"],
            }
        },
    ) as run:
        log_comparison(run, comparison, out)
        tracking.log_reference(run, out, f"{recipe.run.name}-comparison", "report")
    return comparison, markdown
