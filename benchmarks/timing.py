"""Timing helpers for the benchmark scripts: measured steps and non-pad tokens of a trainer."""

from __future__ import annotations

import time


class TrainerMeter:
    """Times steps ``warmup`` .. ``warmup + steps`` of a HF trainer and counts their tokens."""

    def __init__(self, trainer, warmup: int, steps: int):
        import torch
        from transformers import TrainerCallback

        self.tokens = self.padded = 0
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
                m = inputs.get("attention_mask")
                if m is None:  # padding-free (packed) batches: every position is a token
                    m = inputs["input_ids"]
                    meter.tokens += int(m.numel())
                else:
                    meter.tokens += int(m.sum())
                meter.padded += int(m.numel())
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
            "non_pad_fraction": self.tokens / max(1, self.padded),
        }
