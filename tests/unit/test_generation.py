"""The batched generation engine in one process: token choice, decoding, chunks, plan, merge."""

import json
import logging
import shutil

import pytest
import torch

from esc_dist.generation import (
    EngineConfig,
    MergeError,
    PlanMismatch,
    Replica,
    Sampling,
    WorkItem,
    choose_tokens,
    generate,
    load_tokenizer,
    merge,
    prompt_ids,
    row_seed,
)
from tests.helpers import LogCapture, gen_setup

pytestmark = pytest.mark.usefixtures("one_process")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, esconv_dir):
    return gen_setup(tmp_path_factory, esconv_dir)


def _choose(logits, do_sample, temperature, top_p, top_k, u):
    n = logits.shape[0]
    return choose_tokens(
        logits,
        torch.tensor(do_sample),
        torch.full((n,), temperature),
        torch.full((n,), top_p),
        torch.full((n,), top_k, dtype=torch.long),
        torch.tensor(u, dtype=torch.float32),
    )


def test_choose_tokens_filters_and_row_independence():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    argmax = logits.argmax(-1)
    # greedy rows and top_k=1 rows give the argmax whatever u is
    assert torch.equal(_choose(logits, [False] * 4, 1.0, 1.0, 0, [0.3] * 4), argmax)
    assert torch.equal(_choose(logits, [True] * 4, 0.7, 1.0, 1, [0.99, 0.5, 0.01, 0.7]), argmax)
    # a row's token depends only on its own logits and u
    full = _choose(logits, [True] * 4, 0.7, 0.9, 0, [0.1, 0.5, 0.9, 0.42])
    for r in range(4):
        alone = _choose(logits[r : r + 1], [True], 0.7, 0.9, 0, [[0.1, 0.5, 0.9, 0.42][r]])
        assert alone.item() == full[r].item()
    # top-p: only the nucleus is ever drawn; top-k: only the k best
    row = torch.tensor([[4.0, 3.0, 2.0, 0.0, -1.0, -2.0]])
    probs = torch.softmax(row, -1)[0]
    nucleus = int((probs.cumsum(0) - probs < 0.8).sum())
    us = [i / 1000 for i in range(1000)]
    drawn = {_choose(row, [True], 1.0, 0.8, 0, [u]).item() for u in us}
    assert drawn == set(range(nucleus))
    assert {_choose(row, [True], 1.0, 1.0, 2, [u]).item() for u in us} == {0, 1}
    assert {_choose(row, [True], 1.0, 1.0, 0, [u]).item() for u in us} == set(range(6))


def test_row_seed_is_stable_and_distinct():
    assert row_seed(42, "mine-planner", "t1", 0) == row_seed(42, "mine-planner", "t1", 0)
    seeds = {row_seed(42, s, k, i) for s in ("a", "b") for k in ("t1", "t2") for i in (0, 1)}
    assert len(seeds) == 8 and all(0 <= s < 2**63 for s in seeds)


def _prompts(setup, n):
    from esc_dist.data.tasks import load_task

    rows = list(load_task(setup / "data", "vanilla")["train"])[:n]
    return [(r["id"], r["prompt"]) for r in rows]


@pytest.mark.parametrize("prefill", ["batched", "per_row"])
def test_greedy_batch_equals_transformers_generate(setup, prefill):
    """The KV-cache loop gives what HF generate gives on the left-padded batch, row by row,
    whether the prompts are prefilled as one padded batch (GPU default) or one by one and
    stacked (CPU default)."""
    tok = load_tokenizer(setup / "tiny")
    rep = Replica(setup / "tiny", tok, prefill=prefill)
    with torch.no_grad():  # a sharper model than the random init, so greedy paths vary
        for p in rep.model.parameters():
            p.mul_(3.0)
    prompts = _prompts(setup, 8)[::2]
    items = [WorkItem(i, m, Sampling(max_new_tokens=10)) for i, m in prompts]
    ids = [prompt_ids(tok, it.messages) for it in items]
    assert len({len(x) for x in ids}) > 1  # the batch is padded
    if prefill == "per_row":  # the stacked-cache path is taken, not the fallback
        with torch.inference_mode():
            assert rep._prefill_per_row(ids, max(map(len, ids))) is not None
    ours = rep.generate_batch(items, ids, [0] * len(items))
    enc = tok.pad({"input_ids": ids}, return_tensors="pt")
    ref = rep.model.generate(**enc, max_new_tokens=10, do_sample=False)
    for r, row in zip(ours, ref):
        assert r["text"] == tok.decode(row[enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len({r["text"] for r in ours}) == len(ours)


def _sharp_replica(model_dir, tok, **kw) -> Replica:
    rep = Replica(model_dir, tok, **kw)
    with torch.no_grad():  # a sharper model than the random init, so greedy paths vary
        for p in rep.model.parameters():
            p.mul_(3.0)
    return rep


def _mixed_items(setup, n=6):
    """Greedy and sampled items of several prompt lengths and token budgets."""
    prompts = _prompts(setup, n)
    greedy = Sampling(max_new_tokens=9)
    sampled = Sampling(max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9)
    return [WorkItem(i, m, greedy if k % 2 else sampled) for k, (i, m) in enumerate(prompts)]


@pytest.mark.parametrize("prefill", ["batched", "per_row"])
def test_static_decode_gives_the_dynamic_tokens(setup, prefill):
    """The static cache (fixed-width mask, a cache allocated once) decodes the very tokens of
    the growing cache, greedy and sampled, from either prefill."""
    tok = load_tokenizer(setup / "tiny")
    items = _mixed_items(setup)
    ids = [prompt_ids(tok, it.messages) for it in items]
    seeds = [row_seed(3, "s", it.seed_key, 0) for it in items]
    dynamic = _sharp_replica(setup / "tiny", tok, prefill=prefill, decode="dynamic")
    static = _sharp_replica(setup / "tiny", tok, prefill=prefill, decode="static")
    assert static.decode == "static" and Replica(setup / "tiny", tok).decode == "dynamic"
    used = []
    real = static._static_cache
    static._static_cache = lambda *a: used.append(real(*a)) or used[-1]
    want = dynamic.generate_batch(items, ids, seeds)
    assert static.generate_batch(items, ids, seeds) == want
    assert used and all(c is not None for c in used)  # the static path ran, no fallback
    assert len({r["text"] for r in want}) > 1
    # the next batch of the same shape decodes in the same (reset) cache, as CUDA graphs need
    assert static.generate_batch(items, ids, seeds) == want and used[-1] is used[0]
    assert static.generate_batch(items[1:], ids[1:], seeds[1:]) == want[1:]
    assert used[-1] is not used[0]


def test_the_static_step_traces_as_one_graph(setup):
    """What ``decode: compiled`` compiles (one decoding step over the static cache) traces
    without a graph break, as CUDA graphs need, and decodes the same tokens. On CPU it is traced
    by TorchDynamo alone (no code generated); on a GPU ``compiled`` runs it as CUDA graphs."""
    tok = load_tokenizer(setup / "tiny")
    items = _mixed_items(setup, 4)
    ids = [prompt_ids(tok, it.messages) for it in items]
    seeds = [row_seed(3, "s", it.seed_key, 0) for it in items]
    want = _sharp_replica(setup / "tiny", tok).generate_batch(items, ids, seeds)
    rep = _sharp_replica(setup / "tiny", tok, decode="static")
    torch._dynamo.reset()
    rep._step = torch.compile(rep.model, backend="eager", fullgraph=True, dynamic=False)
    assert rep.generate_batch(items, ids, seeds) == want
    torch._dynamo.reset()


def test_compiled_decode_is_refused_without_cuda(setup):
    from esc_dist.config import load_recipe
    from esc_dist.errors import ConfigError
    from esc_dist.generation.stage import engine_config, settings_errors

    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        Replica(setup / "tiny", load_tokenizer(setup / "tiny"), decode="compiled")
    recipe = load_recipe(None, ["mine.decode=compiled"])
    with pytest.raises(ConfigError, match=r"^mine: decode: compiled .* needs a CUDA GPU"):
        with settings_errors("mine"):
            engine_config(recipe, recipe.mine, "x")


def test_a_sliding_window_model_decodes_with_the_growing_cache(setup, tmp_path):
    """A cache that is not plain full attention (here Mistral's sliding window) cannot be made
    static: ``decode: static`` says so once and decodes as ``dynamic`` does."""
    cfg = json.loads((setup / "tiny" / "config.json").read_text())
    model = tmp_path / "sliding"
    shutil.copytree(setup / "tiny", model)
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=8)
    (model / "config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(model)
    items = _mixed_items(setup, 4)
    ids = [prompt_ids(tok, it.messages) for it in items]
    seeds = [row_seed(3, "s", it.seed_key, 0) for it in items]
    want = _sharp_replica(model, tok).generate_batch(items, ids, seeds)
    cap = LogCapture()
    logging.getLogger("esc_dist").addHandler(cap)
    try:
        rep = _sharp_replica(model, tok, decode="static")
        assert rep.generate_batch(items, ids, seeds) == want
        assert rep.generate_batch(items, ids, seeds) == want
    finally:
        logging.getLogger("esc_dist").removeHandler(cap)
    assert len([x for x in cap.lines if "growing cache" in x]) == 1


def test_min_new_tokens_bars_stop_tokens_like_transformers(setup):
    """With a model that wants to stop at once, min_new_tokens keeps every row going for that
    many tokens, exactly as HF generate's min_new_tokens does."""
    tok = load_tokenizer(setup / "tiny")
    rep = Replica(setup / "tiny", tok)

    def favour_eos(module, args, out):  # make the end-of-text token the favourite everywhere
        out = out.clone()
        out[..., tok.eos_token_id] += 100.0
        return out

    rep.model.get_output_embeddings().register_forward_hook(favour_eos)
    prompts = _prompts(setup, 6)
    ids = [prompt_ids(tok, m) for _, m in prompts]
    eager = rep.generate_batch(
        [WorkItem(i, m, Sampling(max_new_tokens=6)) for i, m in prompts], ids, [0] * len(ids)
    )
    assert all(r["new_tokens"] == 0 and r["finish_reason"] == "stop" for r in eager)
    items = [WorkItem(i, m, Sampling(max_new_tokens=6, min_new_tokens=3)) for i, m in prompts]
    ours = rep.generate_batch(items, ids, [0] * len(ids))
    enc = tok.pad({"input_ids": ids}, return_tensors="pt")
    ref = rep.model.generate(**enc, max_new_tokens=6, min_new_tokens=3, do_sample=False)
    for r, row in zip(ours, ref):
        assert r["new_tokens"] >= 3
        assert r["text"] == tok.decode(row[enc["input_ids"].shape[1] :], skip_special_tokens=True)
    with pytest.raises(ValueError, match="min_new_tokens"):
        Sampling(max_new_tokens=2, min_new_tokens=3)


def test_sampled_row_does_not_depend_on_its_batch_partners(setup):
    tok = load_tokenizer(setup / "tiny")
    rep = Replica(setup / "tiny", tok)
    ((_, msgs),) = _prompts(setup, 1)
    s = Sampling(max_new_tokens=12, do_sample=True, temperature=0.7, top_p=0.95)
    a, b, c = (WorkItem(k, msgs, s, key="t", sample=i) for i, k in enumerate("abc"))
    ids = [prompt_ids(tok, msgs)] * 2
    seeds = [row_seed(1, "x", it.seed_key, it.sample) for it in (a, b, c)]
    ab = rep.generate_batch([a, b], ids, seeds[:2])
    ac = rep.generate_batch([a, c], ids, [seeds[0], seeds[2]])
    assert ab[0] == ac[0]  # same prompt, same seed: same sample, whoever shares the batch
    assert ab[1]["text"] != ac[1]["text"]  # other sample index: other draw


def _items(setup, n=10, seed_stream="t"):
    s = Sampling(max_new_tokens=6, do_sample=True, temperature=0.7, top_p=0.95)
    return [WorkItem(f"{i}#s0", m, s, key=i, meta={"k": i}) for i, m in _prompts(setup, n)]


def test_generate_chunks_resume_and_merge_errors(setup, tmp_path):
    work = tmp_path / "chunks"
    items = _items(setup)
    cfg = EngineConfig(batch_size=2, chunk_size=4, seed=7, stream="t")
    stats = generate(items, setup / "tiny", work, cfg)
    assert stats["chunks"] == 3 and stats["chunks_computed"] == 3 and stats["world_size"] == 1
    assert stats["per_rank"][0]["items"] == 10 and stats["tokens_per_s"] > 0
    records = merge(work)
    assert [r["id"] for r in records] == sorted(it.id for it in items)
    assert all(
        r["meta"] == {"k": r["key"]} and r["finish_reason"] in ("stop", "length") for r in records
    )
    # a rerun computes nothing; other settings over the same directory are refused
    again = generate(items, setup / "tiny", work, cfg)
    assert again["chunks_reused"] == 3 and again["chunks_computed"] == 0
    with pytest.raises(PlanMismatch, match="other inputs"):
        generate(items, setup / "tiny", work, EngineConfig(2, 4, seed=8, stream="t"))

    # a chunk lost after the fact: recomputed identically
    (work / "chunk-000001.jsonl").unlink()
    generate(items, setup / "tiny", work, cfg)
    assert merge(work) == records

    broken = tmp_path / "broken"
    shutil.copytree(work, broken)
    (broken / "chunk-000002.jsonl").unlink()
    with pytest.raises(MergeError, match=r"missing chunk chunk-000002\.jsonl"):
        merge(broken)

    shutil.copytree(work, broken, dirs_exist_ok=True)
    first = (broken / "chunk-000000.jsonl").read_text().splitlines()[0]
    dup_id = json.loads(first)["id"]
    with open(broken / "chunk-000001.jsonl", "a") as f:
        f.write(first + "\n")
    with pytest.raises(MergeError, match=rf"duplicated id '{dup_id}'.*chunk-000000.*chunk-000001"):
        merge(broken)

    shutil.rmtree(broken)
    shutil.copytree(work, broken)
    stranger = json.dumps({**json.loads(first), "id": "nobody#s0"})
    with open(broken / "chunk-000001.jsonl", "a") as f:
        f.write(stranger + "\n")
    with pytest.raises(MergeError, match=r"unknown id 'nobody#s0' in chunk-000001\.jsonl"):
        merge(broken)

    shutil.rmtree(broken)
    shutil.copytree(work, broken)
    lines = (broken / "chunk-000002.jsonl").read_text().splitlines()
    (broken / "chunk-000002.jsonl").write_text("\n".join(lines[1:]) + "\n")
    lost = json.loads(lines[0])["id"]
    with pytest.raises(MergeError, match=rf"id '{lost}' is missing \(planned in chunk-000002"):
        merge(broken)


QWEN25_7B = dict(  # Qwen2.5-7B's config.json fields
    hidden_size=3584,
    num_hidden_layers=28,
    intermediate_size=18944,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    tie_word_embeddings=False,
    attention_bias=True,
)


def test_rows_that_fit_a_gpu_by_hand():
    from esc_dist.generation.memory import AUTO_MAX_ROWS, rows_that_fit
    from esc_dist.models.shape import kv_bytes_per_token, parameters_of_shape

    assert parameters_of_shape(QWEN25_7B) == 7_615_616_512  # the model card's 7.61B
    assert kv_bytes_per_token(QWEN25_7B, 2) == 57_344  # 28 layers x (k, v) x 4 heads x 128 x 2
    # bf16 on 80 GB free, prompts of 1,024 tokens and 128 new ones:
    # 0.85 x 80e9 - 15,231,233,024 (weights) - 145,752,064 (one prompt's prefill:
    # 1,024 x (4 x 3,584 + 3 x 18,944) x 2) = 52,623,014,912 bytes for rows of
    # 2 x 57,344 x 1,152 + 16 x 152,064 = 134,553,600 bytes each: 391 rows
    assert rows_that_fit(QWEN25_7B, 2, 80 * 10**9, 1024, 128) == 391
    assert rows_that_fit(QWEN25_7B, 2, 16 * 10**9, 1024, 128) == 1  # the weights barely fit
    small = {**QWEN25_7B, "num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512}
    assert rows_that_fit(small, 2, 80 * 10**9, 1024, 128) == AUTO_MAX_ROWS


def test_auto_batch_writes_what_a_fixed_batch_writes_and_a_resume_keeps_its_plan(
    setup, tmp_path, monkeypatch
):
    """``batch_size: auto``: on a CPU the fixed size; from a (stand-in) free memory, the rows
    that fit; the samples are those of any other batch size (per-row seeds), and a resumed run
    keeps the size its plan chose although the memory free now would fit more."""
    from esc_dist.errors import ConfigError
    from esc_dist.generation import shards
    from esc_dist.generation.memory import AUTO_CPU_ROWS, rows_that_fit

    items = _items(setup)
    fixed = tmp_path / "fixed"
    generate(items, setup / "tiny", fixed, EngineConfig(batch_size=1, chunk_size=1, seed=7))
    want = merge(fixed)

    cpu = tmp_path / "cpu"
    generate(items, setup / "tiny", cpu, EngineConfig(batch_size="auto", chunk_size=4, seed=7))
    plan = json.loads((cpu / "plan.json").read_text())
    assert plan["batch_size"] == AUTO_CPU_ROWS and plan["chunk_size"] == AUTO_CPU_ROWS
    assert merge(cpu) == want

    fits = iter([3, 5, 4])
    monkeypatch.setattr(shards, "free_bytes", lambda device: 10**9)
    monkeypatch.setattr(shards, "rows_that_fit", lambda *a: next(fits))
    gpu = tmp_path / "gpu"
    cfg = EngineConfig(batch_size="auto", chunk_size=7, seed=7)
    generate(items, setup / "tiny", gpu, cfg)
    plan = json.loads((gpu / "plan.json").read_text())
    assert (plan["batch_size"], plan["chunk_size"], len(plan["chunks"])) == (3, 6, 2)
    assert merge(gpu) == want
    (gpu / "chunk-000001.jsonl").unlink()
    again = generate(items, setup / "tiny", gpu, cfg)  # 5 rows fit now: the plan's 3 stay
    assert again["chunks_reused"] == 1 and again["chunks_computed"] == 1
    assert merge(gpu) == want

    # a broken plan is refused by the plan check, as with a fixed size
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "plan.json").write_text("{not json")
    with pytest.raises(PlanMismatch):
        generate(items, setup / "tiny", broken, cfg)
    # a config without a field the sizing needs: one line saying to set a number
    monkeypatch.setattr(shards, "rows_that_fit", rows_that_fit)
    bare = tmp_path / "bare"
    shutil.copytree(setup / "tiny", bare)
    config = json.loads((bare / "config.json").read_text())
    del config["intermediate_size"]
    (bare / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"config\.json, which has no 'intermediate_size'"):
        generate(items, bare, tmp_path / "bare-out", cfg)


def test_claim_output_refuses_other_inputs(tmp_path):
    from esc_dist.errors import ConfigError
    from esc_dist.generation import claim_output
    from esc_dist.io import mark_completed, write_manifest

    out = tmp_path / "out"
    assert claim_output(out, {"fingerprint": "a", "stage": "mine"}, "mine") is None
    assert json.loads((out / "job.json").read_text())["fingerprint"] == "a"
    assert claim_output(out, {"fingerprint": "a", "stage": "mine"}, "mine") is None  # resume
    with pytest.raises(ConfigError, match="unfinished run for other inputs"):
        claim_output(out, {"fingerprint": "b"}, "mine")
    write_manifest(out, {"stage": "mine", "fingerprint": "a", "counts": {}})
    mark_completed(out)
    assert claim_output(out, {"fingerprint": "a"}, "mine")["stage"] == "mine"  # nothing to do
    with pytest.raises(ConfigError, match="completed mine output for other inputs"):
        claim_output(out, {"fingerprint": "b"}, "mine")
