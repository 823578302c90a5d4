import json

import pytest

from esc_dist.data.esconv import (
    BLANK_SEEKER,
    OPENING_SEEKER,
    SEEKER,
    SUPPORTER,
    DataError,
    iter_turns,
    load_chat,
    load_esconv,
)
from tests.helpers import TEST_DATA

MALFORMED = TEST_DATA / "malformed"
EXPECTED = json.loads((MALFORMED / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_input_names_file_dialogue_and_utterance(name):
    path = MALFORMED / name
    loader = load_chat if name.startswith("chat_") else load_esconv
    with pytest.raises(DataError) as e:
        loader(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}, "), msg
    assert EXPECTED[name] in msg, msg


def test_location_attributes():
    with pytest.raises(DataError) as e:
        load_esconv(MALFORMED / "truncated.json")
    assert (e.value.dialogue, e.value.utterance) == (1, 2)


def test_paper_conventions_on_a_small_file():
    convs = load_esconv(TEST_DATA / "tiny_esconv.json")
    assert [c.dialogue_id for c in convs] == ["esconv-0000", "esconv-0001", "esconv-0002"]
    roles = [[m.role for m in c.messages] for c in convs]
    # dialogue 0: plain alternation
    assert roles[0] == [SEEKER, SUPPORTER, SEEKER, SUPPORTER]
    # dialogue 1: supporter opens -> "Hi"; two supporter utterances -> blank seeker between;
    # the trailing seeker utterance is dropped
    assert [m.text for m in convs[1].messages] == [
        OPENING_SEEKER,
        "Hi, welcome. I am here to listen.",
        "Thanks. My exams start next week.",
        "What worries you most about them?",
        BLANK_SEEKER,
        "Many students feel the same way before exams.",
    ]
    # dialogue 2: consecutive seeker utterances joined with a newline
    assert convs[2].messages[0].text == "My friend lied to me\nand I do not know what to do"
    turns = list(iter_turns(convs))
    assert [t.id for t in turns] == [
        "esconv-0000-t000",
        "esconv-0000-t001",
        "esconv-0001-t000",
        "esconv-0001-t001",
        "esconv-0001-t002",
        "esconv-0002-t000",
    ]
    assert turns[4].strategy == "Affirmation and Reassurance"
    assert [m.text for m in turns[4].history][-1] == BLANK_SEEKER


def test_jsonl_and_list_agree(tmp_path):
    records = json.loads((TEST_DATA / "tiny_esconv.json").read_text())
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    a = load_esconv(TEST_DATA / "tiny_esconv.json")
    b = load_esconv(p)
    assert [c.messages for c in a] == [c.messages for c in b]


def test_strategy_normalised_on_load(tmp_path):
    records = json.loads((TEST_DATA / "tiny_esconv.json").read_text())
    records[0]["dialog"][1]["annotation"]["strategy"] = "  questions "
    p = tmp_path / "d.json"
    p.write_text(json.dumps(records))
    assert load_esconv(p)[0].messages[1].strategy == "Question"


def test_full_corpus_counts(esconv):
    assert len(esconv) == 1300
    turns = list(iter_turns(esconv))
    # every supporter utterance is one turn (README of the data: 18,376 supporter utterances)
    assert len(turns) == 18376
    assert len({t.id for t in turns}) == len(turns)


def _norm(text):
    return " ".join(text.split())


def _key(turn):
    return (
        turn.strategy,
        _norm(turn.reply),
        [(m.role, _norm(m.text), m.strategy) for m in turn.history],
    )


@pytest.mark.parametrize(
    "split,fname,n", [("test", "ESC_sft_test.json", 1792), ("val", "ESC_sft_val.json", 1821)]
)
def test_turns_reproduce_paper_files_exactly(esconv, esconv_dir, split, fname, n):
    index = json.loads((esconv_dir / "splits" / "decoupledesc_split.json").read_text())[split]
    ours = list(iter_turns([esconv[i] for i in index]))
    theirs = list(iter_turns(load_chat(esconv_dir / "decoupledesc" / fname)))
    assert len(ours) == len(theirs) == n
    # same order, strategy, reply text and history (ESConv text is whitespace-normalised; the
    # paper's files keep some raw whitespace, so both sides are compared normalised)
    mismatches = [(a.id, b.id) for a, b in zip(ours, theirs) if _key(a) != _key(b)]
    assert mismatches == []
    # the structure of the history (roles, blank and opening messages) is identical too
    assert [[m.role for m in t.history] for t in ours] == [
        [m.role for m in t.history] for t in theirs
    ]
