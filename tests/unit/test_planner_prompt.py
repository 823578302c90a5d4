"""The paper's planner prompt (data.planner_prompt: transcript): rendered exactly, prepared and
rebuilt the same way by every stage, and fitted to a budget by dropping its oldest lines."""

from __future__ import annotations

from datasets import load_from_disk

from esc_dist.config import DataConfig
from esc_dist.data import transcript
from esc_dist.data.esconv import Message
from esc_dist.data.fitting import HistoryFitter
from esc_dist.data.tasks import PLANNER_TRANSCRIPT_SYSTEM, planner_prompt, prepare
from esc_dist.strategies import STRATEGIES

HISTORY = [
    Message("seeker", "Hi"),
    Message("supporter", "Hello, how are you today?", "Question"),
    Message("seeker", "Not great.\nI lost my job on Friday."),
    Message("supporter", "I'm so sorry to hear that.", "Reflection of feelings"),
    Message("seeker", " "),  # the blank seeker message between two supporter turns
    Message("supporter", "That must have been a shock.", "Reflection of feelings"),
    Message("seeker", "It was. I don't know what to do now."),
]


def test_transcript_prompt_renders_a_known_dialogue_exactly():
    prompt = planner_prompt(HISTORY, None, True, "transcript")
    assert prompt == [
        {"role": "system", "content": PLANNER_TRANSCRIPT_SYSTEM},
        {
            "role": "user",
            "content": "seeker: Hi\n"
            "supporter: Hello, how are you today?\n"
            "seeker: Not great.\nI lost my job on Friday.\n"
            "supporter: I'm so sorry to hear that.\n"
            "seeker:  \n"
            "supporter: That must have been a shock.\n"
            "seeker: It was. I don't know what to do now.\n",
        },
    ]
    # the system message lists the eight strategies; no strategy tag reaches the transcript,
    # whatever history_strategy_tags says
    assert all(s in PLANNER_TRANSCRIPT_SYSTEM for s in STRATEGIES)
    assert planner_prompt(HISTORY, None, False, "transcript") == prompt
    assert "[" not in prompt[1]["content"]
    # max_history keeps the last messages, as for chat prompts
    assert planner_prompt(HISTORY, 3, True, "transcript")[1]["content"] == (
        "seeker:  \nsupporter: That must have been a shock.\n"
        "seeker: It was. I don't know what to do now.\n"
    )


def test_segments_give_the_text_back_and_one_line_per_message():
    text = transcript.render(HISTORY)
    parts = transcript.segments(text)
    assert "".join(parts) == text
    assert len(parts) == len(HISTORY)  # the seeker's two-line message stays one segment
    assert parts[2] == "seeker: Not great.\nI lost my job on Friday.\n"


class WordTokenizer:
    """One token per whitespace-separated word (the fitter only counts tokens)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}


def words(prompt: list[dict]) -> int:
    return sum(len(m["content"].split()) for m in prompt)


def test_fitting_drops_the_oldest_lines_and_keeps_a_seeker_line_first():
    prompt = planner_prompt(HISTORY, None, True, "transcript")
    fitter = HistoryFitter(WordTokenizer(), 10_000)
    full = words(prompt)

    for budget in range(words(fitter.shortest(prompt)), full + 1):
        fitted = fitter.fit(prompt, 0, lambda kept: kept if words(kept) <= budget else None)
        kept, _, dropped = fitted
        assert kept[0] == prompt[0] and len(kept) == 2
        text = kept[1]["content"]
        assert prompt[1]["content"].endswith(text) and text.startswith("seeker: ")
        # the longest suffix starting at a seeker line that fits: one more seeker line would not
        lines = transcript.segments(prompt[1]["content"])
        assert "".join(lines[dropped:]) == text
        longer = [k for k in range(dropped) if lines[k].startswith("seeker: ")]
        if longer:
            assert words(prompt[:1]) + len("".join(lines[longer[-1] :]).split()) > budget
    # the shortest keeps only the last seeker line
    assert fitter.shortest(prompt)[1]["content"] == "seeker: It was. I don't know what to do now.\n"


def test_a_window_starting_with_the_supporter_is_kept_whole_when_it_fits():
    """The last N messages may start with a supporter message: kept as they are when they fit
    (training sees what inference sees), cut at a seeker line when they do not; chat prompts
    alike."""
    from esc_dist.data.tasks import _history_messages

    fitter = HistoryFitter(WordTokenizer(), 10_000)
    window = planner_prompt(HISTORY, 4, True, "transcript")
    chat = planner_prompt(HISTORY, 4, False, "chat")
    assert window[1]["content"].startswith("supporter: ")
    assert chat[1]["role"] == "assistant" and chat[1:] == _history_messages(HISTORY, False, 4)
    for prompt in (window, chat):
        kept, _, dropped = fitter.fit(prompt, 0, lambda kept: kept)
        assert (kept, dropped) == (prompt, 0)
        tight = words(prompt) - 1
        kept, _, dropped = fitter.fit(
            prompt, 0, lambda kept: kept if words(kept) <= tight else None
        )
        assert dropped == 1
        first = kept[1]["content"] if prompt is window else kept[1]["role"]
        assert first.startswith("seeker: ") if prompt is window else first == "user"


def test_prepared_transcripts_are_rebuilt_by_inference(tmp_path, esconv_dir):
    """Prepared planner data in transcript form: the manifest records it, and inference (which
    reads it from there) builds the very same prompts from the turns."""
    from esc_dist.data.tasks import prompt_settings_of
    from esc_dist.infer import planner_items

    cfg = DataConfig(
        esconv=str(esconv_dir / "esconv.json"),
        split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
        max_dialogues={"train": 2, "validation": 1, "test": 2},
        max_history_messages=None,
        planner_prompt="transcript",
    )
    prepare(cfg, tmp_path / "data")
    assert prompt_settings_of(tmp_path / "data").planner_form == "transcript"
    planner = load_from_disk(str(tmp_path / "data" / "planner"))["test"]
    turns = load_from_disk(str(tmp_path / "data" / "turns"))["test"]
    assert all(len(p) == 2 and p[1]["content"].startswith("seeker: ") for p in planner["prompt"])
    rebuilt = planner_items(turns, None, None, False, 0, "transcript")
    assert [it.messages for it in rebuilt] == planner["prompt"]
    # the other tasks keep their chat prompts
    vanilla = load_from_disk(str(tmp_path / "data" / "vanilla"))["test"]
    assert len(vanilla[5]["prompt"]) > 2
