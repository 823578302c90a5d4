"""The vLLM backend's settings, without a server (tests/distributed/test_vllm.py runs a real
one): validation, the context prompts are fitted to, an unreachable server."""

import pytest

from esc_dist.config import load_recipe
from esc_dist.errors import ConfigError
from esc_dist.generation.server import ServerError, check_served, server_context
from tests.helpers import ROOT

TINY = ROOT / "configs" / "tiny-cpu.yaml"


@pytest.mark.parametrize("section", ["mine", "infer"])
def test_backend_needs_exactly_one_server(section):
    for extra in ([], ["vllm.url=http://127.0.0.1:8000/v1", "vllm.python=/opt/vllm/bin/python"]):
        with pytest.raises(ConfigError, match=f"'{section}.backend: vllm' needs a server"):
            load_recipe(TINY, [f"{section}.backend=vllm", *extra])
    r = load_recipe(TINY, [f"{section}.backend=vllm", "vllm.python=/opt/vllm/bin/python"])
    assert getattr(r, section).backend == "vllm"


def test_bad_server_settings_name_the_key():
    with pytest.raises(ConfigError, match="vllm.url"):
        load_recipe(TINY, ["vllm.url=127.0.0.1:8000"])
    with pytest.raises(ConfigError, match="vllm.args"):
        load_recipe(TINY, ["vllm.args={a: 1}"])
    with pytest.raises(ConfigError, match=r"vllm.args\[1\]' must be str"):
        load_recipe(TINY, ["vllm.args=[--max-model-len, 512]"])
    r = load_recipe(TINY, ['vllm.args=[--max-model-len, "512"]'])
    assert r.vllm.args == ["--max-model-len", "512"]


def test_infer_backend_hf_keeps_stage_keys():
    """infer.backend came later: at hf it stays out of the keys (older outputs stay current)."""
    from esc_dist.config import key_view

    r = load_recipe(TINY, [])
    assert "backend" not in key_view(r)["infer"]
    assert (
        key_view(load_recipe(TINY, ["infer.backend=vllm", "vllm.python=/x"]))["infer"]["backend"]
        == "vllm"
    )


def test_server_context_is_the_shorter():
    settings = {"url": None, "args": ["--enforce-eager", "--max-model-len", "512"]}
    assert server_context(settings, 2048) == 512
    assert server_context(settings, 300) == 300
    assert server_context({"url": None, "args": []}, 2048) == 2048


def test_no_server_at_the_url_is_one_error(tmp_path):
    with pytest.raises(ServerError, match="no OpenAI-compatible server answers"):
        check_served("http://127.0.0.1:9/v1", tmp_path)
