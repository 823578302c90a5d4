"""Evaluation reports: input validation, files written, comparison, W&B offline logging, CLI."""

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from esc_dist.config import Recipe
from esc_dist.errors import DataError, PredictionsError
from esc_dist.eval.compare import compare, load_report, log_comparison
from esc_dist.eval.predictions import load_predictions
from esc_dist.eval.report import evaluate, log_report
from esc_dist.eval.views import confusion_with_unparseable
from esc_dist.strategies import STRATEGIES
from esc_dist.tracking import start_run
from tests.helpers import wait_for_offline_runs
from tests.unit.test_eval_metrics import GOLD, HYPS, PRED, REFS


def _row(
    i: int,
    gold: str,
    pred: str | None,
    reply: str = "I hear you.",
    gold_reply: str = "I hear you, that is hard.",
    mode: str = "decoupled",
) -> dict:
    return {
        "id": f"esconv-{i // 4:04d}-t{i % 4:03d}",
        "dialogue_id": f"esconv-{i // 4:04d}",
        "turn_index": i % 4,
        "gold_strategy": gold,
        "gold_reply": gold_reply,
        "pred_strategy": pred,
        "pred_strategy_raw": pred or "[Sarcasm] whatever",
        "pred_reply": reply,
        "mode": mode,
    }


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def fixture_preds(tmp_path) -> Path:
    """The 10-turn fixture of test_eval_metrics (2 unparseable), replies cycling the 3 pairs."""
    rows = [_row(i, g, p, HYPS[i % 3], REFS[i % 3]) for i, (g, p) in enumerate(zip(GOLD, PRED))]
    return _write(tmp_path / "decoupled-dpo.jsonl", rows)


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """Offline W&B with every directory it touches inside tmp_path."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_PROJECT", "esc-dist")  # start_run sets these; restore afterwards
    monkeypatch.setenv("WANDB_LOG_MODEL", "false")


# ---------------------------------------------------------------------------------------------
# Input validation


def test_loads_a_good_file(fixture_preds):
    preds = load_predictions(fixture_preds)
    assert len(preds) == 10 and preds[6].pred_strategy is None
    assert preds[0].id == "esconv-0000-t000" and preds[9].turn_index == 1


@pytest.mark.parametrize(
    "line, problem",
    [
        ("{not json", "invalid JSON"),
        ('["a list"]', "expected a JSON object"),
        (
            json.dumps(
                {k: v for k, v in _row(9, "Question", "Question").items() if k != "pred_reply"}
            ),
            "missing key(s) 'pred_reply'",
        ),
        (json.dumps(_row(9, "Questions", "Question")), "gold strategy 'Questions' is not one of"),
        (json.dumps(_row(9, "Question", "Sarcasm")), "'pred_strategy' 'Sarcasm' must be one of"),
        (json.dumps(_row(9, "Question", None, mode="joint")), "'mode' must be one of"),
        (
            json.dumps({**_row(9, "Question", None), "turn_index": "3"}),
            "'turn_index' must be an int",
        ),
        (
            json.dumps(_row(0, "Question", "Question")),
            "duplicate id 'esconv-0000-t000' (first on line 1)",
        ),
    ],
)
def test_bad_input_names_file_and_line(tmp_path, line, problem):
    good = [json.dumps(_row(i, "Question", "Question")) for i in range(3)]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(good[:2] + [""] + [good[2], line]) + "\n")  # blank line 3 skipped
    with pytest.raises(PredictionsError) as e:
        load_predictions(path)
    assert str(e.value).startswith(f"{path}, line 5: "), str(e.value)
    assert problem in str(e.value)
    assert e.value.line == 5


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(PredictionsError, match="no predictions"):
        load_predictions(tmp_path / "e.jsonl")
    with pytest.raises(PredictionsError, match="file not found"):
        load_predictions(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------------------------
# Report files


def test_evaluate_writes_report_files(fixture_preds):
    report = evaluate(
        fixture_preds, llm_scores={"judge": "offline", "empathy": 3.25}, protocol="ours"
    )
    out = fixture_preds.parent / "report"  # default: next to the predictions
    assert sorted(p.name for p in out.iterdir()) == [
        ".esc-dist-output",
        "confusion.png",
        "manifest.json",
        "preferences.png",
        "report.json",
        "report.md",
    ]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["input"]["sha256"] == hashlib.sha256(fixture_preds.read_bytes()).hexdigest()
    assert on_disk["name"] == "decoupled-dpo"
    c = on_disk["counts"]
    assert (c["turns"], c["dialogues"], c["unparseable"]) == (10, 3, 2)
    assert c["predicted_strategies"]["(unparseable)"] == 2
    h = on_disk["headline"]
    assert h["Q_as_others"] == pytest.approx(449 / 1050)
    assert h["Q_excluded"] == pytest.approx(9 / 14)
    assert h["B_as_others"] == pytest.approx(math.sqrt(5 / 12))
    assert h["B_excluded"] == pytest.approx(math.sqrt(1.5))
    assert on_disk["strategy"]["as_others"]["n"] == 10 and on_disk["strategy"]["excluded"]["n"] == 8
    assert on_disk["llm_scores"] == {"judge": "offline", "empathy": 3.25}

    md = (out / "report.md").read_text()
    assert "| Q = macro-F1 (%) | 42.76 | 64.29 |" in md  # 449/1050, 9/14
    assert "| B = preference bias | 0.6455 | 1.2247 |" in md
    assert "**2 unparseable strategy predictions** in the first decode (20.0%)" in md
    assert "## LLM scores" in md and "| empathy | 3.2500 |" in md
    # confusion table: gold Information's turn was unparseable, not a parsed "Others"
    info_row = next(line for line in md.splitlines() if line.startswith("| Information | 0"))
    assert info_row.endswith("| 0 | 1 |"), info_row
    table = confusion_with_unparseable(on_disk["strategy"])  # what confusion.png draws
    assert np.array(table).shape == (8, 9) and np.array(table).sum() == 10
    assert table[STRATEGIES.index("Reflection of feelings")][-2:] == [0, 1]
    assert table[STRATEGIES.index("Others")][-2:] == [1, 0]
    for name in ("confusion.png", "preferences.png"):
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 300
            assert np.asarray(im.convert("L")).std() > 10  # something was drawn
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temp dirs
    assert (out / ".esc-dist-output").read_text() == "eval\n"


def test_evaluate_when_every_strategy_is_unparseable(tmp_path):
    rows = [_row(i, s, None) for i, s in enumerate(STRATEGIES)]
    report = evaluate(
        _write(tmp_path / "p.jsonl", rows), tmp_path / "out", name="broken", protocol="ours"
    )
    assert report["headline"]["B_excluded"] is None
    assert report["headline"]["B_as_others"] == pytest.approx(math.sqrt(7))  # always "Others"
    assert report["strategy"]["excluded"] is None
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| B = preference bias | 2.6458 | – |" in md


def _system(tmp_path: Path, name: str, preds: list[str | None]) -> Path:
    gold = [s for s in STRATEGIES for _ in range(3)]
    rows = [_row(i, g, p, reply=f"reply {i % 5}") for i, (g, p) in enumerate(zip(gold, preds))]
    path = _write(tmp_path / f"{name}.jsonl", rows)
    evaluate(path, tmp_path / name, name=name, protocol="ours")
    return tmp_path / name


def test_compare(tmp_path):
    gold = [s for s in STRATEGIES for _ in range(3)]
    perfect = _system(tmp_path, "perfect", gold)
    constant = _system(tmp_path, "constant", ["Question"] * len(gold))
    flaky = _system(tmp_path, "flaky", [None if i % 4 == 0 else g for i, g in enumerate(gold)])
    comparison, md = compare(
        [perfect, constant / "report.json", flaky],
        ["Decoupled-DPO", "Vanilla-SFT", "Decoupled-SFT"],
        tmp_path / "cmp",
    )
    values = {x["name"]: x["values"] for x in comparison["systems"]}
    assert values["Decoupled-DPO"]["B"] == 0.0 and values["Decoupled-DPO"]["Q"] == 1.0
    assert values["Vanilla-SFT"]["B"] == pytest.approx(math.sqrt(7))
    assert values["Vanilla-SFT"]["accuracy"] == pytest.approx(3 / 24)
    assert values["Decoupled-SFT"]["unparseable"] == 6
    assert comparison["best"]["B"] == ["Decoupled-DPO"]
    assert comparison["best"]["unparseable"] == ["Decoupled-DPO", "Vanilla-SFT"]
    assert comparison["same_gold"] is True
    assert "| Vanilla-SFT |" in md and "2.6458" in md and "| **0.0000** |" in md
    assert {p.name for p in (tmp_path / "cmp").iterdir()} == {
        ".esc-dist-output",
        "comparison.json",
        "comparison.md",
        "comparison_preferences.png",
    }
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["variant"] == "as_others"
    with Image.open(tmp_path / "cmp" / "comparison_preferences.png") as im:
        assert im.format == "PNG"
    excl, _ = compare([flaky], ["x"], variant="excluded")
    assert excl["systems"][0]["values"]["accuracy"] == 1.0  # the parsed ones are all right
    with pytest.raises(ValueError, match="2 names for 1 reports"):
        compare([perfect], ["a", "b"])
    with pytest.raises(FileNotFoundError):
        load_report(tmp_path / "nothing-here")


# ---------------------------------------------------------------------------------------------
# Protocols and decodes

PAPER = {
    "protocol": "paper",
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.95,
    "top_k": 0,
    "decodes": 3,
}


def _decodes(tmp_path: Path) -> list[Path]:
    """Three decodes of the same 24 gold turns (every strategy gold three times), differing in
    their strategy predictions and replies."""
    gold = [s for s in STRATEGIES for _ in range(3)]
    words = [
        "I hear you",
        "that sounds hard",
        "what happened then",
        "you are not alone",
        "maybe talk to a friend",
        "I felt the same once",
    ]
    paths = []
    for k in range(3):
        rows = [
            _row(
                i,
                g,
                STRATEGIES[(i // 3 + (i + k) % 3 + (k > 0)) % 8] if (i + k) % 5 else None,
                reply=f"{words[(i + k) % 6]} . {words[(i * k) % 6]}",
                gold_reply=f"{words[i % 6]} , {words[(i + 3) % 6]}",
            )
            for i, g in enumerate(gold)
        ]
        paths.append(
            _write(
                tmp_path / ("predictions.jsonl" if k == 0 else f"predictions.decode-{k}.jsonl"),
                rows,
            )
        )
    return paths


def test_paper_protocol_is_the_mean_and_std_over_decodes(tmp_path):
    import statistics

    from esc_dist.eval.paper_text import paper_text_metrics
    from esc_dist.eval.preference import kang_preferences
    from esc_dist.eval.strategy import confusion_counts
    from esc_dist.eval.text import text_metrics

    paths = _decodes(tmp_path)
    report = evaluate(paths, tmp_path / "rep", name="sys", protocol="paper", decoding=PAPER)
    assert report["decodes"] == 3 and report["warnings"] == [] and report["protocol"] == "paper"
    assert [f["path"] for f in report["input"]["files"]] == [str(p) for p in paths]
    paper, ours = report["protocols"]["paper"], report["protocols"]["ours"]
    assert report["headline"] == paper["headline"]
    # independent computations, decode by decode
    decodes = [load_predictions(p) for p in paths]
    bleu = [
        paper_text_metrics([x.pred_reply for x in d], [x.gold_reply for x in d])["bleu_2"]
        for d in decodes
    ]
    corpus = [
        text_metrics([x.pred_reply for x in d], [x.gold_reply for x in d])["bleu_2"]
        for d in decodes
    ]
    b_kang = [
        kang_preferences(
            confusion_counts([x.gold_strategy for x in d], [x.pred_strategy or "Others" for x in d])
        )[1]
        for d in decodes
    ]
    assert None not in b_kang
    assert paper["headline"]["bleu_2"] == pytest.approx(statistics.fmean(bleu))
    assert paper["std"]["bleu_2"] == pytest.approx(statistics.stdev(bleu))
    assert ours["headline"]["bleu_2"] == pytest.approx(statistics.fmean(corpus))
    assert paper["headline"]["B_as_others"] == pytest.approx(statistics.fmean(b_kang))
    assert paper["std"]["B_as_others"] == pytest.approx(statistics.stdev(b_kang))
    # Q is defined alike; B is not
    assert paper["headline"]["Q_as_others"] == ours["headline"]["Q_as_others"]
    assert paper["headline"]["B_as_others"] != ours["headline"]["B_as_others"]
    assert (
        "distinct_2_per_response" in ours["headline"]
        and "distinct_2_per_response" not in paper["headline"]
    )
    assert [d["paper"]["bleu_2"] for d in report["per_decode"]] == pytest.approx(bleu)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| Metric | paper protocol (headline) | our protocol |" in md
    assert "mean ± sample std over 3 decodes" in md
    cell = f"{100 * paper['headline']['bleu_2']:.2f} ± {100 * paper['std']['bleu_2']:.2f}"
    assert f"| BLEU-2 (%) | {cell} |" in md
    # the same reports compared under either protocol
    cmp_paper, md_paper = compare([tmp_path / "rep"], ["S"])
    cmp_ours, _ = compare([tmp_path / "rep"], ["S"], protocol="ours")
    assert cmp_paper["protocol"] == "paper" and cmp_ours["protocol"] == "ours"
    assert cmp_paper["systems"][0]["values"]["B"] == pytest.approx(statistics.fmean(b_kang))
    assert cmp_ours["systems"][0]["values"]["B"] == ours["headline"]["B_as_others"]
    assert cmp_paper["systems"][0]["std"]["bleu_2"] == pytest.approx(statistics.stdev(bleu))
    assert "**Paper protocol** (`paper`)" in md_paper
    # and the columns defined differently, under the other protocol too
    other = cmp_paper["other"]
    assert other["protocol"] == "ours" and other["columns"] == [
        "B",
        "bleu_2",
        "rouge_l",
        "distinct_2",
    ]
    assert other["systems"][0]["values"]["B"] == ours["headline"]["B_as_others"]
    assert other["systems"][0]["std"]["bleu_2"] == ours["std"]["bleu_2"]
    assert "## Under our protocol (`ours`)" in md_paper
    assert cmp_ours["other"]["systems"][0]["values"]["B"] == pytest.approx(statistics.fmean(b_kang))


def test_decodes_must_share_their_gold_turns(tmp_path):
    paths = _decodes(tmp_path)
    rows = [json.loads(line) for line in paths[2].read_text().splitlines()]
    rows[4]["gold_reply"] = "something else"
    _write(paths[2], rows)
    with pytest.raises(DataError, match="not a decode of the same gold turns"):
        evaluate(paths, tmp_path / "rep", protocol="paper", decoding=PAPER)
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize(
    "decoding, warning",
    [
        ({**PAPER, "do_sample": False, "decodes": 1}, "not decoded as the paper does"),
        ({**PAPER, "temperature": 1.0}, "not decoded as the paper does"),
        (None, "decoding of these predictions is unknown"),
    ],
)
def test_paper_protocol_warns_about_other_decoding(tmp_path, decoding, warning):
    report = evaluate(_decodes(tmp_path)[0], tmp_path / "rep", protocol="paper", decoding=decoding)
    assert len(report["warnings"]) == 1 and warning in report["warnings"][0]
    assert f"**Warning:** {report['warnings'][0]}" in (tmp_path / "rep" / "report.md").read_text()
    assert (
        evaluate(_decodes(tmp_path)[0], tmp_path / "rep2", protocol="ours", decoding=decoding)[
            "warnings"
        ]
        == []
    )


def test_eval_cli_takes_every_decode_the_inference_manifest_lists(tmp_path):
    from esc_dist.eval.stage import decode_files

    paths = _decodes(tmp_path)
    assert decode_files([paths[0]]) == [paths[0]]  # no manifest: the file alone
    (tmp_path / "manifest.json").write_text(
        json.dumps({"counts": {"decodes": [p.name for p in paths]}, "config": {"decoding": PAPER}})
    )
    assert decode_files([paths[0]]) == paths
    assert decode_files([paths[1]]) == [paths[1]]  # another file: as given
    report = evaluate(decode_files([paths[0]]), tmp_path / "rep")
    assert report["decoding"] == PAPER and report["decodes"] == 3


def test_error_rates_and_adherence_in_report_and_comparison(tmp_path):
    """The error rates and adherence given to evaluate reach report.json, report.md, errors.png,
    and the comparison's columns, error table and comparison_errors.png."""
    from esc_dist.config import JudgeConfig
    from esc_dist.eval.psych_errors import error_rates

    paths = _decodes(tmp_path)
    preds = load_predictions(paths[0])
    sad = [
        {"role": "seeker", "text": "I failed my exam and I feel so sad about it.", "strategy": None}
    ]
    histories = {p.id: sad for p in preds}
    offline = error_rates(preds, histories, JudgeConfig(), None, backend="offline")
    assert offline["n"] == len(preds) and offline["rates"]["Emotion Misread"] is None
    adherence = {
        "adherence": 0.25,
        "evaluated": 20,
        "skipped": 4,
        "per_strategy": {s: {"n": 3, "agree": 1, "adherence": 1 / 3} for s in STRATEGIES},
        "gold_reference": {"adherence": 0.5, "per_strategy": {}},
        "classifier": {"train_size": 100, "evaluation": {"accuracy": 0.5, "n": 24}},
    }
    for name, extra in (
        ("a", {"psych_errors": {"offline": offline}, "adherence": adherence}),
        ("b", None),
    ):
        evaluate(paths, tmp_path / name, name=name, decoding=PAPER, extra=extra)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["psych_errors"]["offline"] == offline and report["adherence"] == adherence
    assert (tmp_path / "a" / "errors.png").is_file() and not (
        tmp_path / "b" / "errors.png"
    ).exists()
    assert "errors.png" in json.loads((tmp_path / "a" / "manifest.json").read_text())["outputs"]
    md = (tmp_path / "a" / "report.md").read_text()
    assert "## Psychological errors of the replies" in md and "| Emotion Misread | not seen |" in md
    assert "## Strategy adherence of the replies" in md and "| **all** | 20 | 25.00 | 50.00 |" in md
    comparison, cmp_md = compare([tmp_path / "a", tmp_path / "b"], ["A", "B"], tmp_path / "cmp")
    a, b = comparison["systems"]
    assert a["values"]["errors_any"] == offline["any_error"] and b["values"]["errors_any"] is None
    assert a["values"]["adherence"] == 0.25 and b["values"]["adherence"] is None
    assert "Replies with an error (%)" in cmp_md and "Strategy adherence (%)" in cmp_md
    assert "## Psychological errors (% of replies; offline judge)" in cmp_md
    with Image.open(tmp_path / "cmp" / "comparison_errors.png") as im:
        assert im.format == "PNG" and np.asarray(im.convert("L")).std() > 10


# ---------------------------------------------------------------------------------------------
# W&B


def test_log_report_and_comparison_to_offline_wandb(tmp_path, fixture_preds, wandb_env):
    report = evaluate(
        fixture_preds, tmp_path / "rep", llm_scores={"empathy": 3.5, "note": "x"}, protocol="ours"
    )
    comparison, _ = compare([tmp_path / "rep"], ["Decoupled-DPO"], tmp_path / "cmp")
    log_report(None, report, tmp_path / "rep")  # no run: nothing happens
    run = start_run(Recipe(), "eval", tmp_path / "wb")
    log_report(run, report, tmp_path / "rep")
    log_comparison(run, comparison, tmp_path / "cmp")
    run.finish()
    [r] = wait_for_offline_runs(tmp_path / "wb" / "wandb")
    assert r["run"] is not None, (
        r["file"],
        r["file"].stat().st_size,
        sorted(p.name for p in r["file"].parent.iterdir()),
    )
    assert r["run"]["job_type"] == "eval"
    s = r["summary"]
    assert s["eval/Q_as_others"] == pytest.approx(449 / 1050)
    assert s["eval/B_excluded"] == pytest.approx(math.sqrt(1.5))
    assert s["eval/bleu_2"] == pytest.approx(report["headline"]["bleu_2"])
    assert s["eval/unparseable"] == 2
    assert s["eval/ours/Q_as_others"] == pytest.approx(449 / 1050)
    assert s["eval/paper/bleu_2"] == pytest.approx(
        report["protocols"]["paper"]["headline"]["bleu_2"]
    )
    assert s["eval/llm/empathy"] == 3.5 and "eval/llm/note" not in s
    assert s["compare/Decoupled-DPO/B"] == pytest.approx(math.sqrt(5 / 12))
    logged = {k: v for row in r["history"] for k, v in row.items()}
    assert logged["eval/per_strategy/_type"] == "table-file"
    assert logged["eval/per_strategy/nrows"] == 8
    assert logged["eval/confusion/_type"] == "image-file"
    assert logged["eval/preferences/_type"] == "image-file"
    assert logged["compare/systems/_type"] == "table-file"
    assert logged["compare/preferences/_type"] == "image-file"
    media = list((r["file"].parent / "files" / "media").rglob("*.png"))
    assert len(media) == 3


# ---------------------------------------------------------------------------------------------
# CLI


def _parse(argv: list[str]) -> argparse.Namespace:
    from esc_dist.cli import build_parser, split_overrides

    words, overrides = split_overrides(argv)
    args = build_parser().parse_args(words)
    args.overrides = overrides
    return args


def test_cli_eval_and_compare(tmp_path, fixture_preds, wandb_env, monkeypatch, capsys):
    args = _parse(["eval", str(fixture_preds), "--name", "dec-dpo", "run.name=cli-test"])
    assert args.overrides == ["run.name=cli-test"]
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "eval dec-dpo: 10 turns in 3 dialogues, 2 unparseable" in out
    assert "Q 42.76" in out and "B 0.6455" in out and "B 1.2247" in out
    report_dir = fixture_preds.parent / "report"
    assert (report_dir / "report.json").is_file()
    [r] = wait_for_offline_runs(report_dir / "wandb")
    assert r["run"] is not None, (
        r["file"],
        r["file"].stat().st_size,
        sorted(p.name for p in r["file"].parent.iterdir()),
    )
    assert r["run"]["job_type"] == "eval-dec-dpo" and r["run"]["group"] == "cli-test"
    assert r["summary"]["eval/Q_as_others"] == pytest.approx(449 / 1050)
    # the report directory, logged by reference (nothing uploaded)
    [art] = [a for a in r["artifacts"] if a["type"] == "report"]
    assert art["name"] == "cli-test-eval-dec-dpo"
    assert art["refs"] and all(ref.startswith(report_dir.resolve().as_uri()) for ref in art["refs"])

    # compare: trailing overrides must not be taken for report directories
    monkeypatch.delenv("WANDB_MODE")
    args = _parse(
        [
            "compare",
            str(report_dir),
            str(report_dir / "report.json"),
            "--names",
            "A, B",
            "--out",
            str(tmp_path / "cmp"),
            "wandb.mode=disabled",
        ]
    )
    assert args.func(args) == 0
    assert "| A |" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "comparison.md").is_file()
    assert not (tmp_path / "cmp" / "wandb").exists()  # disabled by the override


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "p.jsonl", "--out", "o", "a.b=1", "c.d=2"],
        ["eval", "--out", "o", "p.jsonl", "a.b=1", "c.d=2"],
        ["eval", "a.b=1", "p.jsonl", "--out", "o", "c.d=2"],
    ],
)
def test_cli_eval_positionals_around_options(argv):
    args = _parse(argv)
    assert (args.predictions, args.out, args.overrides) == (["p.jsonl"], "o", ["a.b=1", "c.d=2"])


def test_cli_compare_arguments():
    args = _parse(["compare", "r1", "r2", "--names", "A,B", "--out", "o", "x.y=1"])
    assert (args.reports, args.names, args.out, args.overrides) == (
        ["r1", "r2"],
        "A,B",
        "o",
        ["x.y=1"],
    )
    with pytest.raises(SystemExit):  # --out is required
        _parse(["compare", "r1"])


def test_cli_help_texts():
    from esc_dist.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert "Bradley-Terry" in sub.choices["eval"].description
    assert "Vanilla-SFT" in sub.choices["compare"].description
    assert "--config" in sub.choices["compare"].format_help()


def test_undefined_paper_b_shows_the_converged_fit_marked(tmp_path):
    """Under the paper protocol a constant predictor's 20-sweep B is undefined: the comparison
    shows the converged fit's B and preferences in its place, marked as such, never a blank."""
    gold = [s for s in STRATEGIES for _ in range(3)]
    constant = _system(tmp_path, "constant", ["Question"] * len(gold))
    spread_out = _system(
        tmp_path, "spread", [STRATEGIES[(i + i // 3) % 8] for i in range(len(gold))]
    )
    comparison, md = compare(
        [constant, spread_out], ["Vanilla-SFT", "Decoupled-SFT"], tmp_path / "cmp", protocol="paper"
    )
    by = {x["name"]: x for x in comparison["systems"]}
    const = by["Vanilla-SFT"]
    ours = load_report(constant)["protocols"]["ours"]["headline"]["B_as_others"]
    assert const["values"]["B"] is None  # the ranking still knows it is undefined
    assert const["B_converged"] == pytest.approx(ours) == pytest.approx(math.sqrt(7))
    assert const["preferences_fit"] == "converged"
    assert all(v is not None for v in const["preferences"].values())
    assert f"{ours:.4f} *(converged)*" in md and "Vanilla-SFT (converged fit)" in md
    spread = by["Decoupled-SFT"]
    if spread["values"]["B"] is not None:  # defined: the paper's own fit, unmarked
        assert spread["B_converged"] is None and spread["preferences_fit"] == "paper"
        assert "Decoupled-SFT (converged fit)" not in md
