"""The recipe's sections: one dataclass per concern (run, wandb, data, tiny_model, model) and one
per stage, each key with its default and each section with ``validate(source)``, the range checks
that name the key. The dataclass defaults are the tiny CPU recipe (`configs/tiny-cpu.yaml` spells
them out)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..constants import BALANCED_ROLES
from ..errors import ConfigError
from ..names import check_name
from ..redaction import looks_secret

# ---------------------------------------------------------------------------------------------
# Range checks: every section's ``validate(source)`` calls these; ``_build`` calls ``validate``.


def _require(ok: bool, source: str, key: str, want: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{source}: '{key}' must be {want}, got {value!r}")


def _at_least(source: str, section: str, obj: Any, lowest: int | float, *keys: str) -> None:
    for key in keys:
        v = getattr(obj, key)
        _require(v >= lowest, source, f"{section}.{key}", f">= {lowest}", v)


def _count_or_null(source: str, key: str, v: int | None) -> None:
    _require(v is None or v >= 1, source, key, ">= 1 or null (null: all)", v)


def _probability(source: str, key: str, v: float) -> None:
    _require(0 < v <= 1, source, key, "in (0, 1]", v)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{32,}\Z")  # e.g. a W&B key, which can pass for a name


def _env_names(source: str, section: str, obj: Any) -> None:
    """Every ``*_env`` key of a section names an environment variable (empty: none). The value
    is not echoed: a key typed here by mistake must not reach a log."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if (
            f.name.endswith("_env")
            and v
            and (not _ENV_NAME.match(v) or _HEX_KEY.match(v) or looks_secret(v))
        ):
            raise ConfigError(
                f"{source}: '{section}.{f.name}' must be the name of an environment "
                "variable (letters, digits, _): put the NAME of the variable here, "
                "not the key, and set the variable in the environment"
            )


def _batches(source: str, section: str, cfg: Any) -> None:
    """Generation batch settings (mine, infer): a chunk is a whole number of batches (under
    ``batch_size: auto`` the chunk is rounded down to one when the size is known)."""
    _at_least(source, section, cfg, 1, "chunk_size")
    if cfg.batch_size != "auto":
        _at_least(source, section, cfg, 1, "batch_size")
        _require(
            cfg.chunk_size % cfg.batch_size == 0,
            source,
            f"{section}.chunk_size",
            f"a multiple of {section}.batch_size ({cfg.batch_size})",
            cfg.chunk_size,
        )
    _at_least(source, section, cfg, 0, "top_k")
    _probability(source, f"{section}.top_p", cfg.top_p)


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass
class RunConfig:
    name: str = "tiny-cpu"
    output_dir: str = "runs/tiny-cpu"
    seed: int = 42
    dist_timeout_s: int = 1800  # collective timeout: a hung rank fails the job after this

    def validate(self, source: str) -> None:
        _at_least(source, "run", self, 1, "dist_timeout_s")
        check_name(self.name, f"{source}: 'run.name'")


@dataclass
class WandbConfig:
    project: str = "esc-dist"
    entity: str | None = None
    # auto: online when WANDB_API_KEY is set (or `wandb login` was run), offline otherwise.
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    group: str | None = None  # default: the run name
    tags: list[str] = field(default_factory=list)

    def validate(self, source: str) -> None:
        if self.group is not None:
            check_name(self.group, f"{source}: 'wandb.group'")
        for tag in self.tags:
            check_name(tag, f"{source}: 'wandb.tags' entry")


@dataclass
class DataConfig:
    esconv: str = "../shared/data/esconv/esconv.json"
    # A split-index file, or "seeded" for a seeded split with `split_fractions`.
    split: str = "../shared/data/esconv/splits/decoupledesc_split.json"
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    split_seed: int = 13
    # Keep at most this many dialogues per split (first ones in split order); null keeps all.
    # The tiny default trains on 32 dialogues; validation and test stay whole.
    max_dialogues: dict[str, int | None] = field(
        default_factory=lambda: {"train": 32, "validation": None, "test": None}
    )
    # Keep only the last N messages of the history in prompts; null keeps the whole dialogue.
    max_history_messages: int | None = 4
    # the supporter's past turns in the planner's and vanilla model's prompts carry their strategy
    # tags ("[Question] How are you?"); false: plain text, as the DecoupledESC paper's planner
    history_strategy_tags: bool = True
    # how the planner reads the dialogue: chat (the history as chat turns, tagged per
    # history_strategy_tags) | transcript (the paper's: one user message of "seeker: ..." /
    # "supporter: ..." lines, never tagged; esc_dist/data/transcript.py). Prepared data records
    # it, and mining, inference, chat and the demo build the planner's prompts the same way.
    planner_prompt: Literal["chat", "transcript"] = "chat"

    def validate(self, source: str) -> None:
        f = self.split_fractions
        if len(f) != 3 or any(x < 0 for x in f) or abs(sum(f) - 1) > 1e-6:
            raise ConfigError(
                f"{source}: 'data.split_fractions' must be three non-negative "
                f"numbers (train, validation, test) summing to 1, got {f}"
            )
        unknown = set(self.max_dialogues) - {"train", "validation", "test"}
        if unknown:
            raise ConfigError(
                f"{source}: 'data.max_dialogues' has unknown split(s) "
                f"{sorted(unknown)}; expected train, validation, test"
            )
        for split, n in self.max_dialogues.items():
            _count_or_null(source, f"data.max_dialogues.{split}", n)
        _count_or_null(source, "data.max_history_messages", self.max_history_messages)


@dataclass
class TinyModelConfig:
    architecture: Literal["llama", "qwen2"] = "llama"
    vocab_size: int = 4096
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 352
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True
    seed: int = 0

    def validate(self, source: str) -> None:
        _at_least(
            source,
            "tiny_model",
            self,
            1,
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
        _require(
            self.hidden_size % self.num_heads == 0,
            source,
            "tiny_model.hidden_size",
            f"a multiple of tiny_model.num_heads ({self.num_heads})",
            self.hidden_size,
        )
        _require(
            self.num_heads % self.num_kv_heads == 0,
            source,
            "tiny_model.num_heads",
            f"a multiple of tiny_model.num_kv_heads ({self.num_kv_heads})",
            self.num_heads,
        )


@dataclass
class ModelConfig:
    # Where SFT starts: an HF model directory, a Hugging Face Hub id (org/name, resolved offline
    # from the HF cache: `esc-dist download` fills it), a GGUF file or package:PKG/FILE.gguf;
    # null builds the tiny model.
    base: str | None = None
    revision: str | None = None  # of a Hub id: a branch, tag or commit; null: main
    # the base model's config.json fields that size it (hidden_size, num_hidden_layers,
    # intermediate_size, num_attention_heads, num_key_value_heads, vocab_size,
    # tie_word_embeddings, ...), for estimates on a machine without the weights (doctor,
    # pipeline --dry-run); null: read from the model when it is there
    shape: dict[str, Any] | None = None
    trust_remote_code: bool = False
    # auto (or null): flash_attention_2 on a GPU where the flash-attn package imports, else
    # sdpa; or any transformers name (sdpa, eager, flash_attention_2, ...); sft.packing needs
    # flash attention
    attn_implementation: str | None = None

    def validate(self, source: str) -> None:
        import importlib.util

        if (
            self.attn_implementation in FLASH_ATTENTION
            and importlib.util.find_spec("flash_attn") is None
        ):
            raise ConfigError(
                f"{source}: 'model.attn_implementation' is {self.attn_implementation} but the "
                "flash-attn package is not installed here: `pip install flash-attn "
                "--no-build-isolation` on a CUDA machine, or write auto (flash attention where "
                "it imports, else sdpa)"
            )


@dataclass
class LoraConfig:
    enabled: bool = False  # full-parameter training is the default
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])

    def validate(self, source: str, section: str = "lora") -> None:
        _at_least(source, section, self, 1, "r")
        _require(self.alpha > 0, source, f"{section}.alpha", "> 0", self.alpha)
        _require(0 <= self.dropout < 1, source, f"{section}.dropout", "in [0, 1)", self.dropout)


@dataclass
class TrainConfig:
    """Settings shared by the SFT and DPO stages."""

    # A DeepSpeed JSON config ("auto" values are filled by the HF integration); null trains
    # without DeepSpeed (plain DDP or one process).
    deepspeed: str | None = "ds_configs/zero3.json"
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    # examples per optimizer step over all ranks; when set, the accumulation is derived from it
    # at launch (global / (per device x ranks), which must divide), so a run requeued onto
    # another number of GPUs trains the same steps and resumes its checkpoints
    global_batch_size: int | None = None
    # Liger's Triton kernels (RMSNorm, RoPE, SwiGLU; TRL keeps its own chunked LM head and loss):
    # null = auto (on with CUDA, the liger-kernel package and a model it supports); true:
    # required (refused where it cannot run); false: off
    liger: bool | None = None
    # Padding-free batches (esc_dist/train/packing.py): a micro-batch's sequences in one row, no
    # pad token computed, attention kept inside each sequence. null = auto: on with flash
    # attention (its variable-length kernels cost nothing extra), off on sdpa/eager, where the
    # row's 4D mask makes attention quadratic in the whole row; true / false: as said (true on
    # sdpa/eager uses that mask). SFT: TRL's padding_free on flash, ours on sdpa/eager; DPO:
    # ours everywhere (TRL 1.16's DPO falls back to padding).
    padding_free: bool | None = None
    max_length: int = 512
    gradient_checkpointing: bool = False
    # auto: bf16 on a GPU that has it and on a CPU with native bf16 (AVX512-BF16/AMX), else fp32
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    logging_steps: int = 5
    save_steps: int = 50
    save_total_limit: int = 2
    # auto (newest complete checkpoint, else fresh) | never | a checkpoint path
    resume: str = "auto"
    keep_checkpoints: bool = False  # false: a stage's checkpoints are removed once it exported
    dataloader_num_workers: int = 0
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Settings of one role only, over the section's: e.g. dpo.roles: {planner: {learning_rate:
    # 1.0e-6, validation_every: 10}} trains the planner's DPO at its own strength and the
    # generator's and vanilla model's at the section's. Any key of the section but lora and
    # roles; each role's resulting settings are checked like the section's.
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def for_role(self, role: str):
        """The settings ``role`` trains with: the section's, with its ``roles`` entry over them."""
        return dataclasses.replace(self, **self.roles.get(role, {}), roles={})

    def validate(self, source: str, section: str = "train") -> None:
        _require(
            self.learning_rate > 0, source, f"{section}.learning_rate", "> 0", self.learning_rate
        )
        _require(
            0 <= self.warmup_ratio < 1,
            source,
            f"{section}.warmup_ratio",
            "in [0, 1)",
            self.warmup_ratio,
        )
        _at_least(
            source, section, self, 0, "weight_decay", "max_grad_norm", "dataloader_num_workers"
        )
        _require(
            self.num_train_epochs > 0,
            source,
            f"{section}.num_train_epochs",
            "> 0",
            self.num_train_epochs,
        )
        _require(
            self.max_steps == -1 or self.max_steps >= 1,
            source,
            f"{section}.max_steps",
            ">= 1, or -1 (num_train_epochs decides)",
            self.max_steps,
        )
        _at_least(
            source,
            section,
            self,
            1,
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "max_length",
            "logging_steps",
            "save_steps",
            "save_total_limit",
        )
        _count_or_null(source, f"{section}.global_batch_size", self.global_batch_size)
        if self.liger:
            import importlib.util

            from ..hardware import has_cuda

            if importlib.util.find_spec("liger_kernel") is None:
                raise ConfigError(
                    f"{source}: '{section}.liger' is true but the liger-kernel "
                    "package is not installed here (pip install liger-kernel), "
                    "or leave it null (auto)"
                )
            if not has_cuda():
                raise ConfigError(
                    f"{source}: '{section}.liger' is true but Liger's kernels "
                    "need a CUDA GPU (Triton); leave it null (auto: off here)"
                )
        self.lora.validate(source, f"{section}.lora")


@dataclass
class SftConfig(TrainConfig):
    learning_rate: float = 3e-3
    num_train_epochs: float = 2.0
    # Concatenate several examples per row (no padding); else batches are grouped by length.
    packing: bool = False
    # Validation loss (eval/loss in W&B) every N steps and at the end, on eval_examples turns
    # of the validation split spread over it (null: all); 0: off.
    eval_steps: int = 0
    eval_examples: int | None = 512

    def validate(self, source: str) -> None:
        TrainConfig.validate(self, source, "sft")
        _at_least(source, "sft", self, 0, "eval_steps")
        _count_or_null(source, "sft.eval_examples", self.eval_examples)


@dataclass
class DpoConfig(TrainConfig):
    learning_rate: float = 5e-5
    per_device_train_batch_size: int = 4
    beta: float = 0.1
    loss_type: str = "sigmoid"  # any TRL DPO loss: sigmoid, ipo, hinge, robust, ...
    sft_weight: float = 0.0  # adds weight * NLL of the chosen reply (RPO-style mixing)
    reference: Literal["precomputed", "live"] = "precomputed"
    reference_offload: bool = False  # live reference under ZeRO-3: offload its params to CPU
    # score a pair as one sequence [prompt | chosen | rejected] (esc_dist/train/packing.py):
    # the prompt computed once, log-probs equal to two sequences'; flash_attention_2 falls back
    shared_prompt: bool = True
    # The planner's validation guard (esc_dist/train/guard.py): every N steps (and before the
    # first, the SFT model) the planner decodes validation_turns validation turns greedily and
    # its predicted-strategy shares, B and Q are logged (console, W&B); 0: off. Planner only.
    validation_every: int = 0
    validation_turns: int = 300
    # export the evaluated step with the lowest validation B among those whose Q is at most
    # best_q_tolerance points below the SFT model's (early stopping), instead of the last step
    export_best: bool = False
    best_q_tolerance: float = 1.0

    def validate(self, source: str) -> None:
        TrainConfig.validate(self, source, "dpo")
        _require(self.beta > 0, source, "dpo.beta", "> 0", self.beta)
        _require(self.sft_weight >= 0, source, "dpo.sft_weight", ">= 0", self.sft_weight)
        _at_least(source, "dpo", self, 0, "validation_every", "best_q_tolerance")
        _at_least(source, "dpo", self, 1, "validation_turns")
        _require(
            not self.export_best or self.validation_every > 0,
            source,
            "dpo.export_best",
            "false unless dpo.validation_every > 0 (the best step is chosen on the "
            "validation guard's evaluations)",
            self.export_best,
        )


def _check_lengths(section: str, cfg, source: str) -> None:
    """Token budgets of a generation section (mine, infer) are consistent."""
    budgets = [("max_new_tokens", cfg.max_new_tokens)]
    if cfg.planner_max_new_tokens is not None:
        budgets.append(("planner_max_new_tokens", cfg.planner_max_new_tokens))
    for key, v in budgets:
        if v < 1:
            raise ConfigError(f"{source}: '{section}.{key}' must be >= 1, got {v}")
    if cfg.min_new_tokens < 0:
        raise ConfigError(
            f"{source}: '{section}.min_new_tokens' must be >= 0, got {cfg.min_new_tokens}"
        )


@dataclass
class MineConfig:
    n_samples: int = 1
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 32
    # rows per batch; auto: as many as the GPU's free memory holds (esc_dist/generation/memory.py)
    batch_size: int | Literal["auto"] = 16
    chunk_size: int = 64  # turns per atomic commit of a shard file
    backend: Literal["hf", "vllm"] = "hf"  # vllm: the server of the vllm section
    max_turns: int | None = None  # mine only the first N training turns (by id order); null: all
    top_k: int = 0  # 0: no top-k filter
    planner_max_new_tokens: int | None = 8  # planner samples are short; null: max_new_tokens
    min_new_tokens: int = 1  # no stop token before this many new tokens (no empty samples)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # as sft.precision
    # the decoding steps' KV cache: auto (= dynamic) | dynamic (grows by a token a step) |
    # static (allocated once, fixed shapes) | compiled (static, run as CUDA graphs: GPU only)
    decode: Literal["auto", "dynamic", "static", "compiled"] = "auto"

    def validate(self, source: str) -> None:
        _check_lengths("mine", self, source)
        _batches(source, "mine", self)
        _at_least(source, "mine", self, 1, "n_samples")
        _require(
            self.temperature >= 0, source, "mine.temperature", ">= 0 (0: greedy)", self.temperature
        )
        _count_or_null(source, "mine.max_turns", self.max_turns)


@dataclass
class IpmConfig:
    """How IPM turns mined samples into the planner's preference pairs."""

    # mismatch: the paper's (its released planner code): every mined planner sample whose parsed
    # strategy is not the gold one is a pair (unparseable samples too, rejected = the raw
    # sample), none judged. judged: the pairs go through the judge like the other roles' (kept
    # when the rejected strategy shows a psychological error; judge.keep_unparseable and
    # judge.balance apply). See docs/judge.md.
    planner_pairs: Literal["mismatch", "judged"] = "judged"


@dataclass
class JudgeConfig:
    backend: Literal["offline", "openai"] = "offline"
    model: str = "gpt-4o-mini"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never from a file
    concurrency: int = 8
    max_retries: int = 6
    timeout: float = 60.0
    max_tokens: int = 512  # the longest answer asked for (a verdict's JSON needs far fewer)
    # Keep planner pairs whose sample is not a strategy name (a format error) without judging.
    keep_unparseable: bool = True
    # Cut the kept planner and vanilla pairs so that no chosen and no rejected strategy holds
    # more than its side's median count (esc_dist/ipm/balance.py, docs/judge.md).
    balance: bool = False
    # Share of requests (judge, eval LLM scores) that may fail for good (after retries) without
    # failing the stage; 0: any request that never succeeded fails it.
    max_failed_share: float = 0.0

    def for_role(self, role: str) -> JudgeConfig:
        """The settings that decide ``role``'s verdicts: ``keep_unparseable`` only judges planner
        samples and ``balance`` only caps the pairs of :data:`BALANCED_ROLES`; for the other
        roles they are at their defaults, so that changing them leaves those roles' judge
        stages current."""
        if role != "planner":
            self = dataclasses.replace(self, keep_unparseable=JudgeConfig.keep_unparseable)
        if role not in BALANCED_ROLES:
            self = dataclasses.replace(self, balance=JudgeConfig.balance)
        return self

    def validate(self, source: str) -> None:
        _env_names(source, "judge", self)
        _require(
            0 <= self.max_failed_share <= 1,
            source,
            "judge.max_failed_share",
            "in [0, 1]",
            self.max_failed_share,
        )
        _at_least(source, "judge", self, 1, "concurrency")
        _at_least(source, "judge", self, 0, "max_retries")
        _at_least(source, "judge", self, 1, "max_tokens")
        _require(self.timeout > 0, source, "judge.timeout", "> 0 seconds", self.timeout)


@dataclass
class InferConfig:
    split: str = "test"
    batch_size: int | Literal["auto"] = 32  # as mine.batch_size
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    chunk_size: int = 128
    top_k: int = 0  # 0: no top-k filter (with do_sample)
    planner_max_new_tokens: int | None = 8  # decoupled phase 1; null: max_new_tokens
    max_dialogues: int | None = 12  # predict only the first N dialogues (by id); null: all
    min_new_tokens: int = 1  # no stop token before this many new tokens (no empty predictions)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # as sft.precision
    # sampled decodes (seeds 0..N-1) when decoding samples (always under eval.protocol: paper);
    # greedy decoding is decoded once
    decode_seeds: int = 3
    backend: Literal["hf", "vllm"] = "hf"  # vllm: the server of the vllm section
    decode: Literal["auto", "dynamic", "static", "compiled"] = "auto"  # as mine.decode

    def validate(self, source: str) -> None:
        _check_lengths("infer", self, source)
        _at_least(source, "infer", self, 1, "decode_seeds")
        _batches(source, "infer", self)
        _require(self.temperature > 0, source, "infer.temperature", "> 0", self.temperature)
        _require(
            self.split in ("train", "validation", "test"),
            source,
            "infer.split",
            "one of train, validation, test",
            self.split,
        )
        _count_or_null(source, "infer.max_dialogues", self.max_dialogues)


@dataclass
class VllmConfig:
    """The vLLM server of ``mine.backend: vllm`` and ``infer.backend: vllm``
    (esc_dist/generation/server.py)."""

    # a running OpenAI-compatible vLLM server (http://host:port/v1) that serves the stage's model
    url: str | None = None
    # or the Python of a vLLM install (its own venv): esc-dist starts one server per node and
    # model, on 127.0.0.1, and stops it when the stage is done
    python: str | None = None
    args: list[str] = field(default_factory=list)  # more server arguments, e.g. --max-model-len
    start_timeout_s: int = 900
    request_timeout_s: int = 600

    def validate(self, source: str) -> None:
        _at_least(source, "vllm", self, 1, "start_timeout_s")
        _at_least(source, "vllm", self, 1, "request_timeout_s")
        _require(
            self.url is None or re.fullmatch(r"https?://\S+", self.url) is not None,
            source,
            "vllm.url",
            "an http(s) URL such as http://127.0.0.1:8000/v1",
            self.url,
        )


@dataclass
class EvalConfig:
    # headline protocol: paper (DecoupledESC: sampled decoding at 0.7 / 0.95 over
    # infer.decode_seeds seeds, per-reply NLTK text metrics, 20-sweep B) | ours (infer's own
    # decoding, corpus text metrics, converged B); report.json always holds both
    protocol: Literal["paper", "ours"] = "paper"
    # also score replies 0-5 on four rubrics and label their psychological errors with the
    # judge endpoint of `judge` (the offline rules' error rates are always computed)
    llm_judge: bool = False
    adherence: bool = True  # strategy adherence of the replies (a classifier on gold replies)
    generator_gold: bool = True  # the pipeline also evaluates the generators on gold strategies
    # the pipeline also evaluates the base model untrained as planner and generator (decoupled,
    # the same prompts): the zero-shot baseline
    zero_shot: bool = False


@dataclass
class PipelineConfig:
    launcher: Literal["deepspeed", "torchrun", "accelerate"] = "torchrun"
    nproc: int = 2
    master_port: int = 0  # 0: a free port per stage; else this + the stage's number
    # Slurm jobs get SIGUSR1 this many seconds before their time limit (or on preemption): every
    # rank saves a checkpoint and the job requeues. Size it from a measured save (a stage log's
    # "checkpoint-N saved in S s"): 2-3 x S, and more on a slow shared filesystem.
    signal_lead_s: int = 600

    def validate(self, source: str) -> None:
        _at_least(source, "pipeline", self, 1, "nproc")
        _at_least(source, "pipeline", self, 30, "signal_lead_s")
        _require(
            self.master_port == 0 or 1024 <= self.master_port <= 65000,
            source,
            "pipeline.master_port",
            "0 (free ports) or in [1024, 65000]",
            self.master_port,
        )


@dataclass
class HubConfig:
    # Upload every exported model (with its model card) to the Hugging Face Hub as
    # REPO_PREFIX-STAGE-ROLE (e.g. me/qwen7b-esc-dpo-planner); HF_TOKEN from the environment.
    push: bool = False
    repo_prefix: str | None = None  # org/name-prefix
    private: bool = True

    def validate(self, source: str) -> None:
        if self.push and (
            self.repo_prefix is None or re.fullmatch(r"[\w.-]+/[\w.-]+", self.repo_prefix) is None
        ):
            raise ConfigError(
                f"{source}: 'hub.push' needs 'hub.repo_prefix' as org/name-prefix, "
                f"got {self.repo_prefix!r}"
            )


@dataclass
class Recipe:
    run: RunConfig = field(default_factory=RunConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tiny_model: TinyModelConfig = field(default_factory=TinyModelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    mine: MineConfig = field(default_factory=MineConfig)
    ipm: IpmConfig = field(default_factory=IpmConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    vllm: VllmConfig = field(default_factory=VllmConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def for_role(self, role: str) -> Recipe:
        """The recipe as ``role``'s stages see it: ``sft`` and ``dpo`` with their ``roles``
        entry for it applied, ``judge`` without the settings that do not apply to it."""
        return dataclasses.replace(
            self,
            sft=self.sft.for_role(role),
            dpo=self.dpo.for_role(role),
            judge=self.judge.for_role(role),
        )

    def validate(self, source: str) -> None:
        """Checks that span sections (each section checks its own keys)."""
        for section in ("mine", "infer"):
            if getattr(self, section).backend == "vllm" and (
                (self.vllm.url is None) == (self.vllm.python is None)
            ):
                raise ConfigError(
                    f"{source}: '{section}.backend: vllm' needs a server: set vllm.url (a "
                    "running server) or vllm.python (a vLLM install that esc-dist starts), "
                    "not both"
                )
        attn = self.model.attn_implementation
        if self.sft.packing and attn not in (*PADDING_FREE_ATTENTION, *AUTO_ATTENTION):
            raise ConfigError(
                f"{source}: 'sft.packing' needs padding-free attention: set "
                "model.attn_implementation to auto or flash_attention_2 (GPU; "
                f"{attn or 'sdpa'} lets packed examples see each other)"
            )
        for section in ("sft", "dpo"):
            if getattr(self, section).padding_free and attn not in (
                *PADDING_FREE_ATTENTION,
                *AUTO_ATTENTION,
                *MASK_ATTENTION,
            ):
                raise ConfigError(
                    f"{source}: '{section}.padding_free' needs flash attention, sdpa or eager "
                    f"(model.attn_implementation is {attn}): set one, or padding_free: null"
                )


# Attention implementations that keep packed examples apart (sft.packing needs one). SDPA does
# not: transformers 5.24 does not split it at the position ids' restarts (tested).
FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3")
PADDING_FREE_ATTENTION = (*FLASH_ATTENTION, "kernels-community/flash-attn")
AUTO_ATTENTION = (None, "auto")  # flash attention where it can run, else sdpa
MASK_ATTENTION = ("sdpa", "eager")  # take a 4D mask (shared prompts, padding-free rows)


# Recipe keys added after outputs were made, with the value that keeps those outputs' meaning:
# left out of stage and checkpoint keys while at that value, so adding them made no finished
# stage stale and no checkpoint unresumable.
NEUTRAL_KEYS = {
    ("infer", "backend"): "hf",
    ("mine", "decode"): "auto",
    ("infer", "decode"): "auto",
    ("judge", "max_tokens"): 512,
    ("model", "revision"): None,
    ("sft", "global_batch_size"): None,
    ("dpo", "global_batch_size"): None,
    ("sft", "liger"): None,
    ("dpo", "liger"): None,
    ("sft", "padding_free"): None,
    ("dpo", "padding_free"): None,
    ("sft", "roles"): {},
    ("dpo", "roles"): {},
}
# Keys that never change a stage's outputs (only what is kept beside them).
NOT_IN_KEYS = (
    ("sft", "keep_checkpoints"),
    ("dpo", "keep_checkpoints"),
    ("model", "shape"),
    ("sft", "eval_steps"),
    ("sft", "eval_examples"),
)


def key_view(recipe: Recipe) -> dict:
    """The recipe as stage and checkpoint keys see it (``NEUTRAL_KEYS`` at their neutral value
    and ``NOT_IN_KEYS`` left out)."""
    cfg = dataclasses.asdict(recipe)
    for (section, key), neutral in NEUTRAL_KEYS.items():
        if cfg[section].get(key, neutral) == neutral:
            cfg[section].pop(key, None)
    for section, key in NOT_IN_KEYS:
        cfg[section].pop(key, None)
    return cfg
