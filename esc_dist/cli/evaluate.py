"""`esc-dist judge`, `esc-dist eval` and `esc-dist compare`: judging mined pairs, scoring
predictions and putting systems side by side. Heavy imports (scikit-learn, matplotlib, sacrebleu,
wandb) happen inside the handlers, so that building the parser stays cheap."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..constants import PROTOCOLS, ROLES, VARIANTS
from .common import Command, recipe_of


def run_judge(args: argparse.Namespace) -> int:
    from ..ipm.stage import judge_stage

    recipe = recipe_of(args, [f"judge.backend={args.backend}"] if args.backend else [])
    manifest, out = judge_stage(recipe, args.role, args.pairs, args.out, args.cache_dir)
    print(
        f"judged {manifest['counts']['pairs_in']} {args.role} pairs with "
        f"{manifest['judge_name']}: kept {manifest['counts']['kept']} -> {out}: "
        f"{json.dumps(manifest['counts'])}"
    )
    return 0


def judge_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--role", required=True, choices=ROLES, help="which model's pairs these are")
    p.add_argument(
        "--pairs",
        required=True,
        metavar="PAIRS.jsonl",
        help="pairs file written by the mining stage",
    )
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR/prefdial/ROLE)")
    p.add_argument(
        "--backend",
        choices=("offline", "openai"),
        help="judge backend (judge.backend; default offline)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="cache of LLM judge answers (default: beside the output, judge_cache)",
    )


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def _print_headline(report: dict, out: Path) -> None:
    c = report["counts"]
    print(
        f"eval {report['name']}: {c['turns']} turns in {c['dialogues']} dialogues, "
        f"{c['unparseable']} unparseable strategy predictions "
        f"({100 * c['unparseable_rate']:.1f}%)"
        f", {report['decodes']} decode(s); headline protocol: {report['protocol']}"
    )
    for w in report.get("warnings", []):
        print(f"  warning: {w}")
    for protocol, values in report["protocols"].items():
        h = values["headline"]
        print(f"  {protocol} protocol:")
        for variant, title in (
            ("as_others", "unparseable -> Others"),
            ("excluded", "unparseable excluded"),
        ):
            print(
                f"    strategy ({title}): Q {_pct(h[f'Q_{variant}'])}  "
                f"weighted-F1 {_pct(h[f'weighted_f1_{variant}'])}  "
                f"accuracy {_pct(h[f'accuracy_{variant}'])}  B {_num(h[f'B_{variant}'])}"
            )
        print(
            "    replies: "
            + "  ".join(
                f"{label} {_pct(h[key])}"
                for label, key in (
                    ("BLEU-1", "bleu_1"),
                    ("BLEU-2", "bleu_2"),
                    ("BLEU-4", "bleu_4"),
                    ("ROUGE-L", "rouge_l"),
                    ("Dist-1", "distinct_1"),
                    ("Dist-2", "distinct_2"),
                    ("unigram-F1", "unigram_f1"),
                )
            )
            + f"  length {h['mean_length']:.1f}"
        )
    for backend, errors in (report.get("psych_errors") or {}).items():
        print(
            f"  psychological errors ({backend}): any {_pct(errors['any_error'])}  "
            + "  ".join(f"{t} {_pct(v)}" for t, v in errors["rates"].items() if v is not None)
        )
    if report.get("adherence"):
        a = report["adherence"]
        print(
            f"  strategy adherence {_pct(a.get('adherence'))} (the classifier on the gold "
            f"replies of these turns: {_pct((a.get('gold_reference') or {}).get('adherence'))})"
        )
    print(f"wrote report.json, report.md and figures to {out}")


def run_eval(args: argparse.Namespace) -> int:
    from ..eval.stage import eval_stage

    recipe = recipe_of(args)
    if not args.data:
        print("(no --data: psychological error rates and strategy adherence are not computed)")
    done = eval_stage(recipe, args.predictions, args.out, args.name, args.llm_scores, args.data)
    judged = done.judged
    if judged:
        print(
            f"LLM judge {judged['model']} ({judged['protocol']}): {judged['scored']}/"
            f"{judged['n']} replies scored on all four, {judged['parse_failures']} "
            f"malformed and {judged['request_failures']} failed of {judged['requests']} "
            "judgements; "
            + "  ".join(
                f"{k} {v:.2f}" if v is not None else f"{k} –" for k, v in judged["means"].items()
            )
        )
    if len(done.decodes) > 1:
        names = ", ".join(p.name for p in done.decodes)
        print(f"eval {done.report['name']}: {len(done.decodes)} decodes: {names}")
    _print_headline(done.report, done.out)
    return 0


def eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "predictions",
        metavar="PRED.jsonl",
        nargs="+",
        help="predictions file(s), one JSON object per gold supporter turn; several "
        "files are decodes of one system (e.g. sampled with different seeds), "
        "scored as mean ± std; an inference output's predictions.jsonl brings "
        "its other decodes (predictions.decode-K.jsonl) along",
    )
    p.add_argument(
        "--out", help="output directory (default: a report/ directory next to the predictions file)"
    )
    p.add_argument(
        "--name",
        help="system name for the report and the W&B job type "
        "(default: the predictions file's stem)",
    )
    p.add_argument(
        "--llm-scores",
        metavar="JSON",
        help="JSON object of LLM-judge scores to include in the report",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        help="prepared data (esc-dist prepare): the dialogue histories and gold "
        "training replies behind the psychological error rates (offline rules; "
        "with eval.llm_judge=true also the LLM judge) and strategy adherence "
        "(eval.adherence); needed with eval.llm_judge=true, which also scores "
        "every reply 0-5 for fluency, professionalism, empathy and helpfulness "
        "(one rubric prompt each, with the gold reply as reference) with the "
        "judge endpoint of the recipe (judge.base_url, judge.model, key "
        "from judge.api_key_env)",
    )


def run_compare(args: argparse.Namespace) -> int:
    from ..eval.stage import compare_stage

    recipe = recipe_of(args)
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    _, markdown = compare_stage(
        recipe, args.reports, args.out, names, variant=args.variant, protocol=args.protocol
    )
    print(markdown)
    print(f"wrote comparison.json, comparison.md, comparison_preferences.png to {args.out}")
    return 0


def compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "reports",
        nargs="+",
        metavar="REPORT_DIR",
        help="report directories (or report.json files) written by `esc-dist eval`",
    )
    p.add_argument(
        "--names",
        metavar="A,B,...",
        help="comma-separated system names, one per report (default: report names)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="the protocol whose values are compared (default: the first report's "
        "headline protocol, eval.protocol when it was written)",
    )
    p.add_argument(
        "--variant",
        choices=VARIANTS,
        default="as_others",
        help="strategy metrics with unparseable predictions counted as Others "
        "(as_others, default) or left out (excluded)",
    )


COMMANDS = [
    Command(
        "judge",
        run_judge,
        "judge mined pairs and build the IPM-PrefDial dataset of one role",
        "Keep a mined (chosen, rejected) pair only when the chosen side is free of Lack "
        "Empathy, Early Emotion Shift and Template Response and the rejected side shows at "
        "least one; write judged.jsonl, pairs.jsonl, a TRL conversational DPO dataset, "
        "stats.json and a manifest.",
        judge_arguments,
    ),
    Command(
        "eval",
        run_eval,
        "score predictions (strategy Q/F1/B, replies, errors, adherence; both protocols)",
        "Score the predictions JSONL file(s) of one system from the inference stage (several "
        "decodes: mean ± std): strategy accuracy, Q (macro-F1), weighted-F1 and preference "
        "bias B (Bradley-Terry, Kang et al. 2024), each with unparseable strategies counted "
        "as Others and excluded; reply BLEU-1..4, ROUGE-L, Distinct-1..3, unigram F1 and "
        "length -- all under the paper's protocol (per-reply NLTK metrics, 20-sweep B) and "
        "ours (corpus metrics, converged B); with --data, psychological error rates and "
        "strategy adherence. Writes report.json, report.md and figures, prints the headline "
        "metrics and logs them to W&B (job type eval-NAME).",
        eval_arguments,
    ),
    Command(
        "compare",
        run_compare,
        "put several evaluation reports side by side",
        "Compare evaluation reports (e.g. Vanilla-SFT, Vanilla-DPO, Decoupled-SFT, "
        "Decoupled-DPO) under one protocol: Q, weighted-F1, accuracy, B, BLEU-2, ROUGE-L, "
        "Distinct-2, error rate, adherence and the unparseable count in one table, plus "
        "grouped bar plots of each system's strategy preferences and error rates. Writes "
        "comparison.json, comparison.md and the figures and logs them to W&B (job type "
        "compare).",
        compare_arguments,
    ),
]
