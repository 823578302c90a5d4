"""Judge validity: how often does the IPM judge flag supporter turns of failed conversations
(FailedESConv) compared with the gold turns of ESConv?

Every supporter turn of both corpora is judged as the *chosen* side of a pair through
``esc_dist.ipm.judge.judge_pairs`` (the same entry point that mining uses), against a fixed
contrast candidate as the rejected side: the reply "Okay." for the reply check (generator role),
and the strategy "Others" (or "Information" when the turn's own strategy is Others) for the
strategy check (planner role). The error labels of the chosen side are the judge's verdict on the
turn; the contrast side only gives the LLM judge the two-candidate format it was written for.

FailedESConv uses some non-canonical strategy names; they are mapped to the eight ESConv
strategies by the table ``FAILED_STRATEGY`` below before the strategy check.

    python -m experiments.judge_validity --esconv-dir ../shared/data/esconv --out results.json
    # the LLM judge (any OpenAI-compatible endpoint; the key only from the environment):
    OPENAI_API_KEY=... python -m experiments.judge_validity --backend openai \\
        --model gpt-4o-mini --base-url https://api.openai.com/v1 --max-turns 500 --out llm.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from esc_dist.config import JudgeConfig
from esc_dist.data.esconv import iter_turns, load_esconv
from esc_dist.ipm.judge import ERRORS, judge_pairs

# FailedESConv's strategy names outside the eight, mapped to the ESConv strategy they denote.
FAILED_STRATEGY = {
    "Questions": "Question",
    "Other": "Others",
    "Direct Guidance": "Providing Suggestions",
    "Approval and Reassurance": "Affirmation and Reassurance",
    "Restatement": "Restatement or Paraphrasing",
}
CONTRAST_REPLY = "Okay."


def load_sets(esconv_dir: Path) -> dict[str, list]:
    failed_path = esconv_dir / "FailedESConv.json"
    raw = json.loads(failed_path.read_text(encoding="utf-8"))
    for d in raw:  # canonical strategy names, in memory only
        for u in d["dialog"]:
            s = (u.get("annotation") or {}).get("strategy")
            if s in FAILED_STRATEGY:
                u["annotation"]["strategy"] = FAILED_STRATEGY[s]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / failed_path.name
        path.write_text(json.dumps(raw), encoding="utf-8")
        failed = load_esconv(
            path, prefix="failed", speakers={"speaker": "seeker", "listener": "supporter"}
        )
    return {
        "esconv_gold": list(iter_turns(load_esconv(esconv_dir / "esconv.json"))),
        "failed_esconv": list(iter_turns(failed)),
    }


def pairs_of(turns: list) -> tuple[list[dict], list[dict]]:
    def history(t):
        return [{"role": m.role, "text": m.text, "strategy": m.strategy} for m in t.history]

    replies, strategies = [], []
    for t in turns:
        h = history(t)
        replies.append(
            {
                "id": t.id,
                "role": "generator",
                "history": h,
                "strategy": t.strategy,
                "chosen": t.reply,
                "rejected": CONTRAST_REPLY,
            }
        )
        contrast = "Information" if t.strategy == "Others" else "Others"
        strategies.append(
            {
                "id": t.id,
                "role": "planner",
                "history": h,
                "chosen": t.strategy,
                "rejected": contrast,
                "sampled_strategy": contrast,
            }
        )
    return replies, strategies


def dialogue_auc(gold: list[dict], failed: list[dict]) -> float | None:
    """Area under the ROC curve of the per-dialogue share of flagged turns as a detector of
    failed conversations (0.5: no better than chance)."""
    from sklearn.metrics import roc_auc_score

    def shares(verdicts):
        per = {}
        for v in verdicts:
            if v["reason"].startswith(("judge_", "identical")):
                continue
            d = v["id"].rsplit("-t", 1)[0]
            per.setdefault(d, []).append(bool(v["chosen_errors"]))
        return [sum(x) / len(x) for x in per.values()]

    g, f = shares(gold), shares(failed)
    if not g or not f:
        return None
    return float(roc_auc_score([0] * len(g) + [1] * len(f), g + f))


def rates(verdicts: list[dict]) -> dict:
    judged = [v for v in verdicts if not v["reason"].startswith(("judge_", "identical"))]
    n = len(judged)
    out = {"turns": len(verdicts), "judged": n}
    for e in ERRORS:
        out[e] = sum(e in v["chosen_errors"] for v in judged) / max(n, 1)
    out["any"] = sum(bool(v["chosen_errors"]) for v in judged) / max(n, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--esconv-dir", type=Path, default=ROOT.parent / "shared/data/esconv")
    ap.add_argument("--backend", choices=["offline", "openai"], default="offline")
    ap.add_argument("--model", default=JudgeConfig.model)
    ap.add_argument("--base-url", default=JudgeConfig.base_url)
    ap.add_argument("--api-key-env", default=JudgeConfig.api_key_env)
    ap.add_argument(
        "--max-turns",
        type=int,
        default=None,
        help="judge a seeded random sample of this many turns per corpus",
    )
    ap.add_argument("--cache", type=Path, default=None, help="LLM answer cache directory")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    cfg = JudgeConfig(
        backend=args.backend, model=args.model, base_url=args.base_url, api_key_env=args.api_key_env
    )
    results = {
        "backend": args.backend,
        "model": args.model if args.backend == "openai" else None,
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
        "sets": {},
    }
    verdicts = {}
    for name, turns in load_sets(args.esconv_dir).items():
        if args.max_turns is not None and len(turns) > args.max_turns:
            turns = random.Random(0).sample(turns, args.max_turns)
        replies, strategies = pairs_of(turns)
        t0 = time.time()
        verdicts[name] = {
            "reply": judge_pairs(replies, cfg, args.cache),
            "strategy": judge_pairs(strategies, cfg, args.cache),
        }
        results["sets"][name] = {check: rates(v) for check, v in verdicts[name].items()}
        results["sets"][name]["seconds"] = round(time.time() - t0, 1)
    results["dialogue_auc"] = {
        check: dialogue_auc(verdicts["esconv_gold"][check], verdicts["failed_esconv"][check])
        for check in ("reply", "strategy")
    }
    g, f = results["sets"]["esconv_gold"], results["sets"]["failed_esconv"]
    results["ratio_failed_over_gold"] = {
        check: {k: (f[check][k] / g[check][k] if g[check][k] else None) for k in [*ERRORS, "any"]}
        for check in ("reply", "strategy")
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    print(f"| check | corpus | turns | {' | '.join(ERRORS)} | any error |")
    print("|---|---|---|" + "---|" * (len(ERRORS) + 1))
    for check in ("reply", "strategy"):
        for name in ("esconv_gold", "failed_esconv"):
            r = results["sets"][name][check]
            cells = " | ".join(f"{100 * r[k]:.1f}%" for k in [*ERRORS, "any"])
            print(f"| {check} | {name} | {r['judged']} | {cells} |")
        ratio = results["ratio_failed_over_gold"][check]
        cells = " | ".join(f"{ratio[k]:.2f}x" if ratio[k] else "–" for k in [*ERRORS, "any"])
        print(f"| {check} | failed / gold | | {cells} |")
    print(
        "dialogue-level AUC (share of flagged turns, failed vs gold): "
        + ", ".join(
            f"{check} {auc:.3f}" if auc is not None else f"{check} –"
            for check, auc in results["dialogue_auc"].items()
        )
    )


if __name__ == "__main__":
    main()
