"""Blinded pairwise human evaluation of two systems' replies (``esc-dist human-eval``).

A *study* is a directory (documented in docs/human_eval.md)::

    study.json         criteria, seed, counts, the sha256 of items.jsonl (no system names)
    items.jsonl        the public items: item_id, context, replies "A" and "B"
    key.json           the unblinding key: item -> which system is A and which is B
    judgments.sqlite   annotators (token hashes) and their judgments

- :mod:`.build` makes a study from two predictions files (``build``);
- :mod:`.store` is the SQLite storage (one row per annotator × item × criterion);
- :mod:`.study` is the API an annotation page calls (:class:`~.study.Study`);
- :mod:`.report` unblinds and summarises (win/tie/lose, bootstrap intervals, agreement);
- :mod:`.labelstudio` exports the items to Label Studio and imports its annotations.
"""

from __future__ import annotations

# The paper's four criteria, then an overall preference; each judged as which reply is better.
CRITERIA: tuple[str, ...] = ("fluency", "professionalism", "empathy", "helpfulness", "overall")
CHOICES: tuple[str, ...] = ("A", "tie", "B")

STUDY_FILE, ITEMS_FILE, KEY_FILE, DB_FILE = (
    "study.json",
    "items.jsonl",
    "key.json",
    "judgments.sqlite",
)
STUDY_FORMAT = "esc-dist human-eval study 1"
KEY_FORMAT = "esc-dist human-eval key 1"
SYSTEMS: tuple[str, str] = ("system 1", "system 2")

# Annotators whose judgments come from a Label Studio export are named with this prefix; they
# have no token, and `add-annotator` refuses names that start with it.
LABELSTUDIO_PREFIX = "labelstudio:"


def missing_extra(what: str) -> str:
    """The one-line message for a library of the ``app`` extra that is not installed."""
    return f"{what} is not installed: pip install 'esc-dist[app]'"
