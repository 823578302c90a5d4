"""What a cluster user meets before the first step: attention backends, the mining backend,
the GPU a rank binds under each srun mode, the global batch across node counts, the signal lead
time. GPU-only conditions are driven through the functions that read them (no GPU here)."""

import pytest

from tests.helpers import assert_one_line_error, run_cli, wait_for_offline_runs


def test_flash_attention_named_without_the_package_is_one_line(tmp_path):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    r = run_cli(
        [
            "stage",
            "init",
            f"run.output_dir={tmp_path}/run",
            "model.attn_implementation=flash_attention_2",
        ],
        tmp_path,
    )
    assert_one_line_error(
        r,
        "stage",
        "'model.attn_implementation' is flash_attention_2 but the "
        "flash-attn package is not installed here: `pip install "
        "flash-attn --no-build-isolation`",
    )


def test_auto_attention_is_sdpa_without_a_gpu_and_says_so(caplog):
    from esc_dist.models import loading

    loading._LOGGED.clear()
    with caplog.at_level("INFO"):
        assert loading.attention("auto") == "sdpa" and loading.attention(None) == "sdpa"
    assert "attention: sdpa (model.attn_implementation: auto)" in caplog.text
    assert loading.attention("eager") == "eager"


def test_auto_attention_picks_flash_on_a_gpu_where_it_imports(monkeypatch):
    import importlib.util

    from esc_dist import dist
    from esc_dist.models import loading

    monkeypatch.setattr(dist, "has_cuda", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "flash_attn" else real(name, *a),
    )
    assert loading.attention("auto") == "flash_attention_2"


def test_packing_needs_flash_attention_and_sdpa_still_mixes_packed_examples(small_setup):
    """sft.packing is refused with sdpa or eager named, allowed with auto (padded where auto
    resolves to sdpa). Why: under SDPA, transformers does not split attention at the position
    ids' restarts, so the second of two packed sequences sees the first (checked here: if it
    ever does split them, this test says the refusal can go)."""
    import torch
    from transformers import AutoModelForCausalLM

    from esc_dist.config import ConfigError, load_recipe

    for attn in ("sdpa", "eager"):
        with pytest.raises(ConfigError, match="'sft.packing' needs padding-free attention"):
            load_recipe(None, ["sft.packing=true", f"model.attn_implementation={attn}"])
    load_recipe(None, ["sft.packing=true", "model.attn_implementation=auto"])
    m = AutoModelForCausalLM.from_pretrained(
        str(small_setup / "tiny"), attn_implementation="sdpa"
    ).eval()
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(5, 1000, (1, 7), generator=g), torch.randint(5, 1000, (1, 5), generator=g)
    with torch.no_grad():
        alone = m(input_ids=b).logits
        packed = m(
            input_ids=torch.cat([a, b], 1),
            position_ids=torch.cat([torch.arange(7), torch.arange(5)])[None],
        ).logits
    assert (packed[:, 7:] - alone).abs().max() > 1e-3


def test_the_vllm_backend_without_a_server_is_refused_at_validation(tmp_path):
    r = run_cli(["stage", "init", f"run.output_dir={tmp_path}/run", "mine.backend=vllm"], tmp_path)
    assert_one_line_error(r, "stage", "'mine.backend: vllm' needs a server")


@pytest.mark.parametrize(
    "gpus,local,expected",
    [
        (1, 0, 0),
        (1, 3, 0),  # --gpus-per-task=1 / --gpu-bind=single: one device per task
        (8, 0, 0),
        (8, 5, 5),  # every task sees the node's GPUs (or the site's CUDA_VISIBLE_DEVICES)
        (4, 3, 3),
        (2, 3, None),  # 4 tasks on 2 visible GPUs: a launch mistake
    ],
)
def test_gpu_binding_under_each_srun_mode(monkeypatch, gpus, local, expected):
    import torch

    from esc_dist import dist
    from esc_dist.config import ConfigError

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_RANK", str(local))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(gpus))))
    if expected is None:
        with pytest.raises(ConfigError, match=f"local rank {local} sees {gpus} GPU"):
            dist.cuda_device()
    else:
        assert dist.cuda_device() == expected


def test_srun_task_variables_give_the_local_rank(monkeypatch):
    from esc_dist import dist

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")  # recorded, so that what launcher_env sets is undone
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[03-04]")
    dist.launcher_env()
    assert (dist.rank(), dist.world_size(), dist.local_rank()) == (5, 8, 1)
    assert __import__("os").environ["MASTER_ADDR"] == "gpu03"


def test_a_global_batch_trains_the_same_steps_on_any_node_count(monkeypatch):
    """sft.global_batch_size: the accumulation follows the world size, so the checkpoint key
    (and the steps) of a run requeued onto fewer GPUs are those of the first attempt."""
    from esc_dist.config import ConfigError, load_recipe
    from esc_dist.train.checkpoints import training_key
    from esc_dist.train.common import accumulation

    recipe = load_recipe(None, ["sft.global_batch_size=64", "sft.per_device_train_batch_size=2"])
    keys = {}
    for world, accumulate in ((16, 2), (8, 4), (32, 1)):
        monkeypatch.setenv("WORLD_SIZE", str(world))
        assert accumulation(recipe.sft) == accumulate
        keys[world] = training_key("sft", "planner", recipe, recipe.sft, {})
    assert len(set(keys.values())) == 1
    monkeypatch.setenv("WORLD_SIZE", "24")
    with pytest.raises(
        ConfigError, match="global_batch_size 64 is not a multiple of 2 per device x 24 ranks"
    ):
        accumulation(recipe.sft)
    fixed = load_recipe(
        None, ["sft.per_device_train_batch_size=2", "sft.gradient_accumulation_steps=2"]
    )
    monkeypatch.setenv("WORLD_SIZE", "16")
    k16 = training_key("sft", "planner", fixed, fixed.sft, {})
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert training_key("sft", "planner", fixed, fixed.sft, {}) != k16  # a fixed accumulation


def test_keys_added_later_at_their_neutral_value_leave_stage_keys_alone(tmp_path):
    """model.revision and *.global_batch_size left at null do not enter stage keys: outputs
    made before these keys existed stay current; set, they do enter."""
    import dataclasses

    from esc_dist.config import NEUTRAL_KEYS, key_view, load_recipe

    recipe = load_recipe(None, [f"run.output_dir={tmp_path}"])
    view = key_view(recipe)
    full = dataclasses.asdict(recipe)
    for section, key in NEUTRAL_KEYS:
        assert key in full[section] and key not in view[section]
    pinned = key_view(load_recipe(None, [f"run.output_dir={tmp_path}", "model.revision=abc"]))
    assert pinned["model"]["revision"] == "abc"


def test_checkpoints_go_once_the_export_is_complete(small_setup, tmp_path):
    """keep_checkpoints: false (the default) removes a stage's checkpoints after its export;
    true keeps them. The export loads either way."""
    from transformers import AutoModelForCausalLM

    for keep in (False, True):
        out = tmp_path / f"keep-{keep}" / "sft"
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
                f"run.output_dir={out.parent}",
                "sft.deepspeed=null",
                "sft.max_steps=4",
                "sft.save_steps=2",
                "sft.per_device_train_batch_size=2",
                "sft.precision=fp32",
                f"sft.keep_checkpoints={str(keep).lower()}",
            ],
            tmp_path,
            {"DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline"},
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        ckpts = out.with_name("sft.work") / "checkpoints"
        (run,) = wait_for_offline_runs(out.with_name("sft.work") / "wandb")
        # the export, logged by reference (nothing uploaded), in the run of its stage's job
        (art,) = run["artifacts"]
        assert art["type"] == "model" and art["name"] == "tiny-cpu-sft-planner"
        assert art["refs"] and all(ref.startswith(out.resolve().as_uri()) for ref in art["refs"])
        assert run["run"]["job_type"] == "sft-planner"
        if keep:
            assert sorted(p.name for p in ckpts.glob("checkpoint-*")) == [
                "checkpoint-2",
                "checkpoint-4",
            ]
            meta = __import__("json").loads((ckpts / "checkpoint-4" / "esc_dist.json").read_text())
            assert meta["save_seconds"] > 0 and meta["bytes"] > 0  # what the signal lead needs
        else:
            assert not ckpts.exists()
            assert "removed the checkpoints of sft.work" in r.stderr + r.stdout
        assert AutoModelForCausalLM.from_pretrained(str(out)).num_parameters() > 0


def test_a_save_that_would_not_fit_stops_before_writing(small_setup, tmp_path, monkeypatch):
    """The free-space check before a checkpoint: its size is the previous checkpoint's, else
    parameters x 12 bytes in fp32 (counted from the starting model's safetensors headers); too
    little space is one line naming the directory and both sizes. Free space is injected here (the
    machine's disk is not full)."""
    from collections import namedtuple

    from safetensors import safe_open
    from transformers import TrainerControl, TrainerState

    from esc_dist.train import disk

    n = disk.parameters(small_setup / "tiny")
    with safe_open(str(small_setup / "tiny" / "model.safetensors"), "pt") as f:
        assert n == sum(f.get_tensor(k).numel() for k in f.keys())
    ckpts = tmp_path / "work" / "checkpoints"
    ckpts.mkdir(parents=True)
    guard = disk.disk_guard(str(small_setup / "tiny"), ckpts, 4)
    usage = namedtuple("usage", "total used free")
    control, state = TrainerControl(should_save=True), TrainerState(global_step=6)
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: usage(1, 0, n * 13))
    guard.on_step_end(None, state, control)  # fits: parameters x 12 bytes in fp32
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: usage(1, 0, n * 10))
    with pytest.raises(
        disk.DiskFull,
        match=r"checkpoint-6 needs about .* MB but only .* MB "
        r"are free there",
    ) as e:
        guard.on_step_end(None, state, control)
    assert str(ckpts) in str(e.value) and "\n" not in str(e.value)
    previous = ckpts / "checkpoint-4"  # a measured checkpoint sets the size from then on
    previous.mkdir()
    (previous / "weights.bin").write_bytes(b"x" * 5000)
    (previous / "COMPLETED").write_text("")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: usage(1, 0, 6000))
    guard.on_step_end(None, state, control)
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda p: usage(1, 0, 5000))
    with pytest.raises(disk.DiskFull):
        guard.on_step_end(None, state, control)
    guard.on_step_end(None, state, TrainerControl(should_save=False))  # no save: no check


def fake_nvidia_smi(tmp_path) -> dict:
    """A PATH whose nvidia-smi lists two GPUs: a GPU node as its driver sees it (this
    machine's torch is a CPU build)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "nvidia-smi"
    tool.write_text(
        "#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n"
        "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'\n"
    )
    tool.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_doctor_reports_every_check_on_a_healthy_cpu_node(tmp_path):
    r = run_cli(["doctor", f"run.output_dir={tmp_path}/run"], tmp_path)
    assert r.returncode == 0, r.stderr
    names = [line.split()[1] for line in r.stdout.splitlines()]
    assert names == ["packages", "gpus", "bf16", "attention", "model", "hf", "disk", "wandb"]
    assert "torch 2." in r.stdout and "deepspeed" in r.stdout and "trl 1." in r.stdout
    assert (
        "none (CPU run: gloo" in r.stdout and "sdpa (model.attn_implementation: auto)" in r.stdout
    )


def test_a_cpu_torch_on_a_gpu_node_is_an_error_for_doctor_and_every_stage(tmp_path, small_setup):
    env = fake_nvidia_smi(tmp_path)
    r = run_cli(["doctor", f"run.output_dir={tmp_path}/run"], tmp_path, env)
    assert_one_line_error(r, "doctor", "1 check(s) failed: gpus")
    assert "error gpus       the driver lists 2 GPU(s) but torch" in r.stdout
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
            str(tmp_path / "sft"),
            f"run.output_dir={tmp_path}",
            "sft.deepspeed=null",
        ],
        tmp_path,
        env,
    )
    assert_one_line_error(r, "sft", "the driver lists 2 GPU(s) but torch")
    assert not (tmp_path / "sft").exists()


def test_doctor_finds_a_missing_model_and_too_little_disk(tmp_path):
    huge = (
        "model.shape={hidden_size: 65536, num_hidden_layers: 400, intermediate_size: "
        "262144, num_attention_heads: 64, vocab_size: 256000}"
    )
    r = run_cli(
        ["doctor", f"run.output_dir={tmp_path}/run", "model.base=esc/absent", huge],
        tmp_path,
        {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert_one_line_error(r, "doctor", "2 check(s) failed: model, disk")
    lines = {line.split()[1]: line for line in r.stdout.splitlines()}
    assert lines["model"].startswith("error") and "esc-dist download esc/absent" in lines["model"]
    assert lines["disk"].startswith("error") and "the pipeline needs about" in lines["disk"]


@pytest.mark.parametrize("recipe,billions", [("qwen2.5-7b", "7.62"), ("llama3.1-8b", "8.03")])
def test_the_7b_recipes_dry_run_without_a_gpu(tmp_path, recipe, billions):
    """Stages, the Slurm jobs and the estimates, from the recipe's own model shape, with the
    weights nowhere on this machine; nothing is written."""
    from esc_dist.config import load_recipe
    from esc_dist.pipeline import plan
    from tests.helpers import ROOT

    run = tmp_path / "run"
    r = run_cli(
        [
            "pipeline",
            "--config",
            str(ROOT / "configs" / f"{recipe}.yaml"),
            "--dry-run",
            f"run.output_dir={run}",
        ],
        ROOT,
        {"HF_HOME": str(tmp_path / "hf")},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    stages = plan(load_recipe(ROOT / "configs" / f"{recipe}.yaml", [f"run.output_dir={run}"]))
    assert sum(" to run " in line for line in r.stdout.splitlines()) == len(stages)
    assert f"parameters: {billions} B" in r.stdout
    assert "ZeRO-3 over 8 GPUs" in r.stdout and "GB of model states per GPU" in r.stdout
    jobs = [line for line in r.stdout.splitlines() if " sbatch " in line]
    # one job per stage, inference carrying its evaluation
    assert len(jobs) == len([s for s in stages if not s.name.startswith("eval-")])
    assert all("--signal=B:USR1@600" in j for j in jobs)
    assert not run.exists()


def test_an_export_carries_its_model_card(small_setup, tmp_path):
    """README.md of an export: role, stage, what it started from, the data and its licence,
    the training settings and metrics, where its evaluation goes; listed in the manifest's
    outputs like every other file."""
    import json

    from esc_dist.train.card import model_card

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
            "sft.max_steps=2",
            "sft.per_device_train_batch_size=2",
            "sft.learning_rate=3e-4",
            "sft.precision=fp32",
        ],
        tmp_path,
        {"DS_ACCELERATOR": "cpu"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    card = (out / "README.md").read_text()
    m = json.loads((out / "manifest.json").read_text())
    assert card == model_card({k: v for k, v in m.items() if k != "outputs"})
    assert "README.md" in m["outputs"]
    for text in (
        "# tiny-cpu: planner, SFT",
        "picks the next ESConv support strategy",
        f"from `{small_setup / 'tiny'}`",
        "CC BY-NC 4.0",
        "- learning_rate: 0.0003",
        "- steps: 2",
        f"- final training loss: {m['final_loss']}",
        "Evaluated as `decoupled-sft`",
    ):
        assert text in card, text


def test_sft_logs_a_validation_loss(small_setup, tmp_path):
    """sft.eval_steps: the loss on validation turns every N steps and after the last one, in
    the log history and the manifest; it falls as training fits the task."""
    import json

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
            "sft.max_steps=5",
            "sft.per_device_train_batch_size=4",
            "sft.learning_rate=3e-3",
            "sft.precision=fp32",
            "sft.eval_steps=2",
            "sft.eval_examples=16",
            "sft.keep_checkpoints=true",
            "sft.save_steps=5",
        ],
        tmp_path,
        {"DS_ACCELERATOR": "cpu"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads(
        (
            out.with_name("sft.work") / "checkpoints" / "checkpoint-5" / "trainer_state.json"
        ).read_text()
    )
    evals = [(h["step"], h["eval_loss"]) for h in state["log_history"] if "eval_loss" in h]
    m = json.loads((out / "manifest.json").read_text())
    assert [s for s, _ in evals] == [2, 4, 5], evals  # every 2 steps and the last one
    assert m["final_eval_loss"] == evals[-1][1] < evals[0][1]


def test_liger_is_auto_off_without_a_gpu_and_refused_when_required(tmp_path, caplog):
    """liger: null turns Liger's kernels on only with CUDA and the package (off here, logged,
    nothing passed to the trainer); true where it cannot run is one line."""
    import importlib.util

    from esc_dist.config import load_recipe
    from esc_dist.train.arguments import use_liger

    recipe = load_recipe(None, [f"run.output_dir={tmp_path}"])
    with caplog.at_level("INFO"):
        assert use_liger(recipe.sft) is False
    assert "liger kernels: off (no CUDA) (liger: auto)" in caplog.text
    assert use_liger(load_recipe(None, ["sft.liger=false"]).sft) is False
    needle = (
        "'sft.liger' is true but the liger-kernel package is not installed here"
        if importlib.util.find_spec("liger_kernel") is None
        else "'sft.liger' is true but Liger's kernels need a CUDA GPU"
    )
    r = run_cli(["stage", "init", f"run.output_dir={tmp_path}/run", "sft.liger=true"], tmp_path)
    assert_one_line_error(r, "stage", needle)


def test_after_the_export_checkpoints_stale_ones_and_the_best_step_copy_go(tmp_path, caplog):
    from esc_dist.train.disk import remove_checkpoints

    work = tmp_path / "dpo-planner.work"
    for d in (
        "checkpoints/checkpoint-20",
        "checkpoints-stale-1/checkpoint-4",
        "guard-best",
        "tokenized",
    ):
        (work / d).mkdir(parents=True)
        (work / d / "weights.bin").write_bytes(b"x" * 1000)
    with caplog.at_level("INFO"):
        remove_checkpoints(work / "checkpoints", [work / "guard-best"])
    assert sorted(p.name for p in work.iterdir()) == ["tokenized"]
    assert "removed the checkpoints of dpo-planner.work (3.00 KB" in caplog.text
