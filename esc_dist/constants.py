"""Names shared by several stages. (The 8 ESConv strategies live in :mod:`esc_dist.strategies`.)"""

from __future__ import annotations

# The three models the method trains: planner (strategy), generator (reply given a strategy),
# vanilla (joint "[Strategy] reply" baseline).
ROLES: tuple[str, ...] = ("planner", "generator", "vanilla")

# Inference modes: planner then generator, or the joint model.
MODES: tuple[str, ...] = ("decoupled", "vanilla")

# The four systems the pipeline evaluates: name -> (inference mode, training stage of the models).
SYSTEMS: dict[str, tuple[str, str]] = {
    "vanilla-sft": ("vanilla", "sft"),
    "vanilla-dpo": ("vanilla", "dpo"),
    "decoupled-sft": ("decoupled", "sft"),
    "decoupled-dpo": ("decoupled", "dpo"),
}
SYSTEM_TITLES: dict[str, str] = {"vanilla-sft": "Vanilla-SFT", "vanilla-dpo": "Vanilla-DPO",
                                 "decoupled-sft": "Decoupled-SFT", "decoupled-dpo": "Decoupled-DPO"}

# How strategy metrics treat a prediction whose strategy cannot be parsed.
VARIANTS: tuple[str, ...] = ("as_others", "excluded")

# The label of an unparseable strategy in counts and confusion tables.
UNPARSEABLE = "unparseable"

# Exit status of a training stage stopped by a preemption signal after saving a checkpoint: the
# Slurm templates requeue the job on it.
PREEMPTED_EXIT = 75
