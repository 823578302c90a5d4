"""Names shared by several stages. (The 8 ESConv strategies live in :mod:`esc_dist.strategies`.)"""

from __future__ import annotations

# The three models the method trains: planner (strategy), generator (reply given a strategy),
# vanilla (joint "[Strategy] reply" baseline).
ROLES: tuple[str, ...] = ("planner", "generator", "vanilla")
# the roles whose pairs oppose two strategies (judge.balance caps them per strategy)
BALANCED_ROLES: tuple[str, ...] = ("planner", "vanilla")

# Inference modes: planner then generator, the joint model, the generator alone conditioned on the
# gold strategies (how well it realises a strategy it is given), or the planner alone (strategies,
# no replies).
MODES: tuple[str, ...] = ("decoupled", "vanilla", "generator-gold", "planner")

# The four systems the pipeline evaluates: name -> (inference mode, training stage of the models).
SYSTEMS: dict[str, tuple[str, str]] = {
    "vanilla-sft": ("vanilla", "sft"),
    "vanilla-dpo": ("vanilla", "dpo"),
    "decoupled-sft": ("decoupled", "sft"),
    "decoupled-dpo": ("decoupled", "dpo"),
}
# The generators alone on gold strategies (eval.generator_gold): name -> (mode, training stage).
GOLD_SYSTEMS: dict[str, tuple[str, str]] = {
    "generator-gold-sft": ("generator-gold", "sft"),
    "generator-gold-dpo": ("generator-gold", "dpo"),
}
# The base model itself as planner and generator, untrained (eval.zero_shot): the baseline that
# shows what training added. name -> (mode, "base").
ZERO_SHOT_SYSTEMS: dict[str, tuple[str, str]] = {"zero-shot": ("decoupled", "base")}
SYSTEM_TITLES: dict[str, str] = {
    "vanilla-sft": "Vanilla-SFT",
    "vanilla-dpo": "Vanilla-DPO",
    "decoupled-sft": "Decoupled-SFT",
    "decoupled-dpo": "Decoupled-DPO",
    "generator-gold-sft": "Generator-SFT-on-gold",
    "generator-gold-dpo": "Generator-DPO-on-gold",
    "zero-shot": "Zero-shot",
}

# Evaluation protocols: "paper" = the DecoupledESC paper's (sampled decoding over several seeds,
# per-reply NLTK text metrics, the released 20-sweep Bradley-Terry B); "ours" = greedy decoding,
# corpus-level text metrics, B fitted to convergence. See esc_dist/eval/report.py.
PROTOCOLS: tuple[str, ...] = ("paper", "ours")

# How strategy metrics treat a prediction whose strategy cannot be parsed.
VARIANTS: tuple[str, ...] = ("as_others", "excluded")

# The label of an unparseable strategy in counts and confusion tables.
UNPARSEABLE = "unparseable"

# Exit status of a training stage stopped by a preemption signal after saving a checkpoint: the
# Slurm templates requeue the job on it.
PREEMPTED_EXIT = 75
