"""Prompts and dataset builders for the three tasks, and the `prepare` stage.

Each task is a conversational prompt-completion dataset as TRL reads it: ``prompt`` is a list of
chat messages (system, then the dialogue so far), ``completion`` the one assistant message to
learn. Every row carries a stable ``id`` (dialogue id + turn index) and the gold ``strategy`` and
``reply`` so that later stages can shard, resume and join predictions to gold.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from .. import __version__
from ..config import DataConfig, redact
from ..errors import DataError, MissingInput
from ..io import (
    COMPLETED,
    directory_outputs,
    mark_completed,
    read_manifest,
    require_verified,
    sha256_file,
    write_manifest,
)
from ..outputs import check_output, staged_dir
from ..strategies import DESCRIPTIONS, STRATEGIES, format_tagged
from . import transcript
from .esconv import SEEKER, Message, Turn, iter_turns, load_esconv
from .splits import SPLITS, load_split_file, seeded_split

TASKS = ("vanilla", "planner", "generator")
# How the planner reads the dialogue (data.planner_prompt): ``chat`` -- the history as chat
# turns (seeker = user, supporter = assistant, tagged or not); ``transcript`` -- the paper's form,
# the whole dialogue in one user message of "seeker: ..." / "supporter: ..." lines, untagged.
PLANNER_PROMPTS = ("chat", "transcript")
# The data settings that shape only some tasks' prompts (every other setting -- the source, the
# split, the dialogue counts -- shapes every task and the raw turns alike). A stage that reads
# only some tasks of a prepared directory depends on those tasks' settings alone, so a run that
# changes, say, history_strategy_tags can read another run's generator data (pipeline --reuse).
PROMPT_SETTINGS = {
    "vanilla": ("max_history_messages", "history_strategy_tags"),
    "planner": ("max_history_messages", "history_strategy_tags", "planner_prompt"),
    "generator": ("max_history_messages",),
    "turns": (),
}

_STRATEGY_LIST = ", ".join(f"[{s}]" for s in STRATEGIES)

VANILLA_SYSTEM = (
    "You are a warm, attentive emotional-support counsellor. Reply to the help-seeker's last "
    "message. Begin with the support strategy you are using in square brackets, then the reply. "
    f"Strategies: {_STRATEGY_LIST}."
)
PLANNER_SYSTEM = (
    "You plan the next move of an emotional-support counsellor. Read the conversation and answer "
    "with the single support strategy the counsellor should use next, by its name only: "
    + "; ".join(STRATEGIES)
    + "."
)
# The planner's system message for a transcript prompt (the strategies, then the whole dialogue in
# the user message).
PLANNER_TRANSCRIPT_SYSTEM = (
    "You plan the next move of an emotional-support counsellor. The next message is the "
    "conversation so far, one line per message: 'seeker:' is the help-seeker, 'supporter:' the "
    "counsellor. Answer with the single support strategy the counsellor should use next, by its "
    "name only: " + "; ".join(STRATEGIES) + "."
)
GENERATOR_SYSTEM = (
    "You are a warm, attentive emotional-support counsellor. Reply to the help-seeker's last "
    "message using this support strategy: {strategy} ({description}). Write the reply only."
)


def _history_messages(
    history: Sequence[Message], tagged: bool, max_history: int | None
) -> list[dict]:
    msgs = list(history)
    if max_history is not None:
        msgs = msgs[-max_history:] if max_history > 0 else []
    out = []
    for m in msgs:
        if m.role == SEEKER:
            out.append({"role": "user", "content": m.text})
        else:
            text = format_tagged(m.strategy, m.text) if tagged else m.text
            out.append({"role": "assistant", "content": text})
    return out


def vanilla_prompt(
    history: Sequence[Message], max_history: int | None = None, tagged: bool = True
) -> list[dict]:
    """The joint model's prompt; ``tagged``: the supporter's past turns carry their strategy
    tags (``data.history_strategy_tags``)."""
    return [{"role": "system", "content": VANILLA_SYSTEM}] + _history_messages(
        history, tagged, max_history
    )


def planner_prompt(
    history: Sequence[Message],
    max_history: int | None = None,
    tagged: bool = True,
    form: str = "chat",
) -> list[dict]:
    """The planner's prompt in the ``form`` of :data:`PLANNER_PROMPTS`; ``tagged`` as in
    :func:`vanilla_prompt` (a transcript is never tagged)."""
    if form == "transcript":
        msgs = list(history)
        if max_history is not None:
            msgs = msgs[-max_history:] if max_history > 0 else []
        return [
            {"role": "system", "content": PLANNER_TRANSCRIPT_SYSTEM},
            {"role": "user", "content": transcript.render(msgs)},
        ]
    if form != "chat":
        raise ValueError(
            f"unknown planner prompt form {form!r} (expected one of {PLANNER_PROMPTS})"
        )
    return [{"role": "system", "content": PLANNER_SYSTEM}] + _history_messages(
        history, tagged, max_history
    )


def generator_prompt(
    history: Sequence[Message], strategy: str, max_history: int | None = None
) -> list[dict]:
    system = GENERATOR_SYSTEM.format(strategy=strategy, description=DESCRIPTIONS[strategy])
    return [{"role": "system", "content": system}] + _history_messages(history, False, max_history)


def task_example(
    turn: Turn,
    task: str,
    max_history: int | None = None,
    tagged: bool = True,
    planner_form: str = "chat",
) -> dict:
    if task == "vanilla":
        prompt, target = (
            vanilla_prompt(turn.history, max_history, tagged),
            format_tagged(turn.strategy, turn.reply),
        )
    elif task == "planner":
        prompt = planner_prompt(turn.history, max_history, tagged, planner_form)
        target = turn.strategy
    elif task == "generator":
        prompt, target = generator_prompt(turn.history, turn.strategy, max_history), turn.reply
    else:
        raise ValueError(f"unknown task {task!r} (expected one of {TASKS})")
    return {
        **_turn_fields(turn),
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": target}],
    }


def build_task(
    turns_by_split: dict[str, list[Turn]],
    task: str,
    max_history: int | None = None,
    tagged: bool = True,
    planner_form: str = "chat",
):
    """A ``datasets.DatasetDict`` of one task, one split per key of ``turns_by_split``."""
    from datasets import Dataset, DatasetDict

    return DatasetDict(
        {
            split: Dataset.from_list(
                [task_example(t, task, max_history, tagged, planner_form) for t in turns]
            )
            for split, turns in turns_by_split.items()
        }
    )


def turn_record(turn: Turn) -> dict:
    """The raw turn (history as seeker/supporter messages) for stages that judge or rebuild
    prompts: mining, judging, inference."""
    return {
        **_turn_fields(turn),
        "history": [{"role": m.role, "text": m.text, "strategy": m.strategy} for m in turn.history],
    }


def _turn_fields(turn: Turn) -> dict:
    """The identity and gold answer of a turn, first in every record built from it."""
    return {
        "id": turn.id,
        "dialogue_id": turn.dialogue_id,
        "turn_index": turn.turn_index,
        "strategy": turn.strategy,
        "reply": turn.reply,
    }


def history_messages(history: Iterable[dict]) -> list[Message]:
    """Messages back from the ``history`` column of the turns dataset."""
    return [Message(m["role"], m["text"], m["strategy"]) for m in history]


def _strategy_counts(turns: Iterable[Turn]) -> dict[str, int]:
    c = Counter(t.strategy for t in turns)
    return {s: c.get(s, 0) for s in STRATEGIES}


def select_splits(cfg: DataConfig) -> tuple[list, dict[str, list[int]]]:
    """Load the corpus and the dialogue indices of each split, after ``max_dialogues``."""
    convs = load_esconv(cfg.esconv)
    if cfg.split == "seeded":
        split = seeded_split(len(convs), cfg.split_fractions, cfg.split_seed)
    else:
        split = load_split_file(cfg.split, len(convs))
    for name in SPLITS:
        limit = cfg.max_dialogues.get(name)
        if limit is not None:
            split[name] = split[name][:limit]
    source = "data.split_fractions" if cfg.split == "seeded" else cfg.split
    if not split["train"]:
        raise DataError(source, "the train split is empty: there is nothing to train on")
    _refuse_leaks(convs, split, source, cfg.esconv)
    return convs, split


def _refuse_leaks(convs: list, split: dict[str, list[int]], source: str, corpus) -> None:
    """Two identical dialogues in different splits would let a model be scored on what it was
    trained on: refuse, naming the corpus file and both dialogues."""
    seen: dict[tuple, tuple[str, int]] = {}
    for name in SPLITS:
        for i in split[name]:
            key = tuple((m.role, m.text) for m in convs[i].messages)
            first = seen.setdefault(key, (name, i))
            if first[0] != name:
                raise DataError(
                    corpus,
                    f"duplicate dialogue: dialogues {first[1]} ({first[0]}) "
                    f"and {i} ({name} in {source}) are identical, a leak "
                    "between splits; remove one from the corpus or put both "
                    "in the same split",
                )


def prepare(cfg: DataConfig, out: str | Path) -> dict:
    """Write the three task datasets and a manifest to ``out``; returns the manifest."""
    t0 = time.time()
    inputs = [cfg.esconv, None if cfg.split == "seeded" else cfg.split]
    check_output(out, "prepare", inputs)
    convs, split = select_splits(cfg)
    turns = {name: list(iter_turns([convs[i] for i in idx])) for name, idx in split.items()}
    manifest = {
        "stage": "prepare",
        "esc_dist_version": __version__,
        "config": redact(asdict(cfg)),
        "inputs": {
            "esconv": {"path": str(cfg.esconv), "sha256": sha256_file(cfg.esconv)},
            "split": {
                "path": str(cfg.split),
                "sha256": None if cfg.split == "seeded" else sha256_file(cfg.split),
            },
        },
        "tasks": list(TASKS),
        "counts": {
            name: {
                "dialogues": len(split[name]),
                "turns": len(turns[name]),
                "strategies": _strategy_counts(turns[name]),
            }
            for name in SPLITS
        },
        "dialogues": split,
    }
    from datasets import Dataset, DatasetDict

    with staged_dir(out, "prepare", inputs) as tmp:
        for task in TASKS:
            build_task(
                turns, task, cfg.max_history_messages, cfg.history_strategy_tags, cfg.planner_prompt
            ).save_to_disk(str(tmp / task))
        DatasetDict(
            {split: Dataset.from_list([turn_record(t) for t in ts]) for split, ts in turns.items()}
        ).save_to_disk(str(tmp / "turns"))
        manifest["seconds"] = round(time.time() - t0, 2)
        manifest["outputs"] = directory_outputs(tmp)
        write_manifest(tmp, manifest)
        mark_completed(tmp)
    return manifest


def settings_view(cfg: DataConfig, tasks: Iterable[str]) -> dict:
    """The settings of ``cfg`` that the ``tasks`` of a prepared directory (and its turns)
    depend on: two configs with the same view prepare those tasks the same way."""
    tasks = set(tasks)
    prompt_only = {k for keys in PROMPT_SETTINGS.values() for k in keys}
    wanted = {k for t in tasks for k in PROMPT_SETTINGS[t]}
    return {k: v for k, v in asdict(cfg).items() if k not in prompt_only or k in wanted}


class PromptSettings(NamedTuple):
    """What prompts prepared data was built with (its manifest's config), for the stages that
    build prompts again from its turns (inference, the DPO validation guard); data written
    before a key existed gets that key's old behaviour."""

    max_history: int | None
    tagged: bool
    planner_form: str


def prompt_settings_of(data_dir: str | Path) -> PromptSettings:
    cfg = (read_manifest(data_dir) or {}).get("config") or {}
    return PromptSettings(
        cfg.get("max_history_messages"),
        bool(cfg.get("history_strategy_tags", True)),
        str(cfg.get("planner_prompt", "chat")),
    )


def load_task(data_dir: str | Path, task: str):
    """Load a task's ``DatasetDict`` (or ``"turns"``, the raw turns) written by :func:`prepare`."""
    from datasets import load_from_disk

    data_dir = Path(data_dir)
    if not (data_dir / COMPLETED).is_file():
        raise MissingInput(
            f"not a completed `esc-dist prepare` output (no {COMPLETED} marker)", path=data_dir
        )
    require_verified(data_dir)
    return load_from_disk(str(data_dir / task))
