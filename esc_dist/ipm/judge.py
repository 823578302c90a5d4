"""The IPM judge: keep a mined pair only when the chosen side is free of psychological errors and
the rejected side shows at least one.

The three errors (names exact, as they appear in verdicts and statistics):

* **Lack Empathy** -- the reply (or the chosen strategy) passes over the feelings the help-seeker
  has just expressed, or brushes them aside.
* **Early Emotion Shift** -- the reply (or strategy) moves to advice, solutions or information
  before the seeker's feelings have been acknowledged or explored.
* **Template Response** -- a generic, unpersonalised reply that could be said to anyone, or a
  repetition of what the supporter already said.

Two backends share one interface, :func:`judge_pairs`: ``offline`` (the default; deterministic
rules, below) and ``openai`` (an LLM behind any OpenAI-compatible endpoint, through
:mod:`esc_dist.llm_client`). A verdict is ``{"id", "chosen_errors", "rejected_errors", "keep",
"reason", "judge"}`` with ``keep`` true exactly when ``chosen_errors`` is empty and
``rejected_errors`` is not.

Offline rules
-------------
Text is lower-cased, curly quotes straightened, and split into word tokens. *Content words* are
tokens of three or more letters outside a stop-word list, reduced by a crude suffix stemmer
(-ing, -ed, -es, -ly, -s). Everything below is read from the dialogue history and the candidate
only; the lexicons are the regular expressions ``_EMOTION_WORD``, ``_STRONG_WORD``, ``_ACK``,
``_DISMISS``, ``_ADVICE``, ``_TEMPLATE`` and ``_BACKCHANNEL`` of this module.

Context:

* *seeker messages*: the seeker's messages without the blank filler " " that separates two
  supporter messages. The *last seeker message* is the latest of them, the *recent seeker text*
  the latest two. The seeker's words are *fresh* when the history ends with a non-blank seeker
  message (after a filler, the supporter has already answered them).
* *emotion*: a text expresses emotion when it contains a negative-emotion word (sad, depressed,
  anxious, stressed, lonely, angry, upset, hurt, scared, worried, frustrated, hopeless,
  overwhelmed, heartbroken, guilty, ashamed, exhausted, lost, tired, ...), a feeling phrase
  ("feel(ing) (so) down/low/bad/empty/alone/lost/stuck/useless", "fed up", "sick of", "can't
  take/handle/cope", "give up") or a painful event (broke up, divorce, passed away, died, cheated
  on, laid off, got fired). The emotion is *strong* with two or more hits, an intensifier (so,
  very, really, extremely, totally, deeply, too, ...) before or inside a hit, or a word of the
  strong list (devastated, hopeless, suicidal, miserable, depressed, panic, heartbroken,
  worthless, desperate, terrified, overwhelmed, furious, can't take/handle/cope).
* *acknowledgement* (of any supporter text): an empathy or exploration marker -- "sorry", "oh
  no", "poor you", "that's/that sounds/that must be/it seems (so) hard/tough/painful/unfair/
  scary/...", "(can/must/would) be (so) hard/overwhelming/...", "sounds like", "it seems (like)
  you", "I (can) understand/imagine", "I hear you", "I can see why/how", "I know how hard",
  "I've been there", "I feel for you", "my heart goes out", "you must feel", "you're feeling",
  "you feel", "your feelings", "how do you feel", "how does that make you feel",
  "understandable", "makes sense", "valid", "normal/natural/okay to feel", "I'm here for you" --
  or an emotion word in a text that addresses "you/your", unless the emotion word sits in a
  dismissal ("don't be sad").
* *acknowledged*: some supporter message after the first seeker message with emotion
  acknowledges, or is annotated Reflection of feelings.
* *phase*: ``opening`` while the seeker has said fewer than four content words in all, or the
  last seeker message opens with a greeting and has fewer than four content words; else
  ``closing`` when the last seeker message thanks or says goodbye; else ``body``.
* *advice*: a suggestion or information marker -- "you should/could/need to/have to/must/ought
  to", "you might/may want to", "try to/and/-ing ..." (not "I try"/"we try"), "have you tried/
  considered/thought about", "why don't you", "why not", "I (would) suggest/recommend/advise",
  "my advice", "maybe/perhaps you", "it might/may/could/would help/be good/be a good idea", "good
  idea", "how about", "consider", "make sure you/to", "look into", "reach out", "talk to a/your/
  someone", "see a therapist/counselor/doctor/professional", "research/studies show", "according
  to", "it is important to", "if I were you".

Rules for a reply (generator pairs; vanilla pairs after removing the "[Strategy]" tag):

* **LE1 dismissal** -> Lack Empathy: the recent seeker text expresses emotion and the reply
  minimises it: "get over it", "(no|not a) big deal", "calm down", "it's not that bad", "stop
  worrying/crying/being ...", "you shouldn't feel/be", "don't be/feel (so) sad/upset/...", "just
  forget/ignore/move on/let it go/relax", "move on", "it could be worse", "others have it worse",
  "cheer up", "snap out of", "overreact...", "too sensitive", "toughen/man up", "look on the
  bright side", "at least you".
* **LE2 ignored emotion** -> Lack Empathy (unless LE1 fired): the seeker's fresh last message
  expresses emotion, the phase is not closing, and the reply neither acknowledges nor shares a
  content word with that message -- it passes over the feeling and the words alike.
* **ES1 advice before acknowledgement** -> Early Emotion Shift: the reply gives advice, some
  seeker message expressed emotion, the emotion is not acknowledged in the history, and the reply
  does not acknowledge it either before its first advice marker.
* **TR1 repetition** -> Template Response (any phase): the reply repeats an earlier supporter
  message -- the same normalised text (two or more words), or a Jaccard similarity of their
  content-word sets of at least 0.7 (both with three or more content words).
* **TR2 stock formula** -> Template Response (body phase, unless TR1 fired): the reply contains a
  generic formula ("everything will be fine", "everything happens for a reason", "things will
  get better", "stay positive/strong/calm/safe", "don't worry", "cheer up", "time heals", "you
  are not alone", "I understand/know how you feel", "I'm here to help/for you", "how can I help",
  "is there anything else", "hope this helps", "good luck", "take care", "have a nice day",
  "you'll be fine", "you can do it", "you've got this", "hang in there", "keep your head up",
  "thank you for sharing", "it is what it is", "life goes on", "I'm sure it will ..."), has at
  most three content words outside its formulas, and shares no content word with the recent
  seeker text.
* **TR3 empty reply** -> Template Response (body phase, unless TR1 or TR2 fired): right after a
  fresh seeker message with at least three content words, the reply has no content word once
  backchannels ("I see", "ok", "yes", "great", "I understand", ...) are removed: "Why?", "Ok.",
  "Hello", "I see.".
* **TR4 perfunctory reply** -> Template Response (body phase, unless TR1-TR3 fired): a reply of
  at most five words that is neither a question nor an acknowledgement ("That's good.", "Yes I
  did.", "Okay, I see that."): a token answer that could follow almost any message. (Added after
  measuring the judge on FailedESConv: it flags about 2% of ESConv gold turns and 9% of the
  turns of failed conversations; see ``benchmarks/judge_validity.py``.)

Rules for a strategy (planner pairs), judged as the next move in the context:

* **P-ES** -> Early Emotion Shift: Providing Suggestions or Information while some seeker message
  expressed emotion that is not acknowledged in the history.
* **P-LE** -> Lack Empathy: the seeker's fresh last message expresses *strong* emotion and the
  strategy is Information, Providing Suggestions or Others (none attends to the feeling).
* **P-TR** -> Template Response (body phase): the strategy, other than Question, is the same as
  that of each of the previous two supporter messages (a third identical move in a row: a stock
  pattern rather than a response to what the seeker just said); or Others right after a fresh
  seeker message with emotion.

A pair whose rejected side cannot be judged is settled without judging: a planner sample that is
not a strategy name at all is *kept* (reason ``unparseable_sample``: the gold strategy against a
malformed answer is a sound preference whatever the judge would say; ``judge.keep_unparseable:
false`` drops them instead), and a rejected side identical to the chosen one is dropped
("identical").
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..config import JudgeConfig
from ..constants import ROLES
from ..data.esconv import SEEKER, SUPPORTER, Message
from ..log import get_logger
from ..strategies import DESCRIPTIONS, normalize_strategy, parse_tagged

log = get_logger(__name__)

LACK_EMPATHY = "Lack Empathy"
EARLY_SHIFT = "Early Emotion Shift"
TEMPLATE = "Template Response"
ERRORS: tuple[str, ...] = (LACK_EMPATHY, EARLY_SHIFT, TEMPLATE)

PROMPT_VERSION = "ipm-judge-v1"
# Bump when an offline rule changes: outputs judged by other rules are then judged again.
OFFLINE_RULES_VERSION = "offline-rules-v2"


@dataclass(frozen=True)
class Finding:
    """One rule that fired: the error it shows, the rule id and a short explanation."""

    error: str
    rule: str
    detail: str


# ---------------------------------------------------------------------------------------------
# Text helpers

_STOP = frozenset("""
a about above after again against all also am an and any are aren as at be because been before
being below between both but by can cannot could couldn did didn do does doesn doing don down
during each even ever every few for from further get gets got had hadn has hasn have haven having
he her here hers herself him himself his how however i if in into is isn it its itself just let
like ll me more most much must my myself no nor not now of off on once one only or other our ours
ourselves out over own quite re really same she should shouldn so some something still such than
that the their theirs them themselves then there these they thing things this those through to
too under until up upon us ve very was wasn way we well were weren what when where which while
who whom why will with won would wouldn yeah yes yet you your yours yourself yourselves okay ok
oh hi hello hey thanks thank lot lots maybe sure always never going gonna want wanna know think
feel feeling felt im ive dont didnt cant wont thats its youre
""".split())

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?")


def _norm(text: str) -> str:
    return (text or "").replace("\u2019", "'").replace("\u2018", "'").lower()


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(_norm(text))


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "ly", "s"):
        if len(word) - len(suffix) >= 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """Stems of the content words of ``text`` (see the module docstring)."""
    out = set()
    for t in _tokens(text):
        t = t.split("'", 1)[0]
        if len(t) >= 3 and t not in _STOP:
            out.add(_stem(t))
    return out


def _rx(*patterns: str) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns))


_EMOTION_WORD = _rx(
    r"\b(?:sad|sadden\w*|sadness|unhappy|depress\w*|anxi\w*|stress\w*|lonel\w*|isolat\w*|angry|"
    r"anger\w*|mad|upset\w*|hurt\w*|scared|scary|afraid|fear\w*|frighten\w*|terrif\w*|worr\w*|"
    r"nervous\w*|panic\w*|frustrat\w*|hopeless\w*|helpless\w*|worthless\w*|overwhelm\w*|"
    r"miserabl\w*|heartbr\w*|cry|cried|crying|cries|tears|devastat\w*|guilt\w*|asham\w*|shame\w*|"
    r"embarrass\w*|grief|griev\w*|mourn\w*|exhaust\w*|desperat\w*|disappoint\w*|betray\w*|"
    r"jealous\w*|insecur\w*|rejected|awful|terribl\w*|horribl\w*|struggl\w*|confus\w*|annoy\w*|"
    r"irritat\w*|resent\w*|bitter\w*|regret\w*|heartache|pain|painful|suffer\w*|trauma\w*|"
    r"distress\w*|broken|crushed|numb|dread\w*|uneasy|troubled|concerned|hate|hated|hates|"
    r"furious|lost|tired|drained|burnt|burned|suicid\w*|fed up|sick of)\b",
    r"\bfeel(?:s|ing)?\s+(?:so\s+|really\s+|very\s+|kind of\s+|a bit\s+|pretty\s+)?"
    r"(?:down|low|bad|empty|alone|lost|stuck|trapped|useless|like a failure)\b",
    r"\bcan'?t (?:take|handle|cope|deal)\b",
    r"\b(?:broke|break|breaking) up\b|\bbreakup\b|\bdivorc\w*|\bpassed away\b|\bdied\b|"
    r"\bcheat(?:ed|ing) on\b|\blaid off\b|\bgot fired\b",
    r"\b(?:give|giving|gave) up\b",
)
_STRONG_WORD = re.compile(
    r"\b(?:devastat\w*|hopeless\w*|suicid\w*|miserabl\w*|depress\w*|panic\w*|heartbr\w*|"
    r"worthless\w*|desperat\w*|terrif\w*|overwhelm\w*|furious|can'?t (?:take|handle|cope))")
_INTENSIFIER_WORD = re.compile(r"\b(?:so|very|really|extremely|incredibly|totally|completely|"
                               r"super|deeply|terribly|quite|truly|too)\b")
_INTENSIFIER = re.compile(r"\b(?:so|very|really|extremely|incredibly|totally|completely|super|"
                          r"deeply|terribly|quite|truly|too)\s+(?:\w+\s+)?$")

_ACK = _rx(
    r"\bsorry\b",
    r"\b(?:that|this|it|which)(?:'s| is| was| sounds| seems| must be| must have been| can be)"
    r"(?: like)?(?: a)?(?: really| so| very| quite| incredibly| extremely| pretty| such| a bit)?"
    r" (?:hard|tough|difficult|rough|painful|frustrating|stressful|scary|upsetting|sad|"
    r"overwhelming|awful|terrible|heartbreaking|challenging|exhausting|lonely|confusing|"
    r"devastating|horrible|unfair|cruel|mean|harsh|unfortunate|traumatic|worrying|concerning|"
    r"a lot|hard time|difficult time|tough time|tough situation|difficult situation|"
    r"hard situation)\b",
    r"\bi know how (?:hard|tough|difficult|painful|frustrating|scary|stressful|lonely|sad)\b",
    r"\bi(?:'ve| have) been (?:there|through|in (?:a similar|the same|your|that|this))\b",
    r"\b(?:i )?feel (?:for you|you)\b", r"\bmy heart goes out\b", r"\bpoor (?:you|thing)\b",
    r"\boh no\b",
    r"\bsounds? like\b", r"\bit seems(?: like| as if| that)? you\b", r"\bseems like you\b",
    r"\bi (?:can |do |totally |completely |really )?(?:understand|imagine)\b",
    r"\bi hear you\b", r"\bi can see (?:why|how|that|you)\b",
    r"\bi know (?:how|what) (?:that|it|this|you)\b",
    r"\byou (?:must|might|may) (?:feel|be feeling|have felt|be)\b",
    r"\byou(?:'re| are) feeling\b", r"\byou feel\b", r"\byou felt\b",
    r"\bhow (?:are|do|did|have) you (?:been )?feel", r"\bhow (?:does|did|is) (?:that|it|this) "
    r"(?:make|made|making) you feel\b", r"\byour feelings?\b",
    r"\b(?:understandable|makes sense|make sense|valid)\b",
    r"\b(?:normal|natural|okay|ok|alright|fine) to feel\b",
    r"\bi'?m here (?:for you|to listen)\b", r"\bi am here (?:for you|to listen)\b",
    r"\b(?:must|can|could|would) be (?:quite |so |really |very |incredibly |extremely |pretty |"
    r"a bit )?(?:hard|tough|difficult|painful|frustrating|scary|stressful|exhausting|"
    r"overwhelming|upsetting|lonely|heartbreaking|confusing)\b",
)
_DISMISS = _rx(
    r"\bget over (?:it|him|her|them)\b", r"\b(?:no|not a|not such a) big deal\b",
    r"\bcalm down\b", r"\b(?:it|that|this)(?:'s| is) not (?:that|so) bad\b",
    r"\b(?:stop|quit) (?:worrying|crying|complaining|being|thinking about|stressing)\b",
    r"\byou shouldn'?t (?:feel|be)\b", r"\byou should not (?:feel|be)\b",
    r"\b(?:don'?t|do not) (?:be|feel) (?:so |too )?(?:sad|upset|angry|down|depressed|stressed|"
    r"anxious|worried|bad|like that|mad|scared)\b",
    r"\bjust (?:forget|ignore|move on|let it go|relax|get over)\b", r"\bmove on\b",
    r"\b(?:it|things) could (?:be|have been) worse\b",
    r"\b(?:others|other people|some people|many people) have it worse\b",
    r"\bcheer up\b", r"\bsnap out of\b", r"\boverreact\w*", r"\btoo sensitive\b",
    r"\b(?:toughen|man) up\b", r"\blook on the bright side\b", r"\bat least you\b",
)
_ADVICE = _rx(
    r"\byou (?:should|could|need to|have to|must|ought to|gotta)\b",
    r"\byou (?:might|may) (?:want|wish|like) to\b",
    r"(?<!\bi )(?<!i'll )(?<!\bwe )\btry (?:to|and|out|some|something|a|an|the|\w+ing)\b",
    r"\bhave you (?:tried|considered|thought about|thought of|looked into)\b",
    r"\bwhy (?:don'?t|not)\b", r"\bi(?: would|'d)? (?:suggest|recommend|advise)\b",
    r"\bmy (?:advice|suggestion|recommendation)\b", r"\b(?:maybe|perhaps) you\b",
    r"\b(?:it|that|this) (?:might|may|could|would|will|can) (?:help|be (?:good|helpful|useful|"
    r"a good idea|worth|beneficial))\b", r"\bgood idea\b", r"\bhow about\b", r"\bconsider\w*\b",
    r"\bmake sure (?:you|to)\b", r"\blook into\b", r"\breach out\b",
    r"\b(?:talk|speak|talking|speaking) (?:to|with) (?:a|an|your|someone|somebody)\b",
    r"\b(?:see|contact|call|visit|seeing|contacting) (?:a|an|your) (?:therapist|counsel\w*|"
    r"doctor|professional|psychologist|psychiatrist)\b",
    r"\b(?:research|studies|study) (?:shows?|says?|suggests?|found)\b", r"\baccording to\b",
    r"\b(?:it'?s|it is) important to\b", r"\bif i were you\b",
)
_TEMPLATE = _rx(
    r"\beverything (?:will|is going to|'ll|gonna)(?: be)? (?:fine|ok|okay|alright|all right|"
    r"work out|get better)\b", r"\beverything'll be\b", r"\beverything happens for a reason\b",
    r"\b(?:things|it|life|everything) (?:will|is going to|'ll|gonna) get better\b",
    r"\bstay (?:positive|strong|calm|safe)\b", r"\b(?:be|think) positive\b",
    r"\b(?:don'?t|do not) worry\b", r"\bcheer up\b", r"\btime heals\b",
    r"\blook on the bright side\b", r"\byou(?:'re| are) not alone\b",
    r"\bi (?:understand|know) (?:how|what) you(?:'re| are)? (?:feel\w*|going through|mean)\b",
    r"\bi(?:'m| am) here (?:to help|for you)\b", r"\bhow (?:can|may) i help(?: you)?\b",
    r"\bis there anything else\b", r"\bhope (?:this|that|it|i) (?:helps?|was helpful)\b",
    r"\bgood luck\b", r"\btake care\b",
    r"\bhave a (?:nice|good|great|wonderful|lovely) (?:day|night|time|one|evening)\b",
    r"\byou(?:'ll| will) be (?:fine|ok|okay|alright|all right)\b",
    r"\b(?:it|things)(?:'s| is| are) going to be (?:fine|ok|okay|alright|all right)\b",
    r"\byou can do (?:it|this)\b", r"\byou(?:'ve| have) got this\b", r"\bhang in there\b",
    r"\bkeep your head up\b", r"\bthank you for sharing\b", r"\bit is what it is\b",
    r"\blife goes on\b", r"\bi(?:'m| am) sure (?:it|you|everything|things) will\b",
)
_BACKCHANNEL = _rx(
    r"\b(?:i see|ok|okay|oh|ah|hmm+|yes|yeah|yep|no|sure|right|alright|great|good|nice|cool|"
    r"wow|i understand|i get it|got it|i know|indeed|true|exactly|mm+|uh huh)\b")
_GREETING = re.compile(r"^\W*(?:hi|hello|hey|good (?:morning|afternoon|evening)|how are you|"
                       r"greetings|howdy|yo)\b")
_CLOSING = re.compile(r"\b(?:thanks?|thank you|thx|bye|goodbye|good bye|appreciate|"
                      r"have a (?:good|nice|great)|take care|talk (?:to you )?later|"
                      r"good night|goodnight)\b")

_PLANNER_ADVICE = {"Providing Suggestions", "Information"}
_PLANNER_IGNORE = {"Information", "Providing Suggestions", "Others"}


def expresses_emotion(text: str) -> bool:
    return bool(_EMOTION_WORD.search(_norm(text)))


def strong_emotion(text: str) -> bool:
    t = _norm(text)
    hits = list(_EMOTION_WORD.finditer(t))
    if len(hits) >= 2 or (hits and _STRONG_WORD.search(t)):
        return True
    return any(_INTENSIFIER.search(t[max(0, m.start() - 30):m.start()])
               or _INTENSIFIER_WORD.search(m.group(0)) for m in hits)


def acknowledges(text: str) -> bool:
    """An empathy or exploration marker, or an emotion word reflected back to "you"."""
    t = _norm(text)
    if _ACK.search(t):
        return True
    if _EMOTION_WORD.search(_DISMISS.sub(" ", t)) and re.search(r"\byou(?:r|'re|rself)?\b", t):
        return True
    return False


def _ack_before(text: str, pos: int) -> bool:
    return acknowledges(_norm(text)[:pos])


def _first_advice(text: str) -> int | None:
    m = _ADVICE.search(_norm(text))
    return m.start() if m else None


# ---------------------------------------------------------------------------------------------
# Context


def as_messages(history: Iterable[Message | Mapping[str, Any]]) -> list[Message]:
    """History records ({"role", "text", "strategy"}) or :class:`Message` objects as Messages."""
    out = []
    for m in history:
        if isinstance(m, Message):
            out.append(m)
        else:
            out.append(Message(m["role"], m["text"], m.get("strategy")))
    return out


@dataclass(frozen=True)
class Context:
    """What the rules need to know about the dialogue before the reply."""

    last_seeker: str
    fresh: bool  # the history ends with a (non-blank) seeker message
    recent_seeker: str
    seeker_words: int
    emotion_expressed: bool
    acknowledged: bool
    last_emotion: bool
    last_strong: bool
    phase: str  # opening | body | closing
    supporter: tuple[Message, ...]

    @classmethod
    def of(cls, history: Iterable[Message | Mapping[str, Any]]) -> "Context":
        msgs = as_messages(history)
        seeker = [m.text for m in msgs if m.role == SEEKER and m.text.strip()]
        supporter = tuple(m for m in msgs if m.role == SUPPORTER)
        last = seeker[-1] if seeker else ""
        # The seeker's words are fresh when they are the last message (not the blank filler that
        # separates two supporter messages: then the supporter already answered them).
        fresh = bool(msgs) and msgs[-1].role == SEEKER and bool(msgs[-1].text.strip())
        first_emotional = next((i for i, m in enumerate(msgs)
                                if m.role == SEEKER and expresses_emotion(m.text)), None)
        acknowledged = first_emotional is not None and any(
            m.role == SUPPORTER and (m.strategy == "Reflection of feelings" or acknowledges(m.text))
            for m in msgs[first_emotional + 1:])
        n_words = sum(len(content_words(t)) for t in seeker)
        lnorm = _norm(last)
        if n_words < 4 or _GREETING.search(lnorm) and len(content_words(last)) < 4:
            phase = "opening"
        elif _CLOSING.search(lnorm):
            phase = "closing"
        else:
            phase = "body"
        return cls(last_seeker=last, fresh=fresh, recent_seeker="\n".join(seeker[-2:]),
                   seeker_words=n_words, emotion_expressed=first_emotional is not None,
                   acknowledged=acknowledged, last_emotion=fresh and expresses_emotion(last),
                   last_strong=fresh and strong_emotion(last), phase=phase, supporter=supporter)


# ---------------------------------------------------------------------------------------------
# Offline rules


def _normalised(text: str) -> str:
    return " ".join(_tokens(text))


def _repeats(reply: str, earlier: Sequence[Message]) -> str | None:
    norm, words = _normalised(reply), content_words(reply)
    for m in earlier:
        if norm and norm == _normalised(m.text) and len(norm.split()) >= 2:
            return m.text
        other = content_words(m.text)
        if len(words) >= 3 and len(other) >= 3:
            jac = len(words & other) / len(words | other)
            if jac >= 0.7:
                return m.text
    return None


def reply_findings(history: Iterable[Message | Mapping[str, Any]], reply: str,
                   context: Context | None = None) -> list[Finding]:
    """The offline rules LE1, LE2, ES1, TR1-TR4 on one supporter reply (see the module doc)."""
    ctx = context or Context.of(history)
    text = _norm(reply)
    words = content_words(reply)
    found: list[Finding] = []

    # Lack Empathy
    m = _DISMISS.search(text)
    if m and expresses_emotion(ctx.recent_seeker):
        found.append(Finding(LACK_EMPATHY, "LE1",
                             f"dismisses the seeker's feeling ({m.group(0)!r})"))
    elif (ctx.last_emotion and ctx.phase != "closing" and not acknowledges(text)
          and not (words & content_words(ctx.last_seeker))):
        found.append(Finding(LACK_EMPATHY, "LE2",
                             "the seeker just expressed emotion; the reply neither acknowledges "
                             "it nor takes up their words"))

    # Early Emotion Shift
    pos = _first_advice(text)
    if pos is not None and ctx.emotion_expressed and not ctx.acknowledged \
            and not _ack_before(text, pos):
        found.append(Finding(EARLY_SHIFT, "ES1",
                             "advice before the seeker's feelings were acknowledged"))

    # Template Response
    rep = _repeats(reply, ctx.supporter)
    if rep is not None:
        found.append(Finding(TEMPLATE, "TR1", f"repeats an earlier supporter turn ({rep[:60]!r})"))
    elif ctx.phase == "body":
        stock = _TEMPLATE.search(text)
        rest = content_words(_TEMPLATE.sub(" ", text))
        recent = content_words(ctx.recent_seeker)
        if stock and len(rest) <= 3 and not (words & recent):
            found.append(Finding(TEMPLATE, "TR2", f"a stock formula ({stock.group(0)!r}) with "
                                                  "nothing specific to the seeker"))
        elif ctx.fresh and not content_words(_BACKCHANNEL.sub(" ", text)) and \
                len(content_words(ctx.last_seeker)) >= 3:
            found.append(Finding(TEMPLATE, "TR3", "a content-free reply to a substantive message"))
        elif len(text.split()) <= 5 and "?" not in text and not acknowledges(text):
            found.append(Finding(TEMPLATE, "TR4", "a perfunctory reply of at most five words"))
    return found


def strategy_findings(history: Iterable[Message | Mapping[str, Any]], strategy: str,
                      context: Context | None = None) -> list[Finding]:
    """The offline rules P-ES, P-LE, P-TR on a strategy chosen as the next move."""
    ctx = context or Context.of(history)
    found: list[Finding] = []
    if strategy in _PLANNER_ADVICE and ctx.emotion_expressed and not ctx.acknowledged:
        found.append(Finding(EARLY_SHIFT, "P-ES", f"{strategy} before the seeker's feelings were "
                                                  "acknowledged"))
    if strategy in _PLANNER_IGNORE and ctx.last_strong:
        found.append(Finding(LACK_EMPATHY, "P-LE", f"{strategy} right after strongly expressed "
                                                   "emotion"))
    if ctx.phase == "body":
        prev = [m.strategy for m in ctx.supporter[-2:]]
        if strategy != "Question" and len(prev) == 2 and all(p == strategy for p in prev):
            found.append(Finding(TEMPLATE, "P-TR", f"{strategy} for the third time in a row"))
        elif strategy == "Others" and ctx.last_emotion:
            found.append(Finding(TEMPLATE, "P-TR", "small talk (Others) after expressed emotion"))
    return found


def errors_of(findings: Iterable[Finding]) -> list[str]:
    """The distinct error names of ``findings`` in the canonical order."""
    seen = {f.error for f in findings}
    return [e for e in ERRORS if e in seen]


def _verdict(pair_id: str, chosen: list[str], rejected: list[str], reason: str,
             judge: str) -> dict:
    return {"id": pair_id, "chosen_errors": chosen, "rejected_errors": rejected,
            "keep": not chosen and bool(rejected), "reason": reason, "judge": judge}


def _drop(pair_id: str, reason: str, judge: str) -> dict:
    return {"id": pair_id, "chosen_errors": [], "rejected_errors": [], "keep": False,
            "reason": reason, "judge": judge}


def _explain(chosen: list[Finding], rejected: list[Finding]) -> str:
    def fmt(fs: list[Finding]) -> str:
        return "; ".join(f"{f.rule} {f.detail}" for f in fs)

    if chosen:
        return f"dropped: chosen shows {', '.join(errors_of(chosen))} ({fmt(chosen)})"
    if not rejected:
        return "dropped: rejected shows no error"
    return f"kept: rejected shows {', '.join(errors_of(rejected))} ({fmt(rejected)})"


def _pre_check(pair: Mapping[str, Any]) -> str | None:
    """A reason to drop the pair without judging it, or None."""
    if pair["role"] == "planner" and normalize_strategy(pair.get("sampled_strategy")) is None:
        return "unparseable_sample"
    if " ".join(str(pair["chosen"]).split()) == " ".join(str(pair["rejected"]).split()):
        return "identical"
    return None


def _reply_texts(pair: Mapping[str, Any]) -> tuple[str, str]:
    """(chosen reply, rejected reply) of a generator or vanilla pair, without strategy tags."""
    if pair["role"] == "vanilla":
        return parse_tagged(pair["chosen"])[1], \
            pair.get("sampled_reply") or parse_tagged(pair["rejected"])[1]
    return pair["chosen"], pair.get("sampled_reply") or pair["rejected"]


def _settled(pair: Mapping[str, Any], keep_unparseable: bool, judge: str) -> dict | None:
    """The verdict of a pair that is not judged (see the module docstring), or None."""
    skip = _pre_check(pair)
    if skip == "unparseable_sample" and keep_unparseable:
        return {"id": pair["id"], "chosen_errors": [], "rejected_errors": [], "keep": True,
                "reason": "kept: unparseable_sample (the sample is not a strategy name)",
                "judge": judge}
    return _drop(pair["id"], skip, judge) if skip else None


def judge_pair_offline(pair: Mapping[str, Any], keep_unparseable: bool = True) -> dict:
    """The offline verdict on one mined pair."""
    judge = "offline"
    settled = _settled(pair, keep_unparseable, judge)
    if settled:
        return settled
    ctx = Context.of(pair["history"])
    if pair["role"] == "planner":
        chosen = strategy_findings((), normalize_strategy(pair["chosen"]) or pair["chosen"], ctx)
        rejected = strategy_findings((), normalize_strategy(pair["sampled_strategy"]), ctx)
    else:
        c_text, r_text = _reply_texts(pair)
        chosen = reply_findings((), c_text, ctx)
        rejected = reply_findings((), r_text, ctx)
    return _verdict(pair["id"], errors_of(chosen), errors_of(rejected),
                    _explain(chosen, rejected), judge)


# ---------------------------------------------------------------------------------------------
# LLM backend

JUDGE_SYSTEM = (
    "You are a clinical supervisor reviewing an emotional-support conversation between a "
    "help-seeker and a supporter. You will see the conversation so far and two candidate next "
    "moves of the supporter, A and B. For each candidate, list which of these three errors it "
    "makes, judged as the supporter's next move in this conversation:\n"
    "- \"Lack Empathy\": it passes over, minimises or ignores the feelings the seeker has "
    "expressed.\n"
    "- \"Early Emotion Shift\": it moves to advice, solutions or information before the "
    "seeker's feelings have been acknowledged or explored.\n"
    "- \"Template Response\": it is generic and unpersonalised -- it could be said to anyone, "
    "or it repeats what the supporter already said.\n"
    "A candidate may make none, one or several errors. Judge each candidate on its own; do not "
    "assume either one is better. Answer with one JSON object and nothing else, exactly: "
    "{\"A_errors\": [...], \"B_errors\": [...]} using only the error names above."
)


def render_history(history: Iterable[Message | Mapping[str, Any]]) -> str:
    lines = []
    for m in as_messages(history):
        if not m.text.strip():
            continue
        who = "Seeker" if m.role == SEEKER else "Supporter"
        tag = f" [{m.strategy}]" if m.role == SUPPORTER and m.strategy else ""
        lines.append(f"{who}{tag}: {m.text}")
    return "\n".join(lines) or "(the conversation has not started yet)"


def _candidate(pair: Mapping[str, Any], side: str) -> str:
    if pair["role"] == "planner":
        s = normalize_strategy(pair[side] if side == "chosen" else pair["sampled_strategy"])
        return f"use the strategy \"{s}\" ({DESCRIPTIONS.get(s, '')})"
    return pair[side]


def _a_is_chosen(pair_id: str) -> bool:
    """Which label the chosen side gets, fixed per pair id, so that position bias averages out."""
    return hashlib.sha256(pair_id.encode("utf-8")).digest()[0] % 2 == 0


def judge_messages(pair: Mapping[str, Any]) -> list[dict]:
    """The chat messages that ask the LLM judge about one pair."""
    kind = ("the supporter's next strategy" if pair["role"] == "planner"
            else "the supporter's next reply")
    a_side, b_side = ("chosen", "rejected") if _a_is_chosen(pair["id"]) else ("rejected", "chosen")
    user = (f"Conversation so far:\n{render_history(pair['history'])}\n\n"
            f"Two candidates for {kind}:\n"
            f"A: {_candidate(pair, a_side)}\n"
            f"B: {_candidate(pair, b_side)}\n\n"
            "Which errors does each candidate make? Answer with the JSON object only.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


_ERROR_KEYS = {e.lower(): e for e in ERRORS}


def _error_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"{key!r} is not a list")
    out = set()
    for v in value:
        name = _ERROR_KEYS.get(" ".join(str(v).split()).lower()) if isinstance(v, str) else None
        if name is None:
            raise ValueError(f"{key!r} holds an unknown error {v!r}")
        out.add(name)
    return [e for e in ERRORS if e in out]


def parse_judge_answer(data: Mapping[str, Any], pair_id: str) -> tuple[list[str], list[str]]:
    """(chosen errors, rejected errors) from the judge's JSON; raises ValueError when malformed."""
    if set(data) != {"A_errors", "B_errors"}:
        raise ValueError(f"expected keys A_errors and B_errors, got {sorted(data)}")
    a, b = _error_list(data["A_errors"], "A_errors"), _error_list(data["B_errors"], "B_errors")
    return (a, b) if _a_is_chosen(pair_id) else (b, a)


def _judge_openai(pairs: Sequence[Mapping[str, Any]], cfg: JudgeConfig,
                  cache_dir: str | Path | None, client=None) -> list[dict]:
    from ..llm_client import LLMClient

    name = f"openai:{cfg.model}"
    if client is None:
        client = LLMClient.from_config(cfg, cache_dir, PROMPT_VERSION)
    verdicts: list[dict | None] = [None] * len(pairs)
    todo = []
    for i, p in enumerate(pairs):
        verdicts[i] = _settled(p, cfg.keep_unparseable, name)
        if verdicts[i] is None:
            todo.append(i)
    results = client.map_json([judge_messages(pairs[i]) for i in todo])
    for i, res in zip(todo, results):
        pid = pairs[i]["id"]
        if not res.ok:
            reason = "judge_parse_error" if res.parse_failed else "judge_request_error"
            verdicts[i] = _drop(pid, reason, name)
            continue
        try:
            chosen, rejected = parse_judge_answer(res.data, pid)
        except ValueError as e:
            client.count("parse_failures")
            log.debug("judge answer for %s is malformed: %s", pid, e)
            verdicts[i] = _drop(pid, "judge_parse_error", name)
            continue
        if chosen:
            reason = f"dropped: chosen shows {', '.join(chosen)}"
        elif not rejected:
            reason = "dropped: rejected shows no error"
        else:
            reason = f"kept: rejected shows {', '.join(rejected)}"
        verdicts[i] = _verdict(pid, chosen, rejected, reason, name)
    counters = client.stats()
    if counters["request_failures"]:
        log.warning("judge: %d request(s) failed for good; their pairs are dropped as "
                    "judge_request_error (a rerun retries them, answers already received are "
                    "cached)", counters["request_failures"])
    return verdicts  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Entry point


def judge_version(cfg: JudgeConfig) -> str:
    """What the verdicts depend on besides the pairs: the rules, or the prompt and model."""
    if cfg.backend == "offline":
        return OFFLINE_RULES_VERSION
    return f"{PROMPT_VERSION}:{cfg.model}"


def judge_pairs(pairs: Sequence[Mapping[str, Any]], cfg: JudgeConfig,
                cache_dir: str | Path | None = None, *, client=None) -> list[dict]:
    """One verdict per pair, in order, from the backend ``cfg.backend``.

    ``cache_dir`` holds the LLM answers of the ``openai`` backend (unused offline); ``client``
    replaces the :class:`esc_dist.llm_client.LLMClient` built from ``cfg`` (tests, reuse).
    """
    for p in pairs:
        if p.get("role") not in ROLES:
            raise ValueError(f"pair {p.get('id')!r}: unknown role {p.get('role')!r}")
    if cfg.backend == "offline":
        return [judge_pair_offline(p, cfg.keep_unparseable) for p in pairs]
    if cfg.backend == "openai":
        return _judge_openai(pairs, cfg, cache_dir, client)
    raise ValueError(f"unknown judge backend {cfg.backend!r} (expected offline or openai)")
