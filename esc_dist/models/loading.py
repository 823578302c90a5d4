"""Loading a model directory for training or generation: its tokenizer, its causal LM and its
context size, each failure of the libraries on a broken directory raised as a
:class:`~esc_dist.errors.DataError` naming the directory.

The cheap checks (config, tokenizer files, safetensors headers) run first, in
:func:`esc_dist.io.check_model_dir`: before each load here, and in
:func:`esc_dist.io.model_fingerprint`, which every stage computes before loading anything.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import DataError, EscError
from ..io import check_model_dir, read_json

# Config keys that hold the number of positions a model can attend to, by model family.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
# transformers gives tokenizers without a known limit a huge model_max_length (1e30).
SANE_MAX_LENGTH = 10_000_000


@contextmanager
def loading_errors(model_dir: str | Path, what: str) -> Iterator[None]:
    """Raise what the libraries raise on a broken model directory (an OS error, a bad value,
    a broken safetensors file) as one DataError naming ``model_dir``."""
    from safetensors import SafetensorError

    try:
        yield
    except EscError:
        raise
    except (OSError, ValueError, SafetensorError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(model_dir, f"cannot load the {what}: {first}") from None


def load_tokenizer(model_dir: str | Path, trust_remote_code: bool = False):
    """The directory's tokenizer, its pad token set (to eos when it has none)."""
    from transformers import AutoTokenizer

    check_model_dir(model_dir)
    with loading_errors(model_dir, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def attention(name: str | None) -> str:
    """``model.attn_implementation`` as transformers takes it: ``auto``/null is
    flash_attention_2 on a GPU where the flash-attn package imports, else sdpa (logged once)."""
    from ..config import AUTO_ATTENTION

    if name not in AUTO_ATTENTION:
        return name
    import importlib.util

    from .. import dist

    chosen = (
        "flash_attention_2"
        if dist.has_cuda() and importlib.util.find_spec("flash_attn")
        else "sdpa"
    )
    if chosen not in _LOGGED:
        _LOGGED.add(chosen)
        from ..log import get_logger

        get_logger(__name__).info("attention: %s (model.attn_implementation: auto)", chosen)
    return chosen


_LOGGED: set[str] = set()


def load_causal_lm(
    model_dir: str | Path,
    dtype,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    from transformers import AutoModelForCausalLM

    extra = {"attn_implementation": attention(attn_implementation)}
    check_model_dir(model_dir)
    with loading_errors(model_dir, "model"):
        return AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype, trust_remote_code=trust_remote_code, **extra
        )


def model_context(model_dir: str | Path, tokenizer=None) -> int | None:
    """How many tokens (prompt and generated) the model takes: its config's number of
    positions, lowered to the tokenizer's ``model_max_length`` when that is a sane number;
    None when neither says."""
    config = read_json(Path(model_dir) / "config.json")
    limits = []
    for cfg in (config, config.get("text_config") or {}):
        n = next((cfg[k] for k in CONTEXT_KEYS if isinstance(cfg.get(k), int) and cfg[k] > 0), None)
        if n is not None:
            limits.append(n)
            break
    t = getattr(tokenizer, "model_max_length", None)
    if isinstance(t, int) and 0 < t < SANE_MAX_LENGTH:
        limits.append(t)
    return min(limits) if limits else None
