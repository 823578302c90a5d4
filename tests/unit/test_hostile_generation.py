"""Generation on hostile data: a prompt longer than the model's context loses its oldest history
messages (as in training), one that cannot fit even so is refused in one line naming its turn,
and prompts that fit give the same bytes as before."""

import json
import subprocess
import sys

import pytest

from esc_dist.config import DataConfig, MineConfig, load_recipe
from esc_dist.data.fitting import HistoryFitter
from esc_dist.data.tasks import prepare
from esc_dist.errors import DataError
from esc_dist.generation import (
    EngineConfig,
    Sampling,
    WorkItem,
    fit_prompts,
    generate,
    load_tokenizer,
    prompt_ids,
)
from esc_dist.infer import infer
from esc_dist.ipm.mine import mine, mine_items
from esc_dist.models.loading import model_context
from tests.helpers import ROOT, chunk_records, gen_setup, launch_env, read_jsonl

HUGE = 200_000  # characters of one utterance: tens of thousands of tokens
MAX_NEW = 8
TRAIN, TEST = 1, 596  # the first dialogue of the train and test splits of the split file

pytestmark = pytest.mark.usefixtures("one_process")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, esconv_dir):
    return gen_setup(tmp_path_factory, esconv_dir)


def _huge_text() -> str:
    words = "sad tired alone work family friends sleep money future worried".split()
    return " ".join(words[i % len(words)] + str(i % 97) for i in range(HUGE // 8))[:HUGE]


def _hostile_data(root, esconv_dir, speaker: str):
    """A prepared dataset (one dialogue per split) whose train and test dialogues carry one
    huge utterance of ``speaker``, with a seeker message and a supporter turn after it."""
    dialogues = json.loads((esconv_dir / "esconv.json").read_text(encoding="utf-8"))
    huge = _huge_text()
    for d in (TRAIN, TEST):
        dialog = dialogues[d]["dialog"]
        k = next(
            k
            for k in range(2, len(dialog) - 2)
            if dialog[k]["speaker"] == speaker and dialog[k + 1]["speaker"] != speaker
        )
        dialog[k]["content"] = huge
    esconv = root / "esconv.json"
    esconv.write_text(json.dumps(dialogues), encoding="utf-8")
    prepare(
        DataConfig(
            esconv=str(esconv),
            split=str(esconv_dir / "splits" / "decoupledesc_split.json"),
            max_dialogues={"train": 1, "validation": 1, "test": 1},
            max_history_messages=6,
        ),
        root / "data",
    )
    return root / "data"


@pytest.fixture(scope="module")
def long_history(tmp_path_factory, esconv_dir):
    return _hostile_data(tmp_path_factory.mktemp("long-history"), esconv_dir, "supporter")


@pytest.fixture(scope="module")
def long_seeker(tmp_path_factory, esconv_dir):
    return _hostile_data(tmp_path_factory.mktemp("long-seeker"), esconv_dir, "seeker")


def _check_fitted(records, tok, context):
    """Every shortened record: within the context, its last seeker message kept, the huge one
    gone; the others untouched."""
    shortened = [r for r in records if r.get("messages_dropped")]
    assert shortened
    for r in records:
        msgs, n = r["messages"], r.get("messages_dropped", 0)
        kept = msgs[:1] + msgs[1 + n :]
        assert len(prompt_ids(tok, kept)) == r["prompt_tokens"]
        assert r["prompt_tokens"] + MAX_NEW <= context
        last_user = max(i for i, m in enumerate(msgs) if m["role"] == "user")
        assert 1 + n <= last_user and kept[0]["role"] == "system"
        assert all(len(m["content"]) < HUGE for m in kept)
    return shortened


def test_mining_fits_a_huge_history_message_to_the_context(setup, long_history, tmp_path):
    recipe = load_recipe(
        None,
        [
            "wandb.mode=disabled",
            "mine.n_samples=1",
            f"mine.max_new_tokens={MAX_NEW}",
            "mine.batch_size=4",
            "mine.chunk_size=8",
        ],
    )
    out = tmp_path / "mine"
    manifest = mine(recipe, "vanilla", setup / "tiny", long_history, out)
    tok = load_tokenizer(setup / "tiny")
    context = model_context(setup / "tiny", tok)
    assert context == 1024
    shortened = _check_fitted(chunk_records(out / "chunks"), tok, context)
    assert manifest["generation"]["prompts_shortened"] == len(shortened)
    assert manifest["generation"]["context"] == context
    assert manifest["counts"]["samples"] == len(chunk_records(out / "chunks")) > len(shortened)
    # the pairs keep the whole prompt: DPO fits it to its own budget
    assert any(
        len(m["content"]) >= HUGE for p in read_jsonl(out / "pairs.jsonl") for m in p["prompt"]
    )


def test_inference_fits_a_huge_history_message_to_the_context(setup, long_history, tmp_path):
    recipe = load_recipe(
        None,
        [
            "wandb.mode=disabled",
            f"infer.max_new_tokens={MAX_NEW}",
            "infer.batch_size=4",
            "infer.chunk_size=8",
        ],
    )
    out = tmp_path / "infer"
    manifest = infer(recipe, "vanilla", long_history, "test", out, model=setup / "parrot-vanilla")
    tok = load_tokenizer(setup / "parrot-vanilla")
    shortened = _check_fitted(chunk_records(out / "chunks" / "vanilla"), tok, 1024)
    assert manifest["generation"]["vanilla"]["prompts_shortened"] == len(shortened)
    preds = read_jsonl(out / "predictions.jsonl")
    assert len(preds) == manifest["counts"]["turns"] > len(shortened)
    assert all(p["pred_strategy"] == "Question" for p in preds)  # the parrot answered each


def test_a_huge_last_seeker_message_is_refused_in_one_line(setup, long_seeker, tmp_path):
    out = tmp_path / "mine"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "esc_dist",
            "mine",
            "--role",
            "vanilla",
            "--model",
            str(setup / "tiny"),
            "--data",
            str(long_seeker),
            "--out",
            str(out),
            "mine.n_samples=1",
            f"mine.max_new_tokens={MAX_NEW}",
            "wandb.mode=disabled",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env=launch_env(OMP_NUM_THREADS="1"),
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "esc-dist mine: error:" in line]
    assert len(errors) == 1, r.stderr[-3000:]
    assert str(long_seeker) in errors[0] and f"turn esconv-{TRAIN:04d}-t" in errors[0]
    assert "even with only its last seeker message kept" in errors[0]
    assert not list(out.glob("chunks/chunk-*.jsonl"))  # refused before generating anything


def test_refusal_names_the_dialogue_and_turn_of_an_inference_item(setup, long_seeker):
    from esc_dist.infer import load_turns, vanilla_items

    turns = load_turns(long_seeker, "test")
    items = vanilla_items(turns, Sampling(max_new_tokens=MAX_NEW), 6)
    tok = load_tokenizer(setup / "tiny")
    with pytest.raises(DataError) as e:
        fit_prompts(items, tok, 1024, long_seeker)
    assert e.value.dialogue == f"esconv-{TEST:04d}" and e.value.path == str(long_seeker)
    assert f"turn esconv-{TEST:04d}-t" in e.value.problem and "\n" not in str(e.value)


def test_prompts_that_fit_give_the_same_bytes_as_without_fitting(setup, tmp_path, monkeypatch):
    items = mine_items(
        setup / "data", "vanilla", MineConfig(n_samples=1, max_turns=12, max_new_tokens=MAX_NEW)
    )
    cfg = EngineConfig(batch_size=4, chunk_size=8, seed=3, stream="t")
    fitted = generate(items, setup / "tiny", tmp_path / "fitted", cfg)
    assert fitted["prompts_shortened"] == 0 and fitted["context"] == 1024
    import esc_dist.generation.shards as shards

    monkeypatch.setattr(shards, "model_context", lambda *a: None)  # no fitting at all
    plain = generate(items, setup / "tiny", tmp_path / "plain", cfg)
    assert plain["fingerprint"] == fitted["fingerprint"]
    for a in sorted((tmp_path / "fitted").iterdir()):
        assert a.read_bytes() == (tmp_path / "plain" / a.name).read_bytes(), a.name


def test_fitter_keeps_system_and_last_seeker_message(setup):
    tok = load_tokenizer(setup / "tiny")
    long = "word " * 400
    prompt = [
        {"role": "system", "content": "be kind"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": long},
        {"role": "assistant", "content": long},
        {"role": "user", "content": "short"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "last one"},
    ]
    fit = HistoryFitter(tok, 200)

    def within(kept):
        p = prompt_ids(tok, kept)
        return p if len(p) + 10 <= 200 else None

    kept, ids, dropped = fit.fit(prompt, 10, within)
    assert kept == prompt[:1] + prompt[4:] and dropped == 3
    assert ids == prompt_ids(tok, kept)
    assert fit.shortest(prompt) == prompt[:1] + prompt[-1:]
    assert HistoryFitter(tok, 5).fit(prompt, 10, lambda kept: None) is None
    # a prompt within the context is left alone, whatever it starts with
    items = [WorkItem("a", prompt[:2] + prompt[4:], Sampling(max_new_tokens=10))]
    (ids,), (n,) = fit_prompts(items, tok, 1024)
    assert n == 0 and ids == prompt_ids(tok, items[0].messages)


def test_model_context_ignores_an_unbounded_tokenizer_limit(setup):
    tok = load_tokenizer(setup / "tiny")
    tok.model_max_length = int(1e30)
    assert model_context(setup / "tiny", tok) == 1024
    tok.model_max_length = 512
    assert model_context(setup / "tiny", tok) == 512
