"""Timing helpers for the benchmark scripts: measured steps and tokens of a trainer (counted as
``esc_dist.train.packing.token_counts`` counts them: the batch's unpadded tokens, the same work
unit for every layout, and the fraction of the computed tokens that are not padding)."""

from __future__ import annotations

import time


class TrainerMeter:
    """Times steps ``warmup`` .. ``warmup + steps`` of a HF trainer and counts their tokens."""

    def __init__(self, trainer, warmup: int, steps: int):
        import torch
        from transformers import TrainerCallback

        self.tokens = self.real = self.computed = 0
        self.t0 = self.t1 = None
        meter = self

        def sync():
            if torch.cuda.is_available():
                torch.cuda.synchronize()

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == warmup:
                    sync()
                    meter.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == warmup + steps:
                    sync()
                    meter.t1 = time.perf_counter()

        trainer.add_callback(Clock())
        inner = trainer.training_step

        def counted(model, inputs, *a, **k):
            if trainer.state.global_step >= warmup:
                from esc_dist.train.packing import token_counts

                useful, real, computed = token_counts(inputs)
                meter.tokens += useful
                meter.real += real
                meter.computed += computed
            return inner(model, inputs, *a, **k)

        trainer.training_step = counted
        self.steps = steps

    def result(self) -> dict:
        seconds = self.t1 - self.t0
        return {
            "seconds": seconds,
            "steps": self.steps,
            "steps_per_s": self.steps / seconds,
            "non_pad_tokens_per_s": self.tokens / seconds,
            "non_pad_fraction": self.real / max(1, self.computed),
        }
