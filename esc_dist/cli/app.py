"""`esc-dist chat` and `esc-dist demo`: talk to trained systems in the terminal or a web page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..layout import RunLayout
from .common import Command, error_message, recipe_of


def systems_of(args: argparse.Namespace):
    """The recipe and the systems the model flags name (``--run`` fills in what is not given)."""
    from ..chat import load_systems, run_models

    if args.run and args.config is None:  # the run's own recipe: its prompts and decoding
        args.config = str(RunLayout(Path(args.run)).recipe)
    recipe = recipe_of(args)
    from ..models.hub import model_path

    dirs = {k: model_path(getattr(args, k)) for k in ("planner", "generator", "vanilla")}
    if args.run:
        found = run_models(args.run, args.stage)
        dirs = {k: v or (found[k] if found[k].is_dir() else None) for k, v in dirs.items()}
    if args.only:
        dirs.update(
            {
                k: None
                for k in (("vanilla",) if args.only == "decoupled" else ("planner", "generator"))
            }
        )
    if (dirs["planner"] is None) != (dirs["generator"] is None):
        raise ConfigError("a decoupled system needs both --planner and --generator")
    return recipe, load_systems(recipe, **dirs)


def model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--run",
        metavar="DIR",
        help="a pipeline run directory: its models "
        "RUN/models/STAGE-{planner,generator,vanilla} fill in the flags not given, "
        "and its RUN/recipe.yaml is the recipe unless --config is given",
    )
    p.add_argument(
        "--stage",
        choices=("sft", "dpo"),
        default="dpo",
        help="which of the run's models (default: dpo)",
    )
    p.add_argument("--planner", metavar="DIR", help="planner model directory")
    p.add_argument("--generator", metavar="DIR", help="generator model directory")
    p.add_argument("--vanilla", metavar="DIR", help="joint (vanilla) model directory")
    p.add_argument(
        "--only",
        choices=("decoupled", "vanilla"),
        help="talk to one system only (default: every system given)",
    )


def run_chat(args: argparse.Namespace) -> int:
    from ..chat import MAX_MESSAGE_CHARS, respond_all
    from ..errors import EscError

    _, systems = systems_of(args)
    histories: dict[str, list] = {name: [] for name in systems}
    print(
        "Talk as the help-seeker; each system answers with the strategy it planned. "
        f"/reset starts over, /quit (or end of input) leaves. Messages: at most "
        f"{MAX_MESSAGE_CHARS} characters.",
        flush=True,
    )
    conversation = 0
    for line in sys.stdin:
        text = line.strip()
        if not text:
            continue
        if text == "/quit":
            break
        if text == "/reset":
            histories = {name: [] for name in systems}
            conversation += 1
            print("(new conversation)", flush=True)
            continue
        try:
            replies = respond_all(systems, histories, text, f"chat-{conversation}")
        except EscError as e:  # this message only: said in one line, the conversation goes on
            print(f"esc-dist chat: {error_message(e)}", file=sys.stderr, flush=True)
            continue
        for name, reply in replies.items():
            print(f"{name}: {reply.label()}", flush=True)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from ..app import is_loopback
    from ..app.demo import serve_demo

    _, systems = systems_of(args)
    if not is_loopback(args.host):
        print(
            f"esc-dist demo: note: --host {args.host} lets other machines in: the demo has "
            "no sign-in, anyone who reaches this port can talk to the models (and keep them "
            "busy); bind 127.0.0.1 (the default) to keep it to this machine",
            file=sys.stderr,
            flush=True,
        )
    print(f"demo on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    serve_demo(systems, host=args.host, port=args.port)
    return 0


def demo_arguments(p: argparse.ArgumentParser) -> None:
    model_arguments(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only; the demo has "
        "no sign-in, so another address lets anyone who reaches it in)",
    )
    p.add_argument("--port", type=int, default=7860)


COMMANDS = [
    Command(
        "chat",
        run_chat,
        "talk to trained systems in the terminal",
        "Talk as the help-seeker to a decoupled system (planner -> generator) and/or a "
        "vanilla one, from stdin; each supporter turn shows the strategy that was planned. "
        "Prompts and decoding follow the recipe (data.max_history_messages, "
        "data.history_strategy_tags, the inference decoding of eval.protocol).",
        model_arguments,
    ),
    Command(
        "demo",
        run_demo,
        "talk to trained systems in a web page (Gradio)",
        "A web page (Gradio; pip install 'esc-dist[app]') to talk to a decoupled system and "
        "a vanilla one side by side; every supporter turn shows the strategy that was "
        "planned. Binds 127.0.0.1 unless --host says otherwise.",
        demo_arguments,
    ),
]
