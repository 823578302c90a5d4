import dataclasses
import re

import pytest

from esc_dist.config import Recipe, dump_recipe, load_recipe, redact
from esc_dist.errors import ConfigError
from tests.helpers import ROOT


def test_tiny_cpu_recipe_spells_out_the_defaults():
    """Every key of the built-in defaults, the same values, except fp32 where the defaults say
    auto (bf16 on a CPU with native bf16): the test recipe compares runs exactly on any CPU."""
    fp32 = [f"{s}.precision=fp32" for s in ("sft", "dpo", "mine", "infer")]
    assert load_recipe(ROOT / "configs" / "tiny-cpu.yaml") == load_recipe(None, fp32)
    assert Recipe().sft.precision == "auto"


def test_every_recipe_in_configs_loads():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_recipe(path)


def test_dotted_overrides_are_typed():
    r = load_recipe(
        None,
        [
            "data.max_history_messages=8",
            "tiny_model.hidden_size=64",
            "data.split_fractions=[0.5, 0.25, 0.25]",
            "run.name=x",
            "data.max_dialogues.train=10",
            "wandb.mode=offline",
        ],
    )
    assert r.data.max_history_messages == 8 and r.tiny_model.hidden_size == 64
    assert r.data.split_fractions == [0.5, 0.25, 0.25] and r.run.name == "x"
    assert r.data.max_dialogues == {"train": 10, "validation": None, "test": None}
    assert r.wandb.mode == "offline"


def test_float_written_like_yaml_1_1_string(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data:\n  split_fractions: [8e-1, 1e-1, 1e-1]\n")
    assert load_recipe(p).data.split_fractions == [0.8, 0.1, 0.1]


@pytest.mark.parametrize(
    "yaml_text,message",
    [
        ("dta:\n  esconv: x\n", "unknown key 'dta'; did you mean 'data'?"),
        ("data:\n  esconvv: x\n", "unknown key 'data.esconvv'; did you mean 'data.esconv'?"),
        ("tiny_model:\n  hidden_size: big\n", "'tiny_model.hidden_size' must be int, got 'big'"),
        ("tiny_model:\n  hidden_size: 1.5\n", "'tiny_model.hidden_size' must be int"),
        ("model:\n  trust_remote_code: yes please\n", "'model.trust_remote_code' must be bool"),
        ("wandb:\n  mode: loud\n", "choose one of 'auto', 'online', 'offline', 'disabled'"),
        ("data:\n  split_fractions: [0.5, 0.5, 0.5]\n", "summing to 1"),
        ("data:\n  max_dialogues: {training: 3}\n", "unknown split(s) ['training']"),
        ("data: 3\n", "'data' must be a mapping"),
        ("- a\n- b\n", "a recipe must be a mapping"),
        ("data: [\n", "invalid YAML"),
    ],
)
def test_bad_recipes_name_file_and_key(tmp_path, yaml_text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert str(p) in str(e.value) and message in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.esconvv=x", "unknown key 'data.esconvv'"),
        ("nope=1", "unknown key 'nope'"),
        ("run.name.extra=1", "'run.name' is not a section"),
        ("tiny_model.num_layers=two", "'tiny_model.num_layers' must be int"),
        ("no_equals_sign", "expected key.path=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError) as e:
        load_recipe(None, [override])
    assert message in str(e.value) and override in str(e.value), str(e.value)


def test_redact_hides_secrets():
    d = {
        "wandb": {"api_key": "abc123", "project": "p"},
        "judge": [{"token": "t"}],
        "empty_token": None,
        "max_new_tokens": 64,
        "api_key_env": "OPENAI_API_KEY",
        "HUB_TOKEN": "h",
        "client_secret": "s",
    }
    assert redact(d) == {
        "wandb": {"api_key": "***", "project": "p"},
        "judge": [{"token": "***"}],
        "empty_token": None,
        "max_new_tokens": 64,
        "api_key_env": "OPENAI_API_KEY",
        "HUB_TOKEN": "***",
        "client_secret": "***",
    }
    assert "abc123" not in dump_recipe(Recipe())


def test_recipe_round_trips_through_yaml(tmp_path):
    r = load_recipe(None, ["run.name=rt", "data.max_history_messages=6"])
    p = tmp_path / "saved.yaml"
    p.write_text(dump_recipe(r))
    assert load_recipe(p) == r
    assert dataclasses.asdict(r)["run"]["name"] == "rt"


@pytest.mark.parametrize(
    "override, message",
    [
        ("mine.min_new_tokens=-1", "'mine.min_new_tokens' must be >= 0"),
        ("infer.max_new_tokens=0", "'infer.max_new_tokens' must be >= 1"),
        ("infer.planner_max_new_tokens=0", "'infer.planner_max_new_tokens' must be >= 1"),
        ("mine.batch_size=big", "'mine.batch_size' must be int | 'auto', got 'big'"),
        ("mine.batch_size=0", "'mine.batch_size' must be >= 1"),
        ("infer.decode=fast", "'infer.decode' must be 'auto' | 'dynamic' | 'static' | 'compiled'"),
    ],
)
def test_generation_budgets_are_checked(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(None, [override])


def test_an_auto_batch_takes_any_chunk_size():
    r = load_recipe(None, ["mine.batch_size=auto", "mine.chunk_size=7", "infer.batch_size=auto"])
    assert (r.mine.batch_size, r.mine.chunk_size, r.infer.batch_size) == ("auto", 7, "auto")
    with pytest.raises(ConfigError, match="a multiple of mine.batch_size"):
        load_recipe(None, ["mine.batch_size=4", "mine.chunk_size=7"])


def test_a_role_trains_with_its_own_settings(tmp_path):
    """sft.roles / dpo.roles: one role's settings over the section's, typed and checked like
    them; a change to one role's entry changes only that role's training stage key."""
    from esc_dist.pipeline import plan, stage_key

    base = [f"run.output_dir={tmp_path}"]
    r = load_recipe(
        None, [*base, "dpo.roles.planner.learning_rate=1e-6", "dpo.roles.planner.beta=0.3"]
    )
    assert r.dpo.roles == {"planner": {"learning_rate": 1e-6, "beta": 0.3}}  # "1e-6": a float
    assert (r.for_role("planner").dpo.learning_rate, r.for_role("planner").dpo.beta) == (1e-6, 0.3)
    assert r.for_role("generator").dpo == dataclasses.replace(r.dpo, roles={})
    assert r.for_role("planner").sft == r.sft  # no sft.roles: the section's
    for bad, message in (
        ("dpo.roles.planer.beta=1", "unknown role 'dpo.roles.planer'"),
        ("dpo.roles.planner.bta=1", "did you mean 'dpo.roles.planner.beta'"),
        ("dpo.roles.planner.learning_rate=-1", "(the settings of dpo.roles.planner)"),
        ("sft.roles.vanilla.max_length=many", "'sft.roles.vanilla.max_length' must be int"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_recipe(None, [*base, bad])
    keys = {}
    for over in ([], ["dpo.roles.planner.learning_rate=1e-6"]):
        recipe = load_recipe(None, [*base, *over])
        keys[tuple(over)] = {s.name: stage_key(s, recipe) for s in plan(recipe)}
    before, after = keys.values()
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"dpo-planner"}  # the stages it feeds see a new model only once it is made
    # the planner's validation guard set for the planner alone still gives its DPO the data
    guard = load_recipe(None, [*base, "dpo.roles.planner.validation_every=5"])
    assert "--data" in next(s for s in plan(guard) if s.name == "dpo-planner").args
