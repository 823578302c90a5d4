"""Console logging shared by every stage: rank-aware, quiet third-party progress bars."""

from __future__ import annotations

import logging
import os
import sys

from .redaction import redact_text


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


class _Redact(logging.Filter):
    """Shows secret-looking parts of a log line (keys, passwords in URLs) as "***"."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def get_logger(name: str = "esc_dist") -> logging.Logger:
    logger = logging.getLogger(name)
    if not logging.getLogger("esc_dist").handlers:
        h = logging.StreamHandler(sys.stderr)
        h.addFilter(_Redact())
        h.setFormatter(
            logging.Formatter(
                f"%(asctime)s [esc-dist r{rank()}] %(levelname)s %(message)s", "%H:%M:%S"
            )
        )
        root = logging.getLogger("esc_dist")
        root.addHandler(h)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logger


def quiet_libraries() -> None:
    """Silence datasets/transformers progress bars and chatter that would flood multi-rank logs."""
    import warnings

    # DeepSpeed still calls collectives that torch marks deprecated, once per call.
    warnings.filterwarnings(
        "ignore", message=r".*torch\.distributed\..* is deprecated", category=FutureWarning
    )
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if not sys.stderr.isatty():  # progress bars in a batch log are noise, one per rank
        os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
