"""The private library names behind one door (esc_dist/internals.py): all present in the pinned
stack, a warning once on another version, one line where a name is missing."""

import logging

import pytest

from esc_dist import internals
from esc_dist.internals import MissingInternal, internal, patched, require_method

# every private name the package uses, as it asks for it
USED = [
    ("trl.trainer.dpo_trainer", "DataCollatorForPreference"),
    ("trl.trainer.dpo_trainer", "prepare_deepspeed"),
    ("trl.trainer.dpo_trainer", "add_fused_lm_head"),
    ("trl.trainer.utils", "FusedCausalLMOutput"),
    ("transformers.cache_utils", "DynamicLayer"),
    ("transformers.cache_utils", "StaticLayer"),
    ("transformers.utils.chat_template_utils", "render_jinja_template"),
    ("deepspeed.checkpoint.ds_to_universal", "main"),
    ("deepspeed.comm.torch", "build_shm_op"),
]


@pytest.mark.parametrize("path,name", USED)
def test_every_internal_is_in_the_pinned_stack(path, name):
    assert internal(path, name) is not None


def test_the_pinned_versions_are_the_checked_ones():
    from tests.helpers import ROOT

    lines = (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
    pins = dict(ln.strip().split("==") for ln in lines if "==" in ln and not ln.startswith("#"))
    for package, version in internals.CHECKED.items():
        assert pins[package] == version == internals.installed(package)


def test_the_attention_a_model_runs_is_read_behind_the_door():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        vocab_size=32,
    )  # fmt: skip
    for attn in ("sdpa", "eager"):
        model = LlamaForCausalLM._from_config(config, attn_implementation=attn)
        assert internals.attention_of(model) == attn


def test_overridden_private_methods_exist():
    from transformers import Trainer
    from trl import DPOTrainer, SFTTrainer

    overridden = [(DPOTrainer, "_prepare_dataset"), (DPOTrainer, "_get_train_sampler")]
    overridden += [(SFTTrainer, "_get_train_sampler"), (Trainer, "_get_train_sampler")]
    for cls, name in overridden:
        require_method(cls, name)


def test_a_missing_name_is_one_line(monkeypatch):
    import trl.trainer.utils

    monkeypatch.delattr(trl.trainer.utils, "FusedCausalLMOutput")
    with pytest.raises(MissingInternal) as e:
        internal("trl.trainer.utils", "FusedCausalLMOutput")
    msg = str(e.value)
    assert "\n" not in msg and "trl 1.16.0 has no trl.trainer.utils.FusedCausalLMOutput" in msg
    assert "checked on trl 1.16.0" in msg
    with pytest.raises(MissingInternal, match="has no trl.nonexistent_module"):
        internal("trl.nonexistent_module", "x")

    class Lib:
        pass

    with pytest.raises(MissingInternal, match="_prepare_dataset"):
        require_method(Lib, "_prepare_dataset")


def test_another_version_warns_once(monkeypatch, caplog):
    monkeypatch.setitem(internals.CHECKED, "trl", "0.0.1")
    monkeypatch.setattr(internals, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="esc_dist"):
        internal("trl.trainer.utils", "FusedCausalLMOutput")
        internal("trl.trainer.dpo_trainer", "DataCollatorForPreference")
    warnings = [r for r in caplog.records if "checked on 0.0.1" in r.getMessage()]
    assert len(warnings) == 1 and "trl 1.16.0 is installed" in warnings[0].getMessage()


def test_patched_restores_the_original():
    import trl.trainer.dpo_trainer as trl_dpo

    original = trl_dpo.prepare_deepspeed
    with patched("trl.trainer.dpo_trainer", "prepare_deepspeed", lambda f: lambda *a: f):
        assert trl_dpo.prepare_deepspeed is not original
        assert trl_dpo.prepare_deepspeed() is original
    assert trl_dpo.prepare_deepspeed is original


def test_a_second_command_in_one_process_finds_no_stale_group(monkeypatch):
    """A command tears its process group down (dist.shutdown); a second command in the same
    process (a notebook) starts a new one: accelerate's state of the first, which describes the
    destroyed group, must not reach it (its first barrier failed: 'Default process group has
    not been initialized')."""
    import torch.distributed as td
    from accelerate import PartialState

    from esc_dist import dist

    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    dist.init(60)
    assert td.is_initialized()  # accelerate made a gloo group of one on this CPU
    PartialState().wait_for_everyone()
    dist.shutdown()
    assert not td.is_initialized()
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    dist.init(60)
    PartialState().wait_for_everyone()
    dist.shutdown()
