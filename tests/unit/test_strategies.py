import pytest

from esc_dist.strategies import (
    STRATEGIES,
    normalize_strategy,
    parse_strategy,
    parse_tagged,
)


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("Question", "Question"),
        ("  question ", "Question"),
        ("QUESTIONS", "Question"),
        ("restatement  or   paraphrasing", "Restatement or Paraphrasing"),
        ("Reflection_of_feelings", "Reflection of feelings"),
        ("self disclosure", "Self-disclosure"),
        ("[Providing Suggestions]", "Providing Suggestions"),
        ("Other", "Others"),
        ("Hugging", None),
        ("Direct Guidance", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize(raw, expected):
    assert normalize_strategy(raw) == expected


def test_every_canonical_name_maps_to_itself():
    assert [normalize_strategy(s) for s in STRATEGIES] == list(STRATEGIES)


def test_parse_tagged():
    assert parse_tagged("[Question] How are you?") == ("Question", "How are you?")
    assert parse_tagged("[self-disclosure]I felt that too.") == (
        "Self-disclosure",
        "I felt that too.",
    )
    assert parse_tagged("No tag here") == (None, "No tag here")
    assert parse_tagged("[Hugs] there there") == (None, "[Hugs] there there")


def test_parse_strategy():
    assert parse_strategy("Question") == "Question"
    assert parse_strategy("[Information] some text") == "Information"
    assert parse_strategy("affirmation and reassurance\nextra") == "Affirmation and Reassurance"
    assert parse_strategy("I think a question") is None
