"""Secrets typed where they do not belong never reach what esc-dist writes or prints.

Each secret shape (OpenAI, OpenAI project, Anthropic, Hugging Face keys, a W&B key after a
key-like name, a bearer token, a password in a URL) goes through each writer: ``RUN/recipe.yaml``
(``esc-dist stage init``), the IPM-PrefDial manifest and the W&B offline files (``esc-dist judge``),
and the one-line errors on stderr. The secret must appear in no file under the output tree (read
as bytes) and in neither stdout nor stderr. A key kept in the environment, where it belongs, is
still sent to the endpoint and still appears nowhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from esc_dist.cli import main
from esc_dist.io import read_json
from esc_dist.llm_client import LLMClient, LLMError
from esc_dist.redaction import redact_text
from tests.helpers import FakeServer, wait_for_offline_runs
from tests.unit.test_prefdial import GENERATOR, write_pairs

SECRETS = {
    "openai": "sk-A1b2C3d4E5f6G7h8I9j0K1l2",
    "openai-project": "sk-proj-Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2",
    "anthropic": "sk-ant-api03-Qq1Rr2Ss3Tt4Uu5Vv6Ww7",
    "huggingface": "hf_AbCdEfGhIjKlMnOpQrStUvWx",
    "wandb": "0123456789abcdef0123456789abcdef01234567",
    "bearer": "tOkEn.AbC123-xyz_987654321",
    "url-password": "Tr0ub4dor-and-3",
}

# Where each secret is typed: a recipe override that the recipe accepts.
CARRIERS = {
    "openai": f"judge.model={SECRETS['openai']}",
    "openai-project": f"judge.base_url=https://{SECRETS['openai-project']}@judge.example.com/v1",
    "anthropic": f"judge.base_url=https://me:{SECRETS['anthropic']}@judge.example.com/v1",
    "huggingface": f"model.base={SECRETS['huggingface']}",
    # (W&B tags are names, whose character set refuses these: see test_secret_as_a_tag)
    "wandb": f"judge.model=WANDB_API_KEY={SECRETS['wandb']}",
    "bearer": f"judge.model='Authorization: Bearer {SECRETS['bearer']}'",
    "url-password": f"judge.base_url=https://alice:{SECRETS['url-password']}@judge.example.com/v1",
}


def leaks(root: Path, secret: str) -> list[str]:
    """Every file under ``root`` whose bytes hold ``secret``."""
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def assert_nowhere(secret: str, root: Path, capsys) -> tuple[str, str]:
    out, err = capsys.readouterr()
    assert secret not in out and secret not in err, (out, err)
    assert not leaks(root, secret)
    return out, err


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_PROJECT", "esc-dist")
    monkeypatch.setenv("WANDB_LOG_MODEL", "false")


# ---------------------------------------------------------------------------------------------
# By shape


@pytest.mark.parametrize("shape", SECRETS)
def test_redact_text_hides_each_shape(shape):
    text = CARRIERS[shape]
    assert SECRETS[shape] not in redact_text(text) and "***" in redact_text(text)


def test_redact_text_keeps_what_is_no_secret():
    for text in (
        "judge.api_key_env=OPENAI_API_KEY",
        "sha256: " + "a" * 64,
        "git_commit: " + "b" * 40,
        "https://api.openai.com/v1",
        "max_new_tokens: 64",
        "runs/tiny-cpu/prefdial/planner/pairs.jsonl",
    ):
        assert redact_text(text) == text
    assert (
        redact_text("https://alice:pw@judge.example.com/v1") == "https://***@judge.example.com/v1"
    )


# ---------------------------------------------------------------------------------------------
# Writers


@pytest.mark.parametrize("shape", SECRETS)
def test_saved_recipe(shape, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["stage", "init", f"run.output_dir={run}", CARRIERS[shape]]) == 0
    assert "***" in (run / "recipe.yaml").read_text()
    assert_nowhere(SECRETS[shape], tmp_path, capsys)


@pytest.mark.parametrize("shape", SECRETS)
def test_judge_manifest_and_wandb(shape, tmp_path, capsys, monkeypatch, offline_wandb):
    pairs = write_pairs(tmp_path / "pairs.jsonl", GENERATOR)
    out = tmp_path / "prefdial" / "generator"
    argv = [
        "judge",
        "--role",
        "generator",
        "--pairs",
        str(pairs),
        "--out",
        str(out),
        CARRIERS[shape],
    ]
    monkeypatch.setattr(sys, "argv", ["esc-dist", *argv])  # W&B records the command line
    assert main(argv) == 0
    manifest = read_json(out / "manifest.json")
    assert "***" in str(manifest["recipe"])
    (wb,) = wait_for_offline_runs(tmp_path / "prefdial" / "generator.wandb" / "wandb")
    assert wb["exited"] and "***" in str(wb["config"])
    assert_nowhere(SECRETS[shape], tmp_path, capsys)


@pytest.mark.parametrize("shape", ["openai", "openai-project", "anthropic", "huggingface", "wandb"])
def test_key_typed_as_the_variable_name(shape, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["stage", "init", f"run.output_dir={run}", f"judge.api_key_env={SECRETS[shape]}"]) == 2
    )
    _, err = assert_nowhere(SECRETS[shape], tmp_path, capsys)
    assert "'judge.api_key_env'" in err and "put the NAME of the variable here, not the key" in err
    assert len(err.strip().splitlines()) == 1 and not run.exists()


@pytest.mark.parametrize(
    "override",
    [
        f"judge.concurrency={SECRETS['openai']}",
        f"judge.timeout=https://alice:{SECRETS['url-password']}@judge.example.com/v1",
        f"judge.max_retries=Bearer {SECRETS['bearer']}",
        f"judge.backend={SECRETS['huggingface']}",
    ],
)
def test_bad_override_errors_hide_the_value(override, tmp_path, capsys):
    assert main(["stage", "init", f"run.output_dir={tmp_path / 'run'}", override]) == 2
    secret = next(s for s in SECRETS.values() if s in override)
    _, err = assert_nowhere(secret, tmp_path, capsys)
    assert "error:" in err and "***" in err


@pytest.mark.parametrize(
    "tag", [f"WANDB_API_KEY={SECRETS['wandb']}", f"Authorization: Bearer {SECRETS['bearer']}"]
)
def test_secret_as_a_tag_is_refused_without_showing_it(tag, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["stage", "init", f"run.output_dir={run}", f"wandb.tags=['{tag}']"]) == 2
    secret = next(s for s in SECRETS.values() if s in tag)
    _, err = assert_nowhere(secret, tmp_path, capsys)
    assert "'wandb.tags' entry" in err and "***" in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_usage_errors_hide_the_value(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["judge", "--role", "generator", "--pairs", "p.jsonl", "--backend", SECRETS["openai"]])
    assert e.value.code == 2
    _, err = assert_nowhere(SECRETS["openai"], tmp_path, capsys)
    assert "invalid choice: '***'" in err


def test_saved_url_credentials_are_not_used(monkeypatch):
    """A recipe saved with a password in judge.base_url holds *** there: refused, clearly."""
    with pytest.raises(LLMError, match="judge.api_key_env"):
        LLMClient("https://***@judge.example.com/v1", "m", api_key_env="")


def test_key_in_the_environment_works_and_is_written_nowhere(
    tmp_path, capsys, monkeypatch, offline_wandb
):
    secret = SECRETS["openai-project"]
    monkeypatch.setenv("ESC_DIST_TEST_JUDGE_KEY", secret)
    server = FakeServer()
    try:
        pairs = write_pairs(tmp_path / "pairs.jsonl", GENERATOR)
        out = tmp_path / "prefdial" / "generator"
        argv = [
            "judge",
            "--role",
            "generator",
            "--pairs",
            str(pairs),
            "--out",
            str(out),
            "--backend",
            "openai",
            f"judge.base_url={server.url}",
            "judge.model=fake-judge",
            "judge.api_key_env=ESC_DIST_TEST_JUDGE_KEY",
        ]
        monkeypatch.setattr(sys, "argv", ["esc-dist", *argv])
        assert main(argv) == 0
    finally:
        server.close()
    assert server.requests
    assert all(r["headers"]["Authorization"] == f"Bearer {secret}" for r in server.requests)
    wait_for_offline_runs(tmp_path / "prefdial" / "wandb")
    assert_nowhere(secret, tmp_path, capsys)
