"""The errors a user can cause, in one family.

Every error that bad input, a bad recipe value or a bad output directory can raise is an
:class:`EscError`. It carries where the problem is (file, line, dialogue, utterance, recipe key)
beside what it is, and renders as one line: ``FILE, line N, dialogue D, utterance U: problem``.
The command layer (:mod:`esc_dist.cli`) turns each of them into that line on stderr and a
non-zero exit status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

from .redaction import redact_text


class EscError(Exception):
    """Base of the user-caused errors; ``exit_code`` is the command's exit status."""

    exit_code = 2

    def __init__(
        self,
        problem: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        dialogue: int | str | None = None,
        utterance: int | None = None,
        key: str | None = None,
    ):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.line, self.dialogue, self.utterance, self.key = line, dialogue, utterance, key
        super().__init__(self.render())

    def where(self) -> list[str]:
        parts = [] if self.path is None else [self.path]
        for label, value in (
            ("line", self.line),
            ("dialogue", self.dialogue),
            ("utterance", self.utterance),
            ("key", self.key),
        ):
            if value is not None:
                parts.append(f"{label} {value}")
        return parts

    def render(self) -> str:
        """The one-line message; a secret-looking value in it (a key typed where a name belongs,
        a password in a URL) is shown as "***"."""
        where = self.where()
        return redact_text(f"{', '.join(where)}: {self.problem}" if where else self.problem)


class ConfigError(EscError, ValueError):
    """A bad recipe value, command-line argument or combination of them."""


class DataError(EscError, ValueError):
    """Bad input data; the message names the file and the place in it."""

    def __init__(
        self,
        path: str | Path,
        problem: str,
        dialogue: int | str | None = None,
        utterance: int | None = None,
        *,
        line: int | None = None,
        key: str | None = None,
    ):
        super().__init__(
            problem, path=path, line=line, dialogue=dialogue, utterance=utterance, key=key
        )


class PairsError(DataError):
    """A bad record in a pairs file (mined or judged)."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        super().__init__(path, problem, line=line)


class PredictionsError(DataError):
    """A bad predictions file."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        super().__init__(path, problem, line=line)


class MissingInput(EscError, FileNotFoundError):
    """An input (file, directory, model, finished stage) that is not where it was named."""


class MergeError(EscError, ValueError):
    """Chunk files of a generation stage that do not add up to the planned items."""


class PlanMismatch(EscError, ValueError):
    """A generation work directory that was planned for other inputs."""


class LLMError(EscError, RuntimeError):
    """A judge endpoint error that makes the whole batch pointless (bad key, model, URL)."""


class JudgmentError(EscError, ValueError):
    """A human-evaluation submission that cannot be stored: an unknown annotator or item, a
    criterion missing, unknown or with a choice other than A, tie or B."""


class AlreadyJudged(JudgmentError):
    """A human-evaluation item that this annotator has judged already (a submission is final)."""


class StageError(EscError, RuntimeError):
    """A pipeline stage that failed; the message names its log."""

    exit_code = 1
