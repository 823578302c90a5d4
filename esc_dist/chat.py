"""Talking to trained systems, one supporter turn at a time (``esc-dist chat``, ``esc-dist demo``).

A :class:`ChatSystem` answers a conversation's history the way inference predicts a test turn:

* ``decoupled`` -- the planner names a strategy for the history, then the generator writes the
  reply for it (for a planner output that names no strategy the generator is conditioned on
  "Others", as in :mod:`esc_dist.infer`);
* ``vanilla`` -- the joint model writes "[Strategy] reply".

Prompts are built and fitted to each model's context exactly as for inference (the recipe's
``data.max_history_messages``, ``data.history_strategy_tags`` and ``data.planner_prompt``), and
decoded with the
recipe's inference settings (:func:`esc_dist.infer.decoding`: sampled at 0.7 / 0.95 under
``eval.protocol: paper``). Each reply draws from its own seed, a hash of ``run.seed``, the
conversation's id and the turn's position, so a conversation replays identically.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .config import Recipe
from .constants import ROLES
from .data.esconv import SEEKER, SUPPORTER, Message
from .errors import ConfigError
from .generation import Replica, Sampling, WorkItem, fit_prompts, load_tokenizer, row_seed
from .infer import decoding, infer_sampling, planned
from .io import check_model_dir
from .layout import RunLayout
from .models.loading import model_context
from .strategies import parse_tagged

CHAT_MODES = ("decoupled", "vanilla")


@dataclass
class Reply:
    """One supporter turn of a system: the strategy it planned (None when its output names
    none), that output as it was, the strategy the reply was written for, and the reply."""

    system: str
    strategy: str | None
    strategy_raw: str
    conditioned_on: str | None
    reply: str

    def label(self) -> str:
        """The turn as the chat and the demo show it: ``[Strategy] reply``; a decoupled turn whose
        planner named no strategy shows what the planner said and the strategy the reply was
        written for."""
        if self.strategy is not None:
            tag = self.strategy
        elif self.system == "decoupled":
            tag = f"no strategy in {self.strategy_raw!r}; written as {self.conditioned_on}"
        else:
            tag = "no strategy tag"
        return f"[{tag}] {self.reply}"

    def message(self) -> Message:
        """The turn as history for the next one."""
        return Message(SUPPORTER, self.reply, self.strategy or self.conditioned_on)


class _Model:
    """A tokenizer and a replica of one model directory, with its context size."""

    def __init__(self, model_dir: Path, recipe: Recipe):
        check_model_dir(model_dir)
        trust = recipe.model.trust_remote_code
        self.dir = model_dir
        self.tok = load_tokenizer(model_dir, trust)
        self.replica = Replica(
            model_dir,
            self.tok,
            trust,
            recipe.model.attn_implementation,
            precision=recipe.infer.precision,
            decode=recipe.infer.decode,
        )
        self.context = model_context(model_dir, self.tok)

    def generate(self, messages: list[dict], sampling: Sampling, seed: int, key: str) -> str:
        item = WorkItem(key, messages, sampling)
        ids, _ = fit_prompts([item], self.tok, self.context, source=self.dir)
        return self.replica.generate_batch([item], ids, [seed])[0]["text"]


# The longest seeker message the chat and the demo take: ESConv's seeker messages are far
# shorter; a longer one is refused before any model sees it (the conversation goes on).
MAX_MESSAGE_CHARS = 2000


def check_message(text: str) -> str:
    """``text`` if a system may be asked to answer it, else :class:`ConfigError` saying why."""
    if len(text) > MAX_MESSAGE_CHARS:
        raise ConfigError(
            f"message of {len(text)} characters: at most {MAX_MESSAGE_CHARS} "
            "(not sent; the conversation goes on)"
        )
    return text


def respond_all(
    systems: dict, histories: dict[str, list], text: str, conversation: str
) -> dict[str, "Reply"]:
    """Every system's reply to the seeker's ``text``; the histories move on only when all of
    them answered (a refused message or a failed turn leaves every history as it was)."""
    check_message(text)
    replies = {}
    for name, system in systems.items():
        history = [*histories[name], Message(SEEKER, text)]
        replies[name] = (history, system.respond(history, conversation=conversation))
    for name, (history, reply) in replies.items():
        histories[name] = [*history, reply.message()]
    return {name: reply for name, (_, reply) in replies.items()}


class ChatSystem:
    """A decoupled (``planner`` + ``generator``) or vanilla (``model``) system, ready to answer.

    ``models`` shares loaded models between systems (the same directory is loaded once)."""

    def __init__(
        self,
        recipe: Recipe,
        mode: str,
        *,
        planner: str | Path | None = None,
        generator: str | Path | None = None,
        model: str | Path | None = None,
        models: dict | None = None,
    ):
        if mode not in CHAT_MODES:
            raise ConfigError(f"unknown chat mode {mode!r} (expected {' or '.join(CHAT_MODES)})")
        need = {
            "decoupled": {"planner": planner, "generator": generator},
            "vanilla": {"model": model},
        }[mode]
        missing = [k for k, v in need.items() if v is None]
        if missing:
            raise ConfigError(f"a {mode} system needs --{' and --'.join(missing)}")
        self.recipe, self.mode = recipe, mode
        self.models = models if models is not None else {}
        self.parts = {k: self._load(Path(v)) for k, v in need.items()}
        how = decoding(recipe)
        self.sampling = {
            p: infer_sampling(recipe.infer, p, how) for p in ("planner", "generator", "vanilla")
        }

    def _load(self, path: Path) -> _Model:
        key = str(path.resolve())
        if key not in self.models:
            self.models[key] = _Model(path, self.recipe)
        return self.models[key]

    def _seed(self, phase: str, conversation: str, turn: int) -> int:
        return row_seed(self.recipe.run.seed, f"chat-{phase}", f"{conversation}:{turn}", 0)

    def respond(self, history: Sequence[Message], conversation: str = "chat") -> Reply:
        """The next supporter turn after ``history`` (which ends with the seeker's message)."""
        from .data.tasks import generator_prompt, planner_prompt, vanilla_prompt

        data = self.recipe.data
        turn = len(history)
        key = f"{conversation}:{turn}"
        if self.mode == "vanilla":
            out = self.parts["model"].generate(
                vanilla_prompt(history, data.max_history_messages, data.history_strategy_tags),
                self.sampling["vanilla"],
                self._seed("vanilla", conversation, turn),
                key,
            )
            strategy, reply = parse_tagged(out.strip())
            return Reply(self.mode, strategy, out.strip(), strategy, reply.strip())
        raw = (
            self.parts["planner"]
            .generate(
                planner_prompt(
                    history,
                    data.max_history_messages,
                    data.history_strategy_tags,
                    data.planner_prompt,
                ),
                self.sampling["planner"],
                self._seed("planner", conversation, turn),
                key,
            )
            .strip()
        )
        strategy, cond = planned(raw)
        reply = self.parts["generator"].generate(
            generator_prompt(history, cond, data.max_history_messages),
            self.sampling["generator"],
            self._seed("generator", conversation, turn),
            key,
        )
        return Reply(self.mode, strategy, raw, cond, reply.strip())


def run_models(run_dir: str | Path, stage: str) -> dict[str, Path]:
    """The model directories of a pipeline run (``RunLayout.model``)."""
    run = RunLayout(Path(run_dir))
    return {role: run.model(stage, role) for role in ROLES}


def load_systems(recipe: Recipe, *, planner=None, generator=None, vanilla=None) -> dict:
    """The systems the given directories make: ``decoupled`` (planner and generator) and/or
    ``vanilla``, sharing loaded models."""
    models: dict = {}
    systems = {}
    if planner is not None or generator is not None:
        systems["decoupled"] = ChatSystem(
            recipe, "decoupled", planner=planner, generator=generator, models=models
        )
    if vanilla is not None:
        systems["vanilla"] = ChatSystem(recipe, "vanilla", model=vanilla, models=models)
    if not systems:
        raise ConfigError(
            "no system to talk to: give --planner and --generator, --vanilla, or --run"
        )
    return systems
