import subprocess
import sys

import pytest

from esc_dist.cli import build_parser


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_expected_subcommands_exist():
    assert {"prepare", "tiny-model"} <= set(_subcommands())


@pytest.mark.parametrize("cmd", _subcommands())
def test_help(cmd):
    r = subprocess.run(
        [sys.executable, "-m", "esc_dist", cmd, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: esc-dist {cmd}")
    assert "--config" in r.stdout


def test_console_script_installed():
    import shutil

    exe = shutil.which("esc-dist") or str(
        __import__("pathlib").Path(sys.executable).parent / "esc-dist"
    )
    r = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("esc-dist ")


def test_bad_override_is_a_clear_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "esc_dist", "prepare", "--out", str(tmp_path / "o"), "data.nope=1"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "unknown key 'data.nope'" in r.stderr
