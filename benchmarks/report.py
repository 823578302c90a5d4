"""What the benchmark and study drivers share to report: the repository root and the
replacement of one marked section of a RESULTS.md file."""

from __future__ import annotations

import re
from pathlib import Path

from esc_dist.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"  # throughput, memory, device checks


def write_section(text: str, start: str, end: str, path: Path = RESULTS_MD) -> None:
    """Replace the section between the markers ``start`` and ``end`` of ``path`` with ``text``
    (which holds them), or append it."""
    md = path.read_text(encoding="utf-8")
    if start in md and end in md:
        md = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: text, md, flags=re.S)
    else:
        md = md.rstrip("\n") + "\n\n" + text + "\n"
    atomic_write_text(path, md)
