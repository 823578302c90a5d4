"""benchmarks/gpu_proof.py's dry run on CPU at toy shapes: every part runs through the
project's real code paths (trainer, DeepSpeed ZeRO-2/3, shared-prompt DPO, the mining engine,
the 7B recipe's SFT stage), so the script a GPU session runs once cannot rot."""

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, launch_env

pytestmark = pytest.mark.distributed


def test_the_gpu_proof_runs_every_part_at_toy_shapes(tmp_path, esconv_dir):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.gpu_proof",
            "--shape",
            "tiny",
            "--layers",
            "2",
            "--esconv",
            str(esconv_dir),
            "--work",
            str(tmp_path / "work"),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env=launch_env(WANDB_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_proof.json").read_text())
    rows = {row["name"]: row for row in result["rows"]}
    assert result["device"] == "cpu" and not any("error" in row for row in rows.values())
    for name in (
        "sft no DeepSpeed",
        "sft ZeRO-2",
        "sft ZeRO-3",
        "dpo ZeRO-3 shared prompt",
        "dpo ZeRO-3 two sequences",
        "sft ZeRO-3 padding-free (4D mask)",  # no flash attention on CPU: our mask
        "dpo ZeRO-3 padding-free (4D mask)",
    ):
        assert rows[name]["non_pad_tokens_per_s"] > 0 and rows[name]["peak_memory_gb"] > 0
        assert rows[name]["mfu"] is None  # no GPU peak to divide by
    assert "liger" in rows["sft ZeRO-3 + Liger"]["skipped"]  # no CUDA here
    for name in ("sft ZeRO-3 padding-free (4D mask)", "dpo ZeRO-3 padding-free (4D mask)"):
        assert rows[name]["non_pad_fraction"] == 1.0  # nothing padded was computed
    assert rows["mine 0.5B shape"]["new_tokens_per_s"] > 0
    assert rows["mine 0.5B shape, static cache"]["new_tokens_per_s"] > 0
    assert "CUDA" in rows["mine 0.5B shape, compiled decoding"]["skipped"]
    recipe = rows["qwen2.5-7b recipe, first SFT steps"]
    assert recipe["steps"] == 2 and recipe["final_loss"] > 0
    assert "| part | tokens/s | MFU | peak memory GB | s | note |" in r.stdout
