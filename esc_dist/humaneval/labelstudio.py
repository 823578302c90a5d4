"""Label Studio, for teams that already run it: the study's items as Label Studio tasks with a
labelling config, and a Label Studio JSON export read back as judgments of the study.

Export (``tasks.json``, ``labeling_config.xml``): one task per item, ``data`` = {"item_id",
"context" (a list of {"role", "text"}, shown by a Paragraphs tag as a dialogue), "reply_a",
"reply_b"} -- nothing that names a system -- and five single-choice Choices controls named after
the criteria, with the values A, tie and B.

Import: the standard JSON export (a list of tasks, each with ``data`` and ``annotations``, each
annotation with ``completed_by`` and a ``result`` list of ``{"from_name", "type": "choices",
"value": {"choices": [...]}}``). Each annotation becomes the judgment of annotator
``labelstudio:<user id>``; cancelled (skipped) annotations and annotations missing a criterion
are left out and counted. Label Studio is the source of truth of these annotators: importing an
export again replaces their judgments of the same items (unchanged ones stay as they are), all
in one transaction.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

from ..errors import DataError
from ..io import atomic_write_json, atomic_write_text, load_json
from ..names import NAME_RULE, is_name
from . import CHOICES, CRITERIA, ITEMS_FILE, LABELSTUDIO_PREFIX, store
from .study import Study

STAGE = "human-eval-labelstudio"
TASKS, CONFIG = "tasks.json", "labeling_config.xml"
QUESTIONS = {
    "fluency": "Which reply is more fluent?",
    "professionalism": "Which reply is more professional?",
    "empathy": "Which reply shows more empathy?",
    "helpfulness": "Which reply is more helpful?",
    "overall": "Overall, which reply is better?",
}


def labeling_config() -> str:
    """The Label Studio labelling interface of a study (XML)."""
    lines = [
        "<View>",
        '  <Header value="The conversation so far"/>',
        '  <Paragraphs name="context" value="$context" layout="dialogue" nameKey="role" '
        'textKey="text"/>',
        '  <Header value="Reply A"/>',
        '  <Text name="reply_a" value="$reply_a"/>',
        '  <Header value="Reply B"/>',
        '  <Text name="reply_b" value="$reply_b"/>',
    ]
    for c in CRITERIA:
        lines += [
            f"  <Header value={quoteattr(QUESTIONS[c])}/>",
            f'  <Choices name="{c}" toName="reply_a" choice="single-radio" '
            'required="true" showInline="true">',
            *(f'    <Choice value="{v}"/>' for v in CHOICES),
            "  </Choices>",
        ]
    return "\n".join(lines + ["</View>", ""])


def export_tasks(directory: str | Path, out: str | Path) -> Path:
    """Write ``tasks.json`` and ``labeling_config.xml`` of the study to ``out``."""
    from ..outputs import staged_dir

    study = Study.open(directory)
    tasks = [
        {
            "data": {
                "item_id": it["item_id"],
                "context": it["context"],
                "reply_a": it["A"],
                "reply_b": it["B"],
            }
        }
        for it in study.items
    ]
    with staged_dir(out, STAGE, [study.directory / ITEMS_FILE]) as tmp:
        atomic_write_json(tmp / TASKS, tasks)
        atomic_write_text(tmp / CONFIG, labeling_config())
    return Path(out)


def _annotator(completed_by, fail) -> str:
    """``labelstudio:<id>`` of an annotation's ``completed_by`` (a user id, or an object with
    one: exports of newer versions)."""
    uid = completed_by.get("id") if isinstance(completed_by, dict) else completed_by
    if isinstance(uid, bool) or not isinstance(uid, (int, str)) or not is_name(str(uid)):
        # the id becomes an annotator name, shown in report.md: the names' character set
        raise fail(f"'completed_by' must be a user id ({NAME_RULE}), got {completed_by!r:.80}")
    return f"{LABELSTUDIO_PREFIX}{uid}"


def _choices(result, fail) -> dict[str, str]:
    """Criterion -> choice of an annotation's ``result`` (other controls are ignored)."""
    if not isinstance(result, list):
        raise fail(f"'result' must be a list, got {type(result).__name__}")
    out = {}
    for r in result:
        if not isinstance(r, dict) or r.get("from_name") not in CRITERIA:
            continue
        value = r.get("value")
        picked = value.get("choices") if isinstance(value, dict) else None
        if (
            r.get("type") != "choices"
            or not isinstance(picked, list)
            or len(picked) != 1
            or picked[0] not in CHOICES
        ):
            raise fail(
                f"{r.get('from_name')}: expected one choice of "
                f"{', '.join(CHOICES)}, got {value!r:.80}"
            )
        out[r["from_name"]] = picked[0]
    return out


def read_export(study: Study, path: Path) -> tuple[dict[tuple[str, str], dict], dict]:
    """The complete annotations of a Label Studio export, by (annotator, item id) (a later
    annotation of the same user and item wins), and the counts of those left out."""
    export = load_json(path, "Label Studio export")
    if not isinstance(export, list):
        raise DataError(path, "expected a JSON list of tasks (Label Studio's JSON export)")
    found: dict[tuple[str, str], dict] = {}
    skipped = {"cancelled": 0, "incomplete": 0}
    for t, task in enumerate(export):

        def fail(problem: str, where: str = f"task {t}") -> DataError:
            return DataError(path, f"{where}: {problem}")

        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("item_id"), str):
            raise fail("expected a task with data.item_id (exported by export-labelstudio)")
        item = study.item(data["item_id"])
        if item is None:
            raise fail(f"item {data['item_id']!r} is not an item of {study.directory}")
        if (
            data.get("reply_a", item["A"]) != item["A"]
            or data.get("reply_b", item["B"]) != item["B"]
        ):
            raise fail(
                f"the replies of {data['item_id']} differ from the study's (an export of "
                "another study?)"
            )
        annotations = task.get("annotations", [])
        if not isinstance(annotations, list):
            raise fail("'annotations' must be a list")
        for k, ann in enumerate(annotations):
            where = f"task {t} ({data['item_id']}), annotation {k}"
            if not isinstance(ann, dict):
                raise fail("expected an object", where)
            if ann.get("was_cancelled"):
                skipped["cancelled"] += 1
                continue
            name = _annotator(ann.get("completed_by"), lambda p: fail(p, where))
            choices = _choices(ann.get("result"), lambda p: fail(p, where))
            if len(choices) < len(CRITERIA):
                skipped["incomplete"] += 1
                continue
            found[(name, data["item_id"])] = {c: choices[c] for c in CRITERIA}
    return found, skipped


def import_export(directory: str | Path, export_path: str | Path) -> dict:
    """Store the annotations of a Label Studio export as judgments of the study; returns the
    counts (imported, replaced, unchanged, skipped)."""
    study = Study.open(directory)
    export_path = Path(export_path)
    found, skipped = read_export(study, export_path)
    counts = {
        "annotations": len(found),
        "new": 0,
        "replaced": 0,
        "unchanged": 0,
        "annotators": len({a for a, _ in found}),
        "skipped": skipped,
    }
    with study.connection() as conn, store.transaction(conn):
        for (name, item_id), choices in sorted(found.items()):
            store.ensure_annotator(conn, name, "labelstudio")
            before = store.item_choices(conn, name, item_id)
            if before == choices:
                counts["unchanged"] += 1
                continue
            counts["replaced" if before else "new"] += 1
            store.write_item(conn, name, item_id, choices, replace=bool(before))
    return counts
