"""`esc-dist judge`, `esc-dist eval` and `esc-dist compare`: judging mined pairs, scoring
predictions and putting systems side by side. Heavy imports (scikit-learn, matplotlib, sacrebleu,
wandb) happen inside the handlers, so that building the parser stays cheap."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..constants import ROLES, VARIANTS
from ..errors import ConfigError
from . import Command, recipe_of


def run_judge(args: argparse.Namespace) -> int:
    from ..io import require_verified
    from ..ipm.prefdial import build_prefdial, read_pairs
    from ..outputs import check_output, claim_dir
    from ..tracking import resolve_mode, stage_run

    recipe = recipe_of(args, [f"judge.backend={args.backend}"] if args.backend else [])
    out = check_output(args.out or f"{recipe.run.output_dir}/prefdial/{args.role}", "judge",
                       [args.pairs])
    require_verified(Path(args.pairs).parent)  # a mining output changed or cut since it was made
    read_pairs(Path(args.pairs), args.role)  # a bad input fails before anything is written
    # The W&B files live in a directory of their own beside the output (the output is replaced
    # whole when the build completes), named after it, so that the run id follows the output.
    wandb_dir = out.with_name(out.name + ".wandb")
    if resolve_mode(recipe.wandb) != "disabled":
        claim_dir(wandb_dir, "judge", [args.pairs])
    with stage_run(recipe, f"judge-{args.role}", wandb_dir,
                   config={"pairs": str(args.pairs), "out": str(out), "role": args.role}) as run:
        manifest = build_prefdial(args.pairs, out, recipe.judge, recipe, run=run, role=args.role,
                                  cache_dir=args.cache_dir)
    print(f"judged {manifest['counts']['pairs_in']} {args.role} pairs with "
          f"{manifest['judge_name']}: kept {manifest['counts']['kept']} -> {out}: "
          f"{json.dumps(manifest['counts'])}")
    return 0


def judge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=ROLES, help="which model's pairs these are")
    p.add_argument("--pairs", required=True, metavar="PAIRS.jsonl",
                   help="pairs file written by the mining stage")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/prefdial/ROLE)")
    p.add_argument("--backend", choices=("offline", "openai"),
                   help="judge backend (judge.backend; default offline)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="cache of LLM judge answers (default: beside the output, judge_cache)")


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
    """Fluency, professionalism, empathy and helpfulness (0-5) of every predicted reply, one
    rubric prompt per dimension, from the judge endpoint of the recipe; each prompt shows the
    dialogue history (from the prepared data), the seeker's last message, the reference (gold)
    reply of the prediction and the predicted reply."""
    from ..eval.llm_scores import score_predictions
    from ..eval.predictions import load_predictions
    from ..infer import load_turns

    if not data:
        raise ConfigError("eval.llm_judge needs --data DIR (the prepared data, for the dialogue "
                          "histories the judge reads)")
    records = load_predictions(pred)  # validated before any request is made
    histories = {t["id"]: t["history"] for t in load_turns(data, recipe.infer.split)}
    missing = [r.id for r in records if r.id not in histories]
    if missing:
        raise ConfigError(f"{pred}: {len(missing)} prediction id(s) are not turns of split "
                          f"{recipe.infer.split!r} in {data} (first: {missing[0]})")
    scores = score_predictions(records, recipe.judge, out / "llm_cache", histories)
    print(f"LLM judge {scores['model']} ({scores['protocol']}): {scores['scored']}/{scores['n']} "
          f"replies scored on all four, {scores['parse_failures']} malformed and "
          f"{scores['request_failures']} failed of {scores['requests']} judgements; "
          + "  ".join(f"{k} {v:.2f}" if v is not None else f"{k} –"
                      for k, v in scores["means"].items()))
    return scores


def _read_llm_scores(path: str) -> dict:
    try:
        scores = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"cannot read a JSON object ({e})", path=path) from None
    if not isinstance(scores, dict):
        raise ConfigError("expected a JSON object of LLM-judge scores", path=path)
    return scores


def run_eval(args: argparse.Namespace) -> int:
    from ..eval.report import evaluate, log_report
    from ..tracking import stage_run

    from ..outputs import check_output, claim_dir

    recipe = recipe_of(args)
    pred = Path(args.predictions)
    inputs = [pred, args.llm_scores, args.data if recipe.eval.llm_judge else None]
    out = check_output(args.out or pred.parent / "report", "eval", inputs)
    name = args.name or pred.stem
    llm_scores = _read_llm_scores(args.llm_scores) if args.llm_scores else None
    if recipe.eval.llm_judge:
        if llm_scores is not None:
            raise ConfigError("give either --llm-scores or eval.llm_judge=true, not both")
        claim_dir(out, "eval", inputs)  # the judge's answer cache lives in the report directory
        llm_scores = _llm_judge_scores(pred, args.data, recipe, out)
    report = evaluate(pred, out, name=name, llm_scores=llm_scores)
    _print_headline(report, out)
    with stage_run(recipe, f"eval-{name}", out, config={"eval": {
            "name": name, "predictions": str(pred), "sha256": report["input"]["sha256"]}}) as run:
        log_report(run, report, out)
    return 0


def eval_arguments(p: argparse.ArgumentParser) -> None:
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
                        "helpfulness (one rubric prompt each, with the gold reply as reference) "
                        "with the judge endpoint of the recipe (judge.base_url, "
                        "judge.model, key from judge.api_key_env)")


def run_compare(args: argparse.Namespace) -> int:
    from ..eval.report import compare, log_comparison
    from ..tracking import stage_run

    recipe = recipe_of(args)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    out = Path(args.out)
    comparison, markdown = compare(args.reports, names, out, variant=args.variant)
    print(markdown)
    print(f"wrote comparison.json, comparison.md, comparison_preferences.png to {out}")
    with stage_run(recipe, "compare", out, config={"compare": {
            "reports": [str(r) for r in args.reports],
            "names": [x["name"] for x in comparison["systems"]], "variant": args.variant}}) as run:
        log_comparison(run, comparison, out)
    return 0


def compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reports", nargs="+", metavar="REPORT_DIR",
                   help="report directories (or report.json files) written by `esc-dist eval`")
    p.add_argument("--names", metavar="A,B,...",
                   help="comma-separated system names, one per report (default: report names)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--variant", choices=VARIANTS, default="as_others",
                   help="strategy metrics with unparseable predictions counted as Others "
                        "(as_others, default) or left out (excluded)")


COMMANDS = [
    Command("judge", run_judge,
            "judge mined pairs and build the IPM-PrefDial dataset of one role",
            "Keep a mined (chosen, rejected) pair only when the chosen side is free of Lack "
            "Empathy, Early Emotion Shift and Template Response and the rejected side shows at "
            "least one; write judged.jsonl, pairs.jsonl, a TRL conversational DPO dataset, "
            "stats.json and a manifest.", judge_arguments),
    Command("eval", run_eval,
            "score a predictions file (strategy Q/F1/B, reply BLEU/ROUGE/Distinct)",
            "Score a predictions JSONL file from the inference stage: strategy accuracy, Q "
            "(macro-F1), weighted-F1 and preference bias B (Bradley-Terry, Kang et al. 2024), "
            "each with unparseable strategies counted as Others and excluded; reply BLEU-1..4, "
            "ROUGE-L, Distinct-1..3, unigram F1 and length. Writes report.json, report.md, "
            "confusion.png and preferences.png, prints the headline metrics and logs them to "
            "W&B (job type eval-NAME).", eval_arguments),
    Command("compare", run_compare, "put several evaluation reports side by side",
            "Compare evaluation reports (e.g. Vanilla-SFT, Vanilla-DPO, Decoupled-SFT, "
            "Decoupled-DPO): Q, weighted-F1, accuracy, B, BLEU-2, ROUGE-L, Distinct-2 and the "
            "unparseable count in one table, plus a grouped bar plot of each system's strategy "
            "preferences. Writes comparison.json, comparison.md and comparison_preferences.png "
            "and logs them to W&B (job type compare).", compare_arguments),
]
