"""The offline IPM judge: each rule on hand-written examples, the keep/drop logic, determinism.

All dialogue text here is written for these tests (no ESConv data).
"""

import copy
import random

import pytest

from esc_dist.config import JudgeConfig
from esc_dist.ipm.judge import EARLY_SHIFT, ERRORS, LACK_EMPATHY, TEMPLATE, judge_pairs
from esc_dist.ipm.rules import judge_pair_offline
from esc_dist.psych.lexicon import (
    acknowledges,
    content_words,
    expresses_emotion,
    strong_emotion,
)
from esc_dist.psych.rules import (
    Context,
    reply_findings,
    strategy_findings,
)


def dialogue(*texts, strategies=None):
    """History records alternating seeker/supporter, starting with the seeker."""
    out = []
    strategies = list(strategies or [])
    for i, t in enumerate(texts):
        if i % 2 == 0:
            out.append({"role": "seeker", "text": t, "strategy": None})
        else:
            s = strategies.pop(0) if strategies else "Question"
            out.append({"role": "supporter", "text": t, "strategy": s})
    return out


def rules(history, reply):
    return sorted(f.rule for f in reply_findings(history, reply))


def srules(history, strategy):
    return sorted(f.rule for f in strategy_findings(history, strategy))


# A neutral opening so that the dialogue is past the greeting phase.
OPEN = ("Hello there", "Hi, what would you like to talk about today?")


# ---------------------------------------------------------------------------------------------
# Building blocks


def test_lexicon_helpers():
    assert expresses_emotion("Honestly I feel so lonely since the move")
    assert expresses_emotion("I can't cope with this anymore")
    assert not expresses_emotion("We are repainting the kitchen on Saturday")
    assert strong_emotion("I am completely devastated")
    assert strong_emotion("I'm really worried")  # intensifier before the emotion word
    assert strong_emotion("I feel so alone")  # intensifier inside a feeling phrase
    assert strong_emotion("I'm anxious and angry")  # two hits
    assert not strong_emotion("I'm a little worried")
    assert acknowledges("That sounds really hard.")
    assert acknowledges("You seem anxious about the interview")  # emotion reflected to "you"
    assert not acknowledges("Don't be sad.")  # a dismissal is not a reflection
    assert not acknowledges("What time does the bus leave?")
    assert content_words("The dogs were barking loudly") == {"dog", "bark", "loud"}


def test_context_phases_and_freshness():
    assert Context.of(dialogue("Hi")).phase == "opening"
    body = dialogue(*OPEN, "My manager keeps moving my deadlines without telling me")
    assert Context.of(body).phase == "body"
    closing = dialogue(
        *OPEN,
        "My manager keeps moving my deadlines",
        "That sounds stressful.",
        "Thanks a lot for the chat, bye",
    )
    assert Context.of(closing).phase == "closing"
    fresh = dialogue(*OPEN, "I am so scared of the surgery tomorrow")
    assert Context.of(fresh).last_emotion and Context.of(fresh).last_strong
    # Blank filler between two supporter messages: the seeker's words were answered already.
    stale = fresh + [
        {"role": "supporter", "text": "Tell me more.", "strategy": "Question"},
        {"role": "seeker", "text": " ", "strategy": None},
    ]
    assert not Context.of(stale).last_emotion


# ---------------------------------------------------------------------------------------------
# Reply rules

SAD_EXAM = dialogue(*OPEN, "I failed my driving exam again and I feel so sad about it.")


def test_le1_dismissal():
    assert rules(SAD_EXAM, "Come on, it's not that bad, just move on.") == ["LE1"]
    assert rules(SAD_EXAM, "I'm sorry, failing the driving exam twice must be hard.") == []
    # A dismissive phrase with no emotion in sight is not this error.
    calm = dialogue(*OPEN, "We are planning a road trip along the coast next week.")
    assert "LE1" not in rules(calm, "Calm down and pack light, the coast road is long.")


def test_le2_ignored_emotion():
    grief = dialogue(*OPEN, "My old cat died yesterday and I am heartbroken.")
    assert rules(grief, "What is your favourite film?") == ["LE2"]
    assert rules(grief, "I'm so sorry about your cat.") == []  # acknowledges
    assert rules(grief, "How old was your cat?") == []  # takes up the seeker's words
    # Not when the seeker is closing the conversation ...
    bye = dialogue(
        *OPEN,
        "My old cat died yesterday",
        "That sounds painful.",
        "I still feel sad but thanks for listening, bye",
    )
    assert rules(bye, "Bye now.") == []
    # ... nor when the emotional message was already answered (blank filler after it).
    stale = grief + [
        {"role": "supporter", "text": "That is heartbreaking.", "strategy": None},
        {"role": "seeker", "text": " ", "strategy": None},
    ]
    assert "LE2" not in rules(stale, "What is your favourite film?")


def test_es1_advice_before_acknowledgement():
    job = dialogue(*OPEN, "I lost my job today and I am really anxious about money.")
    assert rules(job, "You should update your resume and apply for a new job this week.") == ["ES1"]
    # The reply acknowledges before it advises.
    assert rules(job, "I'm sorry, losing a job is scary. Maybe you could update your resume.") == []
    # An earlier supporter turn acknowledged the feeling already.
    later = dialogue(
        *OPEN,
        "I lost my job today and I am really anxious about money.",
        "That sounds really stressful, I'm sorry.",
        "Yes, I do not know what to do.",
    )
    assert rules(later, "You should update your resume and apply for a new job this week.") == []
    # Advice where no emotion was expressed is fine.
    cook = dialogue(*OPEN, "I want to learn to cook pasta for my friends.")
    assert rules(cook, "You should try a simple tomato sauce for the pasta.") == []


def test_tr1_repetition():
    h = dialogue(
        *OPEN,
        "My brother borrowed my car and crashed it.",
        "What did your brother say about the crash?",
        "He said it was not his fault.",
    )
    assert rules(h, "What did your brother say about the crash?") == ["TR1"]
    assert rules(h, "Whose fault was it according to the insurance?") == []


def test_tr2_stock_formula():
    h = dialogue(*OPEN, "My sister stopped talking to me after our argument about the wedding.")
    assert rules(h, "Everything will be fine, stay positive!") == ["TR2"]
    assert (
        rules(h, "Don't worry, a sister often comes around once the wedding argument cools down.")
        == []
    )  # personal: takes up the seeker's words
    bye = dialogue(
        *OPEN,
        "My sister stopped talking to me",
        "That must be hard.",
        "Thank you so much for listening, bye!",
    )
    assert rules(bye, "Good luck, take care!") == []  # closing formulas are fine at the close


def test_tr3_content_free_reply():
    h = dialogue(*OPEN, "My landlord raised the rent again and my roommate is moving out soon.")
    assert rules(h, "Ok.") == ["TR3"]
    assert rules(dialogue(*OPEN, "yes"), "Ok.") == []  # a short message may get a short answer


def test_tr4_perfunctory_reply():
    h = dialogue(*OPEN, "My landlord raised the rent again and my roommate is moving out soon.")
    assert rules(h, "That is good news.") == ["TR4"]  # five words, no question, no empathy
    assert rules(h, "Is the roommate moving far?") == []  # a question engages
    assert rules(h, "That sounds really hard.") == []  # an acknowledgement engages
    assert rules(h, "Rent rises hit many tenants hard, and losing a roommate doubles it.") == []
    assert rules(dialogue(*OPEN, "yes"), "That is good news.") == []  # still the opening phase


# ---------------------------------------------------------------------------------------------
# Strategy (planner) rules

STRESSED = dialogue(*OPEN, "I have been stressed about my exams.")  # emotion, not strong


def test_p_es():
    assert srules(STRESSED, "Providing Suggestions") == ["P-ES"]
    assert srules(STRESSED, "Information") == ["P-ES"]
    assert srules(STRESSED, "Reflection of feelings") == []
    acked = dialogue(
        *OPEN,
        "I have been stressed about my exams.",
        "Exams can weigh on anyone.",
        "Yes, especially the maths one.",
        strategies=["Question", "Reflection of feelings"],
    )
    assert srules(acked, "Providing Suggestions") == []


def test_p_le():
    h = dialogue(*OPEN, "I feel hopeless and devastated since the divorce.")
    assert "P-LE" in srules(h, "Information")
    assert "P-LE" in srules(h, "Others")
    assert srules(h, "Question") == []
    mild = dialogue(*OPEN, "I'm a little worried about the move.")
    assert "P-LE" not in srules(mild, "Information")  # not strong


def test_p_tr():
    h = dialogue(
        *OPEN,
        "My neighbour plays drums every night.",
        "I once had a loud neighbour.",
        "Did it stop?",
        "I moved out in the end.",
        "I cannot afford to move though.",
        strategies=["Question", "Self-disclosure", "Self-disclosure"],
    )
    assert srules(h, "Self-disclosure") == ["P-TR"]
    assert srules(h, "Question") == []
    q = dialogue(
        *OPEN,
        "My neighbour plays drums every night.",
        "When does he play?",
        "Mostly after ten.",
        "How long has this been going on?",
        "Since the summer started.",
        strategies=["Question", "Question", "Question"],
    )
    assert srules(q, "Question") == []  # asking again is exploring, not a stock move
    lonely = dialogue(*OPEN, "I feel alone since my best friend moved abroad last month.")
    assert srules(lonely, "Others") == ["P-TR"]  # small talk after expressed emotion
    assert srules(lonely, "Question") == []


# ---------------------------------------------------------------------------------------------
# Pairs: keep / drop


def pair(
    role,
    history,
    chosen,
    rejected,
    pid="d-t001#s0",
    gold="Reflection of feelings",
    sampled=None,
    sampled_reply=None,
):
    return {
        "id": pid,
        "turn_id": pid.split("#")[0],
        "role": role,
        "prompt": [{"role": "system", "content": "sys"}],
        "history": history,
        "gold_strategy": gold,
        "gold_reply": "x",
        "chosen": chosen,
        "rejected": rejected,
        "sampled_strategy": sampled if role != "generator" else gold,
        "sampled_reply": sampled_reply if role != "planner" else None,
        "parse_error": None,
    }


def test_keep_when_only_rejected_errs():
    p = pair(
        "generator",
        SAD_EXAM,
        "I'm sorry, failing the driving exam twice must be hard.",
        "Come on, it's not that bad, just move on.",
        sampled_reply="Come on, it's not that bad, just move on.",
    )
    v = judge_pair_offline(p)
    assert v == {
        "id": p["id"],
        "chosen_errors": [],
        "rejected_errors": [LACK_EMPATHY],
        "keep": True,
        "reason": v["reason"],
        "judge": "offline",
    }
    assert v["reason"].startswith("kept:") and "LE1" in v["reason"]


def test_drop_when_chosen_errs_or_rejected_is_clean():
    bad_chosen = pair(
        "generator",
        SAD_EXAM,
        "Come on, it's not that bad, just move on.",
        "What is your favourite film?",
    )
    v = judge_pair_offline(bad_chosen)
    assert not v["keep"] and v["chosen_errors"] == [LACK_EMPATHY]
    assert v["reason"].startswith("dropped: chosen")
    clean = pair(
        "generator",
        SAD_EXAM,
        "I'm sorry, that must be hard.",
        "Oh no, failing the exam again sounds upsetting.",
    )
    v = judge_pair_offline(clean)
    assert not v["keep"] and v["rejected_errors"] == [] and "no error" in v["reason"]


def test_planner_pairs():
    ok = pair(
        "planner",
        STRESSED,
        "Reflection of feelings",
        "Providing Suggestions",
        sampled="Providing Suggestions",
    )
    v = judge_pair_offline(ok)
    assert v["keep"] and v["rejected_errors"] == [EARLY_SHIFT]
    unparseable = pair("planner", STRESSED, "Reflection of feelings", "I think maybe", sampled=None)
    v = judge_pair_offline(unparseable)  # a malformed sample: kept as a rejection, not judged
    assert v["keep"] and v["rejected_errors"] == [] and "unparseable_sample" in v["reason"]
    v = judge_pair_offline(unparseable, keep_unparseable=False)
    assert not v["keep"] and v["reason"] == "unparseable_sample"
    same = pair("planner", STRESSED, "Question", "Question", gold="Question", sampled="Question")
    assert judge_pair_offline(same)["reason"] == "identical"


def test_vanilla_pairs_use_the_reply_without_tag():
    job = dialogue(*OPEN, "I lost my job today and I am really anxious about money.")
    p = pair(
        "vanilla",
        job,
        "[Reflection of feelings] Losing a job is scary, I'm sorry.",
        "[Providing Suggestions] You should look for a new job tonight.",
        sampled="Providing Suggestions",
        sampled_reply="You should look for a new job tonight.",
    )
    v = judge_pair_offline(p)
    assert v["keep"] and v["rejected_errors"] == [EARLY_SHIFT]


def test_error_names_and_order():
    assert ERRORS == ("Lack Empathy", "Early Emotion Shift", "Template Response")
    h = dialogue(
        *OPEN,
        "My cat died and I am heartbroken.",
        "Everything will be fine.",
        "I still cry every day.",
    )
    p = pair(
        "generator", h, "I'm so sorry, losing your cat hurts.", "Everything will be fine."
    )  # repeats (TR1) and ignores the emotion (LE2)
    v = judge_pair_offline(p)
    assert v["rejected_errors"] == [LACK_EMPATHY, TEMPLATE]


def test_deterministic_and_order_independent():
    pairs = [
        pair("generator", SAD_EXAM, "I'm sorry, that must be hard.", "Ok.", pid=f"d-t{i:03d}#s0")
        for i in range(3)
    ] + [
        pair(
            "planner",
            STRESSED,
            "Reflection of feelings",
            "Information",
            pid="p#s0",
            sampled="Information",
        )
    ]
    snapshot = copy.deepcopy(pairs)
    a = judge_pairs(pairs, JudgeConfig())
    b = judge_pairs(copy.deepcopy(pairs), JudgeConfig())
    shuffled = pairs[:]
    random.Random(3).shuffle(shuffled)
    c = {v["id"]: v for v in judge_pairs(shuffled, JudgeConfig())}
    assert a == b
    assert [c[v["id"]] for v in a] == a
    assert pairs == snapshot  # the input is not modified


def test_unknown_backend_and_role_are_errors():
    with pytest.raises(ValueError, match="unknown role"):
        judge_pairs([{**pair("generator", SAD_EXAM, "a", "b"), "role": "critic"}], JudgeConfig())
    cfg = JudgeConfig()
    cfg.backend = "magic"
    with pytest.raises(ValueError, match="backend"):
        judge_pairs([pair("generator", SAD_EXAM, "a", "b")], cfg)
