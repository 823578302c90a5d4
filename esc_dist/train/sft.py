"""Full-parameter SFT of the planner, generator or vanilla model with TRL + DeepSpeed ZeRO.

Examples are tokenized here, not by TRL, so that a long dialogue is never cut through the reply:
the oldest history messages are dropped until prompt + completion fit ``max_length``. The loss is
on the completion tokens only (prompt labels are -100). Batches are length-grouped by global
batch (see ``GlobalBatchLengthSampler``) or packed padding-free when flash attention is on.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from .. import dist, tracking
from ..config import Recipe
from ..data.tasks import load_task
from ..io import atomic_write_json, read_json, read_manifest, sha256_json, staged_dir
from ..log import get_logger
from .common import (ROLES, TrainerExtras, base_manifest, checkpoint_callback, deepspeed_config,
                     default_base_model, export_model, find_resume_checkpoint, load_policy,
                     load_tokenizer, preemption_callback, prepare_resume, stage_paths,
                     summarize_history, trainer_arguments, was_preempted)

log = get_logger(__name__)

FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True,
                                        add_generation_prompt=add_generation_prompt)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def encode_prompt_completion(tokenizer, prompt: list[dict], completion: list[dict],
                             ) -> tuple[list[int], list[int]]:
    """Token ids of the prompt (with the generation prompt) and of the completion after it.

    The whole conversation is rendered and tokenized once; the prompt ends where the rendered
    prompt text ends. If a token straddles that boundary the prompt is tokenized on its own.
    """
    ptxt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ftxt = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if not ftxt.startswith(ptxt):
        raise ValueError("the chat template renders the prompt differently when a completion "
                         "follows; cannot mask the prompt tokens")
    enc = tokenizer(ftxt, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    cut = next((i for i, (a, _) in enumerate(offsets) if a >= len(ptxt)), len(ids))
    if cut and offsets[cut - 1][1] > len(ptxt):
        p = tokenizer(ptxt, add_special_tokens=False)["input_ids"]
        if ids[:len(p)] != p:
            raise ValueError("the prompt's tokens are not a prefix of the conversation's tokens")
        cut = len(p)
    return ids[:cut], ids[cut:]


class PromptFitter:
    """Fits prompt + completion into ``max_length`` by dropping the oldest history messages.

    The system message (if any) and the last message are always kept, and the kept history
    starts with a user message. The number of messages to drop is estimated from per-message
    token counts (each distinct message is tokenized once: the history of one dialogue repeats
    in all its later turns), then checked with an exact encoding.
    """

    def __init__(self, tokenizer, max_length: int):
        self.tok, self.max_length = tokenizer, max_length
        self._cost: dict[tuple[str, str], int] = {}

    def cost(self, m: dict) -> int:
        key = (m["role"], m["content"])
        if key not in self._cost:
            self._cost[key] = len(self.tok(m["content"], add_special_tokens=False)["input_ids"])
        return self._cost[key]

    def __call__(self, prompt: list[dict], completion: list[dict],
                 ) -> tuple[list[int], list[int], int] | None:
        """(prompt ids, completion ids, messages dropped), or None if nothing fits."""
        head = prompt[:1] if prompt and prompt[0]["role"] == "system" else []
        history = prompt[len(head):]
        starts = [k for k, m in enumerate(history) if m["role"] == "user"] or [0]
        costs = [self.cost(m) for m in history]
        suffix = [0] * (len(history) + 1)
        for i in range(len(history) - 1, -1, -1):
            suffix[i] = suffix[i + 1] + costs[i] + 4  # ~4 template tokens per message
        fixed = sum(self.cost(m) + 4 for m in head + completion) + 4
        pick = next((i for i, s in enumerate(starts) if fixed + suffix[s] <= self.max_length),
                    len(starts) - 1)
        for s in starts[pick:]:
            p, c = encode_prompt_completion(self.tok, head + history[s:], completion)
            if len(p) + len(c) <= self.max_length:
                if s > starts[0] and pick > 0:  # the estimate may drop one message too many
                    prev = starts[starts.index(s) - 1]
                    p2, c2 = encode_prompt_completion(self.tok, head + history[prev:], completion)
                    if len(p2) + len(c2) <= self.max_length:
                        return p2, c2, prev
                return p, c, s
        return None


def tokenize_rows(rows, tokenizer, max_length: int) -> tuple[list[dict], list[str]]:
    """Tokenized examples (index, id, input_ids, labels, trimmed) and the ids of dropped ones."""
    fit = PromptFitter(tokenizer, max_length)
    out, dropped = [], []
    for index, ex in rows:
        r = fit(ex["prompt"], ex["completion"])
        if r is None:
            dropped.append(ex["id"])
            continue
        p, c, k = r
        out.append({"index": index, "id": ex["id"], "input_ids": p + c,
                    "labels": [-100] * len(p) + c, "trimmed": k > 0})
    return out, dropped


def _tokenizer_key(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else str(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((text + str(tokenizer.chat_template)).encode()).hexdigest()


def tokenized_cached(ds, tokenizer, max_length: int, cache_root: Path, name: str):
    """Tokenized (id, input_ids, labels) dataset and its stats, cached on disk.

    Every rank tokenizes an interleaved slice; rank 0 joins the slices in the original order.
    The cache is keyed by the data's fingerprint, the tokenizer and ``max_length``.
    """
    from datasets import Dataset, load_from_disk

    key = sha256_json([ds._fingerprint, _tokenizer_key(tokenizer), max_length])[:16]
    path = cache_root / f"{name}-{key}"
    if not (path / "stats.json").is_file():
        world, me = dist.world_size(), dist.rank()
        rows, dropped = tokenize_rows(((i, ds[i]) for i in range(me, len(ds), world)),
                                      tokenizer, max_length)
        parts = cache_root / f".{name}-{key}.parts"
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_json(parts / f"rank{me}.json", {"rows": rows, "dropped": dropped})
        dist.barrier()
        if dist.is_main():
            rows, dropped = [], []
            for r in range(world):
                part = read_json(parts / f"rank{r}.json")
                rows += part["rows"]
                dropped += part["dropped"]
            rows.sort(key=lambda x: x["index"])
            stats = {"examples": len(rows), "history_trimmed": sum(x["trimmed"] for x in rows),
                     "dropped_too_long": len(dropped), "dropped_ids": sorted(dropped)[:20],
                     "max_length": max_length}
            data = Dataset.from_dict({k: [x[k] for x in rows]
                                      for k in ("id", "input_ids", "labels")})
            with staged_dir(path) as tmp:
                data.save_to_disk(str(tmp / "data"))
                atomic_write_json(tmp / "stats.json", stats)
            shutil.rmtree(parts, ignore_errors=True)
    dist.barrier()
    return load_from_disk(str(path / "data")), read_json(path / "stats.json")


def _sft_trainer_class():
    from trl import SFTTrainer

    class EscSFTTrainer(TrainerExtras, SFTTrainer):
        pass

    return EscSFTTrainer


def build_sft_trainer(recipe: Recipe, role: str, data_dir: str, model_dir: str, paths,
                      ds_cfg: dict | None, report_wandb: bool):
    """The configured trainer for one role, and the tokenization stats of its data."""
    from trl import SFTConfig

    cfg = recipe.sft
    args = SFTConfig(**trainer_arguments(cfg, recipe, paths, f"sft-{role}", report_wandb, ds_cfg),
                     packing=cfg.packing, padding_free=cfg.packing)
    tokenizer = load_tokenizer(model_dir, recipe.model.trust_remote_code)
    data = load_task(data_dir, role)
    train, stats = tokenized_cached(data["train"], tokenizer, cfg.max_length,
                                    paths.work / "tokenized", f"{role}-train")
    log.info("sft %s: %d training examples (%d with history trimmed, %d too long dropped)",
             role, stats["examples"], stats["history_trimmed"], stats["dropped_too_long"])
    model = load_policy(model_dir, recipe, cfg)  # after args: ZeRO-3 partitions while loading
    trainer = _sft_trainer_class()(model=model, args=args, train_dataset=train,
                                   processing_class=tokenizer,
                                   callbacks=[checkpoint_callback(), preemption_callback()])
    return trainer, tokenizer, stats


def train_sft(recipe: Recipe, role: str, data_dir: str | None = None,
              model_dir: str | None = None, out: str | None = None) -> dict:
    """Train one role and export it; returns the export manifest."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    cfg = recipe.sft
    dist.init(recipe.run.dist_timeout_s, deepspeed=bool(cfg.deepspeed))
    data_dir = data_dir or str(Path(recipe.run.output_dir) / "data")
    model_dir = model_dir or default_base_model(recipe)
    paths = stage_paths(recipe, "sft", role, out)
    if cfg.packing and recipe.model.attn_implementation not in FLASH_ATTENTION:
        raise ValueError("sft.packing needs padding-free attention: set "
                         "model.attn_implementation=flash_attention_2 (GPU); without it, "
                         "length-grouped batches are used")

    ckpt = find_resume_checkpoint(paths.checkpoints, cfg.resume)
    ds_cfg = deepspeed_config(cfg, universal=prepare_resume(ckpt))
    run = tracking.start_run(recipe, f"sft-{role}", paths.work, config={"stage": "sft", "role": role})
    trainer, tokenizer, tok_stats = build_sft_trainer(recipe, role, data_dir, model_dir, paths,
                                                      ds_cfg, run is not None)
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    if was_preempted(trainer):
        tracking.finish(run)
        return None

    data_manifest = read_manifest(data_dir) or {}
    manifest = base_manifest("sft", role, recipe, cfg, {
        "data": {"path": str(data_dir), "sha256": sha256_json(data_manifest)},
        "model": {"path": str(model_dir)},
    }, model_dir)
    manifest.update(summarize_history(trainer), tokenization=tok_stats,
                    resumed_from=str(ckpt) if ckpt else None, export_dir=str(paths.export))
    export_model(trainer, tokenizer, paths.export, manifest)
    if run is not None:
        run.summary.update({k: v for k, v in manifest.items()
                            if k in ("final_loss", "global_step", "mean_non_pad_fraction")})
    tracking.finish(run)
    return manifest
