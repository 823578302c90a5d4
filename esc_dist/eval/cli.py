"""The ``eval`` and ``compare`` subcommands; ``register`` adds them to esc-dist's subparsers.

Heavy imports (scikit-learn, matplotlib, sacrebleu, wandb) happen inside the handlers, so that
building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from ..config import ConfigError, load_recipe

VARIANTS = ("as_others", "excluded")  # as in .strategy, which this module does not import


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _print_headline(report: dict, out: Path) -> None:
    h, c = report["headline"], report["counts"]
    print(f"eval {report['name']}: {c['turns']} turns in {c['dialogues']} dialogues, "
          f"{c['unparseable']} unparseable strategy predictions ({100 * c['unparseable_rate']:.1f}%)")
    for variant, title in (("as_others", "unparseable -> Others"),
                           ("excluded", "unparseable excluded")):
        print(f"  strategy ({title}): Q {_pct(h[f'Q_{variant}'])}  "
              f"weighted-F1 {_pct(h[f'weighted_f1_{variant}'])}  "
              f"accuracy {_pct(h[f'accuracy_{variant}'])}  B {_num(h[f'B_{variant}'])}")
    print("  replies: " + "  ".join(
        f"{label} {_pct(h[key])}" for label, key in (
            ("BLEU-1", "bleu_1"), ("BLEU-2", "bleu_2"), ("BLEU-4", "bleu_4"),
            ("ROUGE-L", "rouge_l"), ("Dist-1", "distinct_1"), ("Dist-2", "distinct_2"),
            ("unigram-F1", "unigram_f1")))
          + f"  length {h['mean_length']:.1f}")
    print(f"wrote report.json, report.md, confusion.png, preferences.png to {out}")


def _llm_judge_scores(pred: Path, data: str | None, recipe, out: Path) -> dict:
    """Fluency, professionalism, empathy and helpfulness (0-5) of every predicted reply, from the
    judge endpoint of the recipe; the dialogue histories come from the prepared data."""
    from ..infer import load_turns
    from ..data.esconv import render_history
    from .llm_scores import score_predictions
    from .predictions import load_predictions

    if not data:
        raise ConfigError("eval.llm_judge needs --data DIR (the prepared data, for the dialogue "
                          "histories the judge reads)")
    records = load_predictions(pred)  # validated before any request is made
    histories = {t["id"]: render_history(t["history"])
                 for t in load_turns(data, recipe.infer.split)}
    missing = [r.id for r in records if r.id not in histories]
    if missing:
        raise ConfigError(f"{pred}: {len(missing)} prediction id(s) are not turns of split "
                          f"{recipe.infer.split!r} in {data} (first: {missing[0]})")
    scores = score_predictions(records, recipe.judge, out / "llm_cache", histories)
    print(f"LLM judge {scores['model']}: {scores['scored']}/{scores['n']} replies scored, "
          + "  ".join(f"{k} {v:.2f}" if v is not None else f"{k} –"
                      for k, v in scores["means"].items()))
    return scores


def cmd_eval(args: argparse.Namespace) -> int:
    from ..tracking import finish, start_run
    from .report import evaluate, log_report

    recipe = load_recipe(args.config, args.overrides)
    pred = Path(args.predictions)
    out = Path(args.out) if args.out else pred.parent / "report"
    name = args.name or pred.stem
    llm_scores = None
    if args.llm_scores:
        try:
            llm_scores = json.loads(Path(args.llm_scores).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--llm-scores {args.llm_scores}: cannot read JSON ({e})") from None
        if not isinstance(llm_scores, dict):
            raise ConfigError(f"--llm-scores {args.llm_scores}: expected a JSON object")
    if recipe.eval.llm_judge:
        if llm_scores is not None:
            raise ConfigError("give either --llm-scores or eval.llm_judge=true, not both")
        llm_scores = _llm_judge_scores(pred, args.data, recipe, out)
    report = evaluate(pred, out, name=name, llm_scores=llm_scores)
    _print_headline(report, out)
    run = start_run(recipe, f"eval-{name}", out, config={"eval": {
        "name": name, "predictions": str(pred), "sha256": report["input"]["sha256"]}})
    log_report(run, report, out)
    finish(run)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..tracking import finish, start_run
    from .report import compare, log_comparison

    reports = args.reports
    recipe = load_recipe(args.config, args.overrides)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    out = Path(args.out)
    try:
        comparison, markdown = compare(reports, names, out, variant=args.variant)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"compare: {e}") from None
    print(markdown)
    print(f"wrote comparison.json, comparison.md, comparison_preferences.png to {out}")
    run = start_run(recipe, "compare", out, config={"compare": {
        "reports": [str(r) for r in reports], "names": [x["name"] for x in comparison["systems"]],
        "variant": args.variant}})
    log_comparison(run, comparison, out)
    finish(run)
    return 0


def register(sub, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the ``eval`` and ``compare`` subcommands to the subparsers object ``sub``."""
    p = sub.add_parser(
        "eval", help="score a predictions file (strategy Q/F1/B, reply BLEU/ROUGE/Distinct)",
        description="Score a predictions JSONL file from the inference stage: strategy "
                    "accuracy, Q (macro-F1), weighted-F1 and preference bias B (Bradley-Terry, "
                    "Kang et al. 2024), each with unparseable strategies counted as Others and "
                    "excluded; reply BLEU-1..4, ROUGE-L, Distinct-1..3, unigram F1 and length. "
                    "Writes report.json, report.md, confusion.png and preferences.png, prints the "
                    "headline metrics and logs them to W&B (job type eval-NAME).")
    p.set_defaults(func=cmd_eval)
    p.add_argument("predictions", metavar="PRED.jsonl",
                   help="predictions file, one JSON object per gold supporter turn")
    p.add_argument("--out", help="output directory (default: a report/ directory next to "
                                 "the predictions file)")
    p.add_argument("--name", help="system name for the report and the W&B job type "
                                  "(default: the predictions file's stem)")
    p.add_argument("--llm-scores", metavar="JSON",
                   help="JSON object of LLM-judge scores to include in the report")
    p.add_argument("--data", metavar="DIR",
                   help="prepared data (esc-dist prepare); needed with eval.llm_judge=true, "
                        "which scores every reply 0-5 for fluency, professionalism, empathy and "
                        "helpfulness with the judge endpoint of the recipe (judge.base_url, "
                        "judge.model, key from judge.api_key_env)")
    add_common(p)

    p = sub.add_parser(
        "compare", help="put several evaluation reports side by side",
        description="Compare evaluation reports (e.g. Vanilla-SFT, Vanilla-DPO, Decoupled-SFT, "
                    "Decoupled-DPO): Q, weighted-F1, accuracy, B, BLEU-2, ROUGE-L, Distinct-2 "
                    "and the unparseable count in one table, plus a grouped bar plot of each "
                    "system's strategy preferences. Writes comparison.json, comparison.md and "
                    "comparison_preferences.png and logs them to W&B (job type compare).")
    p.set_defaults(func=cmd_compare)
    p.add_argument("reports", nargs="+", metavar="REPORT_DIR",
                   help="report directories (or report.json files) written by `esc-dist eval`")
    p.add_argument("--names", metavar="A,B,...",
                   help="comma-separated system names, one per report (default: report names)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--variant", choices=VARIANTS, default="as_others",
                   help="strategy metrics with unparseable predictions counted as Others "
                        "(as_others, default) or left out (excluded)")
    add_common(p)
