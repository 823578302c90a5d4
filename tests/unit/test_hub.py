"""Hugging Face Hub ids as model names (esc_dist/models/hub.py): `esc-dist download` against a
local server that answers the Hub API paths huggingface_hub uses (tests/hub_server.py), then
offline resolution from the cache it filled, as a compute node does it (HF_HUB_OFFLINE=1)."""

import hashlib
import json

import pytest

from tests.helpers import assert_one_line_error, run_cli
from tests.hub_server import HubServer


@pytest.fixture(scope="module")
def hub(small_setup, tmp_path_factory):
    """The small tiny model served as ``esc/tiny``; ``esc/gated`` is gated; the cache
    (HF_HOME) filled by ``esc-dist download esc/tiny``."""
    home = tmp_path_factory.mktemp("hf-home")
    server = HubServer(
        {"esc/tiny": small_setup / "tiny", "esc/gated": small_setup / "tiny"}, gated=("esc/gated",)
    )
    env = {"HF_HOME": str(home), "HF_ENDPOINT": server.url}
    r = run_cli(["download", "esc/tiny"], home, env)
    assert r.returncode == 0, r.stderr[-3000:]
    yield {
        "home": home,
        "server": server,
        "env": env,
        "stdout": r.stdout,
        "offline": {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"},
    }
    server.close()


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_fills_the_cache_then_resolves_offline(hub, small_setup, monkeypatch):
    from esc_dist.models import hub as hub_mod

    commit = hub["server"].commit
    snap = hub["home"] / "hub" / "models--esc--tiny" / "snapshots" / commit
    assert f"esc/tiny at revision {commit}" in hub["stdout"] and str(snap) in hub["stdout"]
    # what transformers loads, byte for byte; esc-dist's own markers are not fetched
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert sha(snap / name) == sha(small_setup / "tiny" / name), name
    assert not (snap / "COMPLETED").exists()
    monkeypatch.setenv("HF_HOME", str(hub["home"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub["home"] / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    served = len(hub["server"].requests)
    path = hub_mod.resolve("esc/tiny")
    assert path == str(snap)
    assert hub_mod.resolve("esc/tiny", commit) == str(snap)
    assert hub_mod.identity(path) == {"repo_id": "esc/tiny", "revision": commit}
    assert len(hub["server"].requests) == served  # offline: no request reached the server
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(path).num_parameters() > 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["download", "esc/absent"], "model 'esc/absent' is not on the Hub"),
        (["download", "esc/tiny", "--revision", "v9"], "model 'esc/tiny' has no revision 'v9'"),
        (
            ["download", "esc/gated"],
            "model 'esc/gated' is gated: accept its licence on the Hub and set HF_TOKEN",
        ),
        (["download", "not-an-id"], "'not-an-id' is not a Hugging Face model id (org/name)"),
    ],
)
def test_download_refusals_are_one_line(hub, tmp_path, args, needle):
    assert_one_line_error(run_cli(args, tmp_path, hub["env"]), "download", needle)


def test_an_id_missing_from_the_cache_is_one_line_naming_the_fix(hub, small_setup, tmp_path):
    """A compute node's first stage with an id nobody downloaded: the id, the cache directory
    and the command that fills it, before anything loads."""
    r = run_cli(
        [
            "sft",
            "--role",
            "planner",
            "--data",
            str(small_setup / "data"),
            f"run.output_dir={tmp_path}",
            "model.base=esc/absent",
            "sft.deepspeed=null",
        ],
        tmp_path,
        hub["offline"],
    )
    assert_one_line_error(
        r,
        "sft",
        f"model 'esc/absent' is neither a directory nor in the "
        f"Hugging Face cache ({hub['home'] / 'hub'}); on a node "
        "with internet run `esc-dist download esc/absent`",
    )


def test_an_existing_directory_wins_over_an_id(tmp_path, monkeypatch):
    from esc_dist.models import hub as hub_mod

    monkeypatch.chdir(tmp_path)
    assert hub_mod.is_hub_id("runs/x")
    (tmp_path / "runs" / "x").mkdir(parents=True)
    assert not hub_mod.is_hub_id("runs/x")
    assert not hub_mod.is_hub_id("/abs/path") and not hub_mod.is_hub_id("a/b/c")
    assert not hub_mod.is_hub_id("org/model.Q4.gguf") and not hub_mod.is_hub_id("name")


def test_the_pipeline_trains_from_the_snapshot_and_its_commit_is_in_the_key(
    hub, tmp_path, monkeypatch
):
    from esc_dist.config import load_recipe
    from esc_dist.pipeline import plan, stage_key

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub["home"] / "hub"))
    recipe = load_recipe(None, [f"run.output_dir={tmp_path}", "model.base=esc/tiny"])
    stages = {s.name: s for s in plan(recipe)}
    assert "tiny-model" not in stages and "base-model" not in stages
    sft = stages["sft-planner"]
    model = sft.args[sft.args.index("--model") + 1]
    assert model.endswith(f"models--esc--tiny/snapshots/{hub['server'].commit}")
    pinned = load_recipe(
        None,
        [
            f"run.output_dir={tmp_path}",
            "model.base=esc/tiny",
            f"model.revision={hub['server'].commit}",
        ],
    )
    assert stage_key(sft, recipe) != stage_key(
        {s.name: s for s in plan(pinned)}["sft-planner"], pinned
    )  # the revision is part of the key


def test_sft_from_a_hub_id_offline_records_the_commit(hub, small_setup, tmp_path):
    """Two SFT steps, one process, `model.base: esc/tiny` resolved offline: the manifest names
    the Hub id and the commit it trained from."""
    out = tmp_path / "sft"
    r = run_cli(
        [
            "sft",
            "--role",
            "planner",
            "--data",
            str(small_setup / "data"),
            "--out",
            str(out),
            f"run.output_dir={tmp_path}",
            "model.base=esc/tiny",
            "sft.deepspeed=null",
            "sft.max_steps=2",
            "sft.per_device_train_batch_size=2",
            "sft.save_steps=100",
            "sft.precision=fp32",
        ],
        tmp_path,
        {**hub["offline"], "DS_ACCELERATOR": "cpu"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["inputs"]["model"]["hub"] == {"repo_id": "esc/tiny", "revision": hub["server"].commit}
    assert (
        f"from `esc/tiny` at revision `{hub['server'].commit}` (Hugging Face Hub)"
        in (out / "README.md").read_text()
    )  # the model card names it too


def test_hub_push_uploads_the_export_with_its_card_and_keeps_the_token_out_of_logs(
    hub, small_setup, tmp_path
):
    """hub.push: the export (weights, card, manifest) goes to REPO_PREFIX-STAGE-ROLE through
    huggingface_hub, authenticated with HF_TOKEN, which no output of the run shows."""
    secret = "hf_esc_test_secret_4242"
    out = tmp_path / "sft"
    r = run_cli(
        [
            "sft",
            "--role",
            "planner",
            "--data",
            str(small_setup / "data"),
            "--model",
            str(small_setup / "tiny"),
            "--out",
            str(out),
            f"run.output_dir={tmp_path}",
            "sft.deepspeed=null",
            "sft.max_steps=1",
            "sft.per_device_train_batch_size=2",
            "hub.push=true",
            "hub.repo_prefix=me/esc",
        ],
        tmp_path,
        {**hub["env"], "HF_TOKEN": secret, "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    uploaded = hub["server"].uploads["me/esc-sft-planner"]
    for name in ("README.md", "manifest.json", "config.json", "tokenizer.json"):
        assert uploaded[name] == (out / name).read_bytes(), name
    assert uploaded["model.safetensors"] == (out / "model.safetensors").read_bytes()
    assert f"Bearer {secret}" in hub["server"].tokens
    texts = [
        r.stdout,
        r.stderr,
        *(
            p.read_text(errors="replace")
            for p in tmp_path.rglob("*")
            if p.is_file() and p.suffix in (".json", ".md", ".log", ".yaml", ".txt")
        ),
    ]
    assert not any(secret in t for t in texts)
    wandb_files = [p.read_bytes() for p in tmp_path.rglob("*.wandb")]
    assert wandb_files and not any(secret.encode() in b for b in wandb_files)


def test_hub_push_without_a_repository_prefix_is_one_line(tmp_path):
    r = run_cli(["stage", "init", f"run.output_dir={tmp_path}/run", "hub.push=true"], tmp_path)
    assert_one_line_error(r, "stage", "'hub.push' needs 'hub.repo_prefix' as org/name-prefix")


def test_inference_names_a_hub_model_offline(hub, small_setup, tmp_path):
    """Any model flag takes a Hub id: the tiny model as a planner, resolved from the cache."""
    out = tmp_path / "pred"
    r = run_cli(
        [
            "infer",
            "--mode",
            "planner",
            "--planner",
            "esc/tiny",
            "--data",
            str(small_setup / "data"),
            "--split",
            "test",
            "--out",
            str(out),
            f"run.output_dir={tmp_path}",
            "infer.max_dialogues=1",
            "infer.planner_max_new_tokens=4",
            "infer.decode_seeds=1",
        ],
        tmp_path,
        {**hub["offline"], "DS_ACCELERATOR": "cpu"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "predictions.jsonl").read_text().count("\n") > 0
