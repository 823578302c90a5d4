"""The lexicons of the psychological-error rules and the small text predicates they are built from.

What each word list covers and why is documented in ``docs/judge.md`` (section "Lexicons").
"""

from __future__ import annotations

import re

_STOP = frozenset(
    """
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
""".split()
)

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?")


def normalize(text: str) -> str:
    """Lower-cased, with curly quotes straightened."""
    return (text or "").replace("\u2019", "'").replace("\u2018", "'").lower()


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "ly", "s"):
        if len(word) - len(suffix) >= 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    """Stems of the content words of ``text``: tokens of three or more letters outside a
    stop-word list, reduced by a crude suffix stemmer (-ing, -ed, -es, -ly, -s)."""
    out = set()
    for t in tokens(text):
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
    r"worthless\w*|desperat\w*|terrif\w*|overwhelm\w*|furious|can'?t (?:take|handle|cope))"
)
_INTENSIFIER_WORD = re.compile(
    r"\b(?:so|very|really|extremely|incredibly|totally|completely|"
    r"super|deeply|terribly|quite|truly|too)\b"
)
_INTENSIFIER = re.compile(
    r"\b(?:so|very|really|extremely|incredibly|totally|completely|super|"
    r"deeply|terribly|quite|truly|too)\s+(?:\w+\s+)?$"
)

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
    r"\b(?:i )?feel (?:for you|you)\b",
    r"\bmy heart goes out\b",
    r"\bpoor (?:you|thing)\b",
    r"\boh no\b",
    r"\bsounds? like\b",
    r"\bit seems(?: like| as if| that)? you\b",
    r"\bseems like you\b",
    r"\bi (?:can |do |totally |completely |really )?(?:understand|imagine)\b",
    r"\bi hear you\b",
    r"\bi can see (?:why|how|that|you)\b",
    r"\bi know (?:how|what) (?:that|it|this|you)\b",
    r"\byou (?:must|might|may) (?:feel|be feeling|have felt|be)\b",
    r"\byou(?:'re| are) feeling\b",
    r"\byou feel\b",
    r"\byou felt\b",
    r"\bhow (?:are|do|did|have) you (?:been )?feel",
    r"\bhow (?:does|did|is) (?:that|it|this) "
    r"(?:make|made|making) you feel\b",
    r"\byour feelings?\b",
    r"\b(?:understandable|makes sense|make sense|valid)\b",
    r"\b(?:normal|natural|okay|ok|alright|fine) to feel\b",
    r"\bi'?m here (?:for you|to listen)\b",
    r"\bi am here (?:for you|to listen)\b",
    r"\b(?:must|can|could|would) be (?:quite |so |really |very |incredibly |extremely |pretty |"
    r"a bit )?(?:hard|tough|difficult|painful|frustrating|scary|stressful|exhausting|"
    r"overwhelming|upsetting|lonely|heartbreaking|confusing)\b",
)
DISMISS = _rx(
    r"\bget over (?:it|him|her|them)\b",
    r"\b(?:no|not a|not such a) big deal\b",
    r"\bcalm down\b",
    r"\b(?:it|that|this)(?:'s| is) not (?:that|so) bad\b",
    r"\b(?:stop|quit) (?:worrying|crying|complaining|being|thinking about|stressing)\b",
    r"\byou shouldn'?t (?:feel|be)\b",
    r"\byou should not (?:feel|be)\b",
    r"\b(?:don'?t|do not) (?:be|feel) (?:so |too )?(?:sad|upset|angry|down|depressed|stressed|"
    r"anxious|worried|bad|like that|mad|scared)\b",
    r"\bjust (?:forget|ignore|move on|let it go|relax|get over)\b",
    r"\bmove on\b",
    r"\b(?:it|things) could (?:be|have been) worse\b",
    r"\b(?:others|other people|some people|many people) have it worse\b",
    r"\bcheer up\b",
    r"\bsnap out of\b",
    r"\boverreact\w*",
    r"\btoo sensitive\b",
    r"\b(?:toughen|man) up\b",
    r"\blook on the bright side\b",
    r"\bat least you\b",
)
_ADVICE = _rx(
    r"\byou (?:should|could|need to|have to|must|ought to|gotta)\b",
    r"\byou (?:might|may) (?:want|wish|like) to\b",
    r"(?<!\bi )(?<!i'll )(?<!\bwe )\btry (?:to|and|out|some|something|a|an|the|\w+ing)\b",
    r"\bhave you (?:tried|considered|thought about|thought of|looked into)\b",
    r"\bwhy (?:don'?t|not)\b",
    r"\bi(?: would|'d)? (?:suggest|recommend|advise)\b",
    r"\bmy (?:advice|suggestion|recommendation)\b",
    r"\b(?:maybe|perhaps) you\b",
    r"\b(?:it|that|this) (?:might|may|could|would|will|can) (?:help|be (?:good|helpful|useful|"
    r"a good idea|worth|beneficial))\b",
    r"\bgood idea\b",
    r"\bhow about\b",
    r"\bconsider\w*\b",
    r"\bmake sure (?:you|to)\b",
    r"\blook into\b",
    r"\breach out\b",
    r"\b(?:talk|speak|talking|speaking) (?:to|with) (?:a|an|your|someone|somebody)\b",
    r"\b(?:see|contact|call|visit|seeing|contacting) (?:a|an|your) (?:therapist|counsel\w*|"
    r"doctor|professional|psychologist|psychiatrist)\b",
    r"\b(?:research|studies|study) (?:shows?|says?|suggests?|found)\b",
    r"\baccording to\b",
    r"\b(?:it'?s|it is) important to\b",
    r"\bif i were you\b",
)
STOCK_FORMULA = _rx(
    r"\beverything (?:will|is going to|'ll|gonna)(?: be)? (?:fine|ok|okay|alright|all right|"
    r"work out|get better)\b",
    r"\beverything'll be\b",
    r"\beverything happens for a reason\b",
    r"\b(?:things|it|life|everything) (?:will|is going to|'ll|gonna) get better\b",
    r"\bstay (?:positive|strong|calm|safe)\b",
    r"\b(?:be|think) positive\b",
    r"\b(?:don'?t|do not) worry\b",
    r"\bcheer up\b",
    r"\btime heals\b",
    r"\blook on the bright side\b",
    r"\byou(?:'re| are) not alone\b",
    r"\bi (?:understand|know) (?:how|what) you(?:'re| are)? (?:feel\w*|going through|mean)\b",
    r"\bi(?:'m| am) here (?:to help|for you)\b",
    r"\bhow (?:can|may) i help(?: you)?\b",
    r"\bis there anything else\b",
    r"\bhope (?:this|that|it|i) (?:helps?|was helpful)\b",
    r"\bgood luck\b",
    r"\btake care\b",
    r"\bhave a (?:nice|good|great|wonderful|lovely) (?:day|night|time|one|evening)\b",
    r"\byou(?:'ll| will) be (?:fine|ok|okay|alright|all right)\b",
    r"\b(?:it|things)(?:'s| is| are) going to be (?:fine|ok|okay|alright|all right)\b",
    r"\byou can do (?:it|this)\b",
    r"\byou(?:'ve| have) got this\b",
    r"\bhang in there\b",
    r"\bkeep your head up\b",
    r"\bthank you for sharing\b",
    r"\bit is what it is\b",
    r"\blife goes on\b",
    r"\bi(?:'m| am) sure (?:it|you|everything|things) will\b",
)
BACKCHANNEL = _rx(
    r"\b(?:i see|ok|okay|oh|ah|hmm+|yes|yeah|yep|no|sure|right|alright|great|good|nice|cool|"
    r"wow|i understand|i get it|got it|i know|indeed|true|exactly|mm+|uh huh)\b"
)
GREETING = re.compile(
    r"^\W*(?:hi|hello|hey|good (?:morning|afternoon|evening)|how are you|"
    r"greetings|howdy|yo)\b"
)
CLOSING = re.compile(
    r"\b(?:thanks?|thank you|thx|bye|goodbye|good bye|appreciate|"
    r"have a (?:good|nice|great)|take care|talk (?:to you )?later|"
    r"good night|goodnight)\b"
)


def expresses_emotion(text: str) -> bool:
    """A negative-emotion word, a feeling phrase or a painful event."""
    return bool(_EMOTION_WORD.search(normalize(text)))


def strong_emotion(text: str) -> bool:
    """Two or more emotion hits, an intensifier before or inside one, or a strong word."""
    t = normalize(text)
    hits = list(_EMOTION_WORD.finditer(t))
    if len(hits) >= 2 or (hits and _STRONG_WORD.search(t)):
        return True
    return any(
        _INTENSIFIER.search(t[max(0, m.start() - 30) : m.start()])
        or _INTENSIFIER_WORD.search(m.group(0))
        for m in hits
    )


def acknowledges(text: str) -> bool:
    """An empathy or exploration marker, or an emotion word reflected back to "you"."""
    t = normalize(text)
    if _ACK.search(t):
        return True
    if _EMOTION_WORD.search(DISMISS.sub(" ", t)) and re.search(r"\byou(?:r|'re|rself)?\b", t):
        return True
    return False


def acknowledges_before(text: str, pos: int) -> bool:
    """Whether ``text`` acknowledges before (normalised) position ``pos``."""
    return acknowledges(normalize(text)[:pos])


def first_advice(text: str) -> int | None:
    """Position of the first suggestion or information marker in ``text``, or None."""
    m = _ADVICE.search(normalize(text))
    return m.start() if m else None
