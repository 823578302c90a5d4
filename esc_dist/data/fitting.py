"""Chat prompts fitted to a token budget by dropping their oldest history messages.

Training fits a prompt and its longest completion into ``max_length``
(:class:`esc_dist.train.tokens.PromptFitter`); generation fits a prompt and ``max_new_tokens``
into the model's context (:func:`esc_dist.generation.shards.generate`). Both drop messages the
same way: the system message (if any) and the last message are always kept, and a history that
lost messages starts with a user (seeker) message, so the last seeker message is never dropped
(a history that fits whole is kept as it is, even when it starts with a supporter message). A
transcript prompt (the whole dialogue in one user message, :mod:`esc_dist.data.transcript`) loses
its oldest lines the same way, and keeps a seeker line first.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from . import transcript

T = TypeVar("T")
TEMPLATE_TOKENS = 4  # about what a chat template adds around one message


class HistoryFitter:
    """Drops the oldest history messages of a prompt until an exact check accepts it.

    How many to drop is estimated from per-message token counts (each distinct message is
    tokenized once: a dialogue's history repeats in all its later turns) against ``budget``,
    then checked with the caller's exact encoding.
    """

    def __init__(self, tokenizer, budget: int):
        self.tok, self.budget = tokenizer, budget
        self._cost: dict[tuple[str, str], int] = {}

    def cost(self, m: dict | str) -> int:
        """Tokens of a message's text (a dict) or of a transcript line (a str)."""
        key = (m["role"], m["content"]) if isinstance(m, dict) else ("line", m)
        if key not in self._cost:
            self._cost[key] = len(self.tok(key[1], add_special_tokens=False)["input_ids"])
        return self._cost[key]

    @staticmethod
    def split(prompt: list[dict]) -> tuple[list[dict], list, list[int]]:
        """(kept head: the system message or nothing, the history: its messages, or the lines
        of a transcript, where the history may start: 0 (nothing dropped), then the indices of
        its user messages or seeker lines)."""
        head = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
        history = prompt[len(head) :]
        if transcript.is_transcript(history):
            history = transcript.segments(history[0]["content"])
            seeker = [k for k, x in enumerate(history) if x.startswith(transcript.SEEKER_LINE)]
        else:
            seeker = [k for k, m in enumerate(history) if m["role"] == "user"]
        # the whole history as it is, or from one of its seeker messages on
        return head, history, [0] + [k for k in seeker if k > 0]

    @staticmethod
    def join(head: list[dict], history: list) -> list[dict]:
        """A prompt from its head and (part of) its history, as :meth:`split` gave them."""
        if history and isinstance(history[0], str):
            return head + [transcript.message(history)]
        return head + history

    def shortest(self, prompt: list[dict]) -> list[dict]:
        """The prompt with as much history dropped as the rules allow."""
        head, history, starts = self.split(prompt)
        return self.join(head, history[starts[-1] :])

    def fit(
        self,
        prompt: list[dict],
        reserve: int,
        exact: Callable[[list[dict]], T | None],
    ) -> tuple[list[dict], T, int] | None:
        """(kept prompt, ``exact(kept)``, messages dropped) for the longest history that
        ``exact`` accepts (it returns None when a prompt does not fit), or None when even the
        shortest does not. ``reserve``: the tokens needed beside the prompt's messages."""
        head, history, starts = self.split(prompt)
        suffix = [0] * (len(history) + 1)
        for i in range(len(history) - 1, -1, -1):
            per = TEMPLATE_TOKENS if isinstance(history[i], dict) else 0  # a line has no template
            suffix[i] = suffix[i + 1] + self.cost(history[i]) + per
        fixed = sum(self.cost(m) + TEMPLATE_TOKENS for m in head) + reserve + TEMPLATE_TOKENS
        pick = next(
            (i for i, s in enumerate(starts) if fixed + suffix[s] <= self.budget), len(starts) - 1
        )
        for i in range(pick, len(starts)):
            kept = self.join(head, history[starts[i] :])
            got = exact(kept)
            if got is None:
                continue
            if i > 0 and i == pick:
                longer = self.join(head, history[starts[i - 1] :])
                got_longer = exact(longer)
                if got_longer is not None:  # the estimate dropped one message too many
                    i, kept, got = i - 1, longer, got_longer
            return kept, got, starts[i]
        return None
