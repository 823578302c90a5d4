"""Chat prompts fitted to a token budget by dropping their oldest history messages.

Training fits a prompt and its longest completion into ``max_length``
(:class:`esc_dist.train.tokens.PromptFitter`); generation fits a prompt and ``max_new_tokens``
into the model's context (:func:`esc_dist.generation.shards.generate`). Both drop messages the
same way: the system message (if any) and the last message are always kept, and the kept
history starts with a user (seeker) message, so the last seeker message is never dropped.
"""

from __future__ import annotations

from typing import Callable, TypeVar

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

    def cost(self, m: dict) -> int:
        key = (m["role"], m["content"])
        if key not in self._cost:
            self._cost[key] = len(self.tok(m["content"], add_special_tokens=False)["input_ids"])
        return self._cost[key]

    @staticmethod
    def split(prompt: list[dict]) -> tuple[list[dict], list[dict], list[int]]:
        """(kept head: the system message or nothing, the history, where the history may
        start: the indices of its user messages, or [0] when it has none)."""
        head = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
        history = prompt[len(head):]
        return head, history, [k for k, m in enumerate(history) if m["role"] == "user"] or [0]

    def shortest(self, prompt: list[dict]) -> list[dict]:
        """The prompt with as much history dropped as the rules allow."""
        head, history, starts = self.split(prompt)
        return head + history[starts[-1]:]

    def fit(self, prompt: list[dict], reserve: int, exact: Callable[[list[dict]], T | None],
            ) -> tuple[list[dict], T, int] | None:
        """(kept prompt, ``exact(kept)``, messages dropped) for the longest history that
        ``exact`` accepts (it returns None when a prompt does not fit), or None when even the
        shortest does not. ``reserve``: the tokens needed beside the prompt's messages."""
        head, history, starts = self.split(prompt)
        suffix = [0] * (len(history) + 1)
        for i in range(len(history) - 1, -1, -1):
            suffix[i] = suffix[i + 1] + self.cost(history[i]) + TEMPLATE_TOKENS
        fixed = sum(self.cost(m) + TEMPLATE_TOKENS for m in head) + reserve + TEMPLATE_TOKENS
        pick = next((i for i, s in enumerate(starts) if fixed + suffix[s] <= self.budget),
                    len(starts) - 1)
        for i in range(pick, len(starts)):
            got = exact(head + history[starts[i]:])
            if got is None:
                continue
            if i > 0 and i == pick:
                longer = exact(head + history[starts[i - 1]:])
                if longer is not None:  # the estimate dropped one message too many
                    i, got = i - 1, longer
            return head + history[starts[i]:], got, starts[i]
        return None
