"""Hostile names, imports and files around the human evaluation and the reports: one character
set for names (checked where they enter, a trailing newline included), imported and older
values escaped in report.md, `$` never read as a formula, studies that would pair different
turns refused, and a damaged judgments database said in one line."""

from __future__ import annotations

import json
import sqlite3

import pytest

from esc_dist.cli import main
from esc_dist.errors import ConfigError, DataError
from esc_dist.humaneval.build import build_study
from esc_dist.humaneval.study import Study
from esc_dist.names import is_name, markdown_text, plot_text
from tests.unit.test_eval_report import fixture_preds, wandb_env  # noqa: F401 (fixtures)
from tests.unit.test_human_eval import ALL_A, NAME1, NAME2, _pair, _pred, _study, _write

BAD_NAMES = [
    "alice\n",
    "a\nb",
    "a\tb",
    "a b",
    "x$y$",
    "$\\alpha$",
    "a|b",
    "<b>x</b>",
    "a,b",
    "a/b",
    "",
    "-lead",
    "a" * 65,
    "é",
    "a\r",
]


def one_line_error(capsys, command: str, needle: str) -> str:
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"esc-dist {command}: error: "), err
    assert needle in lines[0], err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# One character set


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_character_set(name):
    assert not is_name(name)


@pytest.mark.parametrize("key", ["run.name", "wandb.group"])
@pytest.mark.parametrize("value", ["'a\\nb'", "'a\\tb'", "'x$y'", "'run\\n'"])
def test_recipe_names_are_checked(key, value, tmp_path, capsys):
    run = tmp_path / "run"
    # double-quoted YAML: \n and \t are the characters
    assert main(["stage", "init", f"run.output_dir={run}", f'{key}="{value[1:-1]}"']) == 2
    one_line_error(capsys, "stage", f"'{key}'")
    assert not run.exists()


def test_a_tag_with_a_newline_is_refused(tmp_path, capsys):
    assert (
        main(
            [
                "stage",
                "init",
                f"run.output_dir={tmp_path / 'run'}",
                'wandb.tags=["ok", "two\\nlines"]',
            ]
        )
        == 2
    )
    one_line_error(capsys, "stage", "'wandb.tags' entry")


def test_the_job_plan_stays_one_line_per_job(tmp_path, capsys):
    assert (
        main(
            [
                "stage",
                "jobs",
                f"run.output_dir={tmp_path / 'run'}",
                'run.name="x\\tfake\\nprepare\\tevil"',
            ]
        )
        == 2
    )
    one_line_error(capsys, "stage", "'run.name'")


@pytest.mark.parametrize("name", ["alice\n", "alice ", "al$ce", "labelstudio:1"])
def test_annotator_names(name, tmp_path, capsys):
    study = _study(tmp_path, 2)
    assert main(["human-eval", "add-annotator", str(study), name]) == 2
    one_line_error(capsys, "human-eval", "annotator name")
    assert Study.open(study).annotators() == []


@pytest.mark.parametrize("names", ["a$b,c", "a\nb,c", "a|b,c", "a,<i>c</i>"])
def test_system_names_of_a_study(names, tmp_path, capsys):
    a, b = _pair(tmp_path, 2)
    assert (
        main(
            ["human-eval", "build", str(a), str(b), "--names", names, "--out", str(tmp_path / "s")]
        )
        == 2
    )
    one_line_error(capsys, "human-eval", "system name")
    assert not (tmp_path / "s").exists()


def test_eval_and_compare_names(tmp_path, fixture_preds, wandb_env, capsys):  # noqa: F811
    assert main(["eval", str(fixture_preds), "--name", "$x^2$", "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, "eval", "--name")
    assert not (tmp_path / "r").exists()
    assert main(["eval", str(fixture_preds), "--name", "dec", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert (
        main(["compare", str(tmp_path / "r"), "--names", "$a$", "--out", str(tmp_path / "c")]) == 2
    )
    one_line_error(capsys, "compare", "system name")
    from esc_dist.eval.plots import plot_preferences  # a chart reads `$` as text, not a formula

    plot_preferences({"$\\frac{1}{$": [1.0] * 8}, tmp_path / "p.png", "a $ b $")
    assert (tmp_path / "p.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# Escaped on the way out


def test_markdown_and_plot_text():
    assert markdown_text("Zephyr-DPO") == "Zephyr-DPO"
    hostile = "x | y\n| forged | row |\n<script>alert(1)</script> [l](http://e)"
    out = markdown_text(hostile)
    assert "\n" not in out and "<" not in out and "| " not in out.replace("\\| ", "")
    assert plot_text("a $b$") == "a \\$b\\$"


def test_imported_and_older_names_are_escaped_in_the_report(tmp_path, capsys):
    study = _study(tmp_path, 4)
    # a key and a database of an older version, whose names were not checked
    key = json.loads((study / "key.json").read_text())
    evil1, evil2 = "$\\sqrt{x}$ | forged", "<img src=x onerror=alert(1)>\n| row |"
    swap = {NAME1: evil1, NAME2: evil2}
    key["systems"] = {k: swap[v] for k, v in key["systems"].items()}
    for side in key["items"].values():
        side["A"], side["B"] = swap[side["A"]], swap[side["B"]]
    (study / "key.json").write_text(json.dumps(key))
    with sqlite3.connect(study / "judgments.sqlite") as conn:
        conn.execute(
            "INSERT INTO annotators VALUES (?, NULL, NULL, 'labelstudio', 'x')",
            ("labelstudio:1\n| forged | 1 | 2 |",),
        )
        conn.executemany(
            "INSERT INTO judgments VALUES (?, ?, ?, ?, 'x')",
            [("labelstudio:1\n| forged | 1 | 2 |", "item-0001", c, "A") for c in ALL_A],
        )
    assert main(["human-eval", "report", str(study), "--bootstrap", "10"]) == 0
    md = (study / "report" / "report.md").read_text()
    table = [x for x in md.splitlines() if x.startswith("|")]
    assert len(table) == 2 + len(ALL_A)  # header, rule, one row per criterion: none forged
    assert "<img" not in md and "forged |" not in md.replace("\\|", "")
    assert (study / "report" / "win_tie_lose.png").stat().st_size > 0


@pytest.mark.parametrize("completed_by", ["1\n| forged |", "<b>x</b>", {"id": "a b"}, "$x$"])
def test_labelstudio_user_ids_are_names(completed_by, tmp_path, capsys):
    study = _study(tmp_path, 2)
    item = Study.open(study).items[0]
    export = [
        {
            "data": {"item_id": item["item_id"], "reply_a": item["A"], "reply_b": item["B"]},
            "annotations": [
                {
                    "completed_by": completed_by,
                    "result": [
                        {"from_name": c, "type": "choices", "value": {"choices": ["A"]}}
                        for c in ALL_A
                    ],
                }
            ],
        }
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export))
    assert main(["human-eval", "import-labelstudio", str(study), str(path)]) == 2
    one_line_error(capsys, "human-eval", "'completed_by' must be a user id")
    assert Study.open(study).judgments() == []


# ---------------------------------------------------------------------------------------------
# A study pairs replies to the same turns


@pytest.mark.parametrize(
    "field,value",
    [
        ("turn_index", 7),
        ("gold_reply", "Something else."),
        ("dialogue_id", "esconv-9999"),
        ("history", [{"role": "seeker", "text": "Other."}]),
    ],
)
def test_paired_records_must_be_the_same_turn(field, value, tmp_path, capsys):
    a = _write(tmp_path / "a.jsonl", [_pred(i, f"first {i}") for i in range(4)])
    rows = [_pred(i, f"second {i}") for i in range(4)]
    rows[2][field] = value
    b = _write(tmp_path / "b.jsonl", rows)
    with pytest.raises(
        DataError,
        match=rf"1 id\(s\) name another turn.*{rows[2]['id']} "
        rf"\({field}\)",
    ):
        build_study(a, b, "x,y", tmp_path / "s")
    assert (
        main(
            ["human-eval", "build", str(a), str(b), "--names", "x,y", "--out", str(tmp_path / "s")]
        )
        == 2
    )
    one_line_error(capsys, "human-eval", f"({field})")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------
# A damaged database


@pytest.mark.parametrize(
    "damage",
    [
        "DROP TABLE judgments",
        "ALTER TABLE annotators RENAME TO people",
        "DROP TABLE annotators",
        "ALTER TABLE judgments RENAME COLUMN choice TO pick",
    ],
)
def test_a_damaged_table_is_one_line(damage, tmp_path, capsys):
    study = _study(tmp_path, 2)
    token = Study.open(study).add_annotator("alice")
    s = Study.open(study)
    s.submit("alice", s.next_item("alice")["item_id"], ALL_A)
    with sqlite3.connect(study / "judgments.sqlite") as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute(damage)
    for argv in (["report", str(study), "--bootstrap", "10"], ["add-annotator", str(study), "bob"]):
        assert main(["human-eval", *argv]) == 2
        one_line_error(capsys, "human-eval", "judgments database cannot be used")
    with pytest.raises(DataError):
        s.authenticate(token) if "annotators" in damage else s.judgments()


def test_a_name_with_a_line_break_keeps_the_error_on_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError):
        Study.open(_study(tmp_path, 2)).add_annotator("a\nb")
    a = _write(tmp_path / "a.jsonl", [_pred(i, "x") for i in range(2)])
    rows = [_pred(i, "y") for i in range(2)]
    rows[0]["id"] = "line\nbreak"
    b = _write(tmp_path / "b.jsonl", rows)
    assert (
        main(
            ["human-eval", "build", str(a), str(b), "--names", "x,y", "--out", str(tmp_path / "s2")]
        )
        == 2
    )
    one_line_error(capsys, "human-eval", "line\\nbreak")


# ---------------------------------------------------------------------------------------------
# Three gaps of the command line


def test_an_empty_pairs_file_is_not_judged(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    for content in ("", "\n\n"):
        pairs.write_text(content)
        assert (
            main(
                [
                    "judge",
                    "--role",
                    "generator",
                    "--pairs",
                    str(pairs),
                    "--out",
                    str(tmp_path / "out"),
                    "wandb.mode=disabled",
                ]
            )
            == 2
        )
        one_line_error(capsys, "judge", f"{pairs}: no pairs to judge")
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad_line", [1, 2, 7, 300])
def test_a_bad_byte_is_told_at_its_line(bad_line, tmp_path, capsys):
    rows = [json.dumps(_pred(i, f"reply {i}")) + "\n" for i in range(400)]
    a = _write(tmp_path / "a.jsonl", [_pred(i, "x") for i in range(400)])
    data = "".join(rows).encode()
    lines = data.split(b"\n")
    lines[bad_line - 1] = lines[bad_line - 1].replace(b"reply", b"r\xe9ply")  # latin-1
    b = tmp_path / "b.jsonl"
    b.write_bytes(b"\n".join(lines))
    assert (
        main(
            ["human-eval", "build", str(a), str(b), "--names", "x,y", "--out", str(tmp_path / "s")]
        )
        == 2
    )
    one_line_error(capsys, "human-eval", f"{b}, line {bad_line}: not UTF-8 text")


def test_a_bad_byte_in_a_json_file_is_told_at_its_line(tmp_path, capsys):
    from esc_dist.io import read_text

    path = tmp_path / "split.json"
    path.write_bytes(b'{\n  "train": [0],\n  "description": "caf\xe9"\n}\n')
    with pytest.raises(DataError, match="not UTF-8 text at line 3, byte"):
        read_text(path)


def test_the_pipelines_own_system_titles_are_names():
    """The pipeline passes these to `compare --names`: each must pass the name check."""
    from esc_dist.constants import SYSTEM_TITLES
    from esc_dist.names import is_name

    assert all(is_name(t) for t in SYSTEM_TITLES.values()), SYSTEM_TITLES
