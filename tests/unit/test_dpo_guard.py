"""The DPO validation guard's rule: which evaluated step it keeps, when it replaces the kept
weights, and what a resumed run takes over (the decoding and export run for real in
tests/distributed/test_dpo.py; here the evaluations are scripted)."""

from __future__ import annotations

from pathlib import Path

from esc_dist.io import read_json
from esc_dist.strategies import STRATEGIES
from esc_dist.train.guard import BEST_DIR, GUARD_JSON, PlannerGuard, spread, summary


class Saver:
    """Stands in for the trainer: save_model writes the step it was called at."""

    def __init__(self):
        self.step = None
        self.saves = []

    def save_model(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / "step.txt").write_text(str(self.step))
        self.saves.append(self.step)


def scripted(
    tmp_path: Path, script: dict[int, tuple[float, float]], key="k1", tolerance=1.0
) -> PlannerGuard:
    guard = PlannerGuard(
        [[{"role": "user", "content": "x"}]],
        ["Question"],
        None,
        None,
        tmp_path,
        2,
        True,
        tolerance,
        8,
        4,
        None,
    )
    guard.trainer, guard.key = Saver(), key

    def evaluate(model, step):
        guard.trainer.step = step
        b, q = script[step]
        return {
            "step": step,
            "B": b,
            "Q": q,
            "accuracy": q,
            "unparseable": 0.0,
            "shares": dict.fromkeys(STRATEGIES, 1 / 8),
        }

    guard.evaluate = evaluate
    return guard


SCRIPT = {
    0: (1.0, 0.200),  # the SFT model
    2: (0.8, 0.191),  # lower B, Q 0.9 points down: the best so far
    4: (0.5, 0.150),  # lowest B, but Q 5 points down: not eligible
    6: (0.9, 0.210),  # eligible, B not lower
    8: (0.7, 0.199),
}  # the best


def test_the_best_step_is_the_lowest_b_within_the_q_tolerance(tmp_path):
    guard = scripted(tmp_path, SCRIPT)
    guard.begin(None, 0)
    for step in (2, 4, 6, 8):
        guard.record(None, step)
    assert guard.trainer.saves == [0, 2, 8]  # weights saved only on a new best
    assert (tmp_path / BEST_DIR / "step.txt").read_text() == "8"
    saved = read_json(tmp_path / GUARD_JSON)
    assert saved["best"] == {"step": 8, "B": 0.7, "Q": 0.199}
    assert saved["reference"]["step"] == 0 and [h["step"] for h in saved["history"]] == [
        0,
        2,
        4,
        6,
        8,
    ]
    assert guard.outcome()["best"]["step"] == 8
    # a stricter tolerance: step 2 (0.9 points down) no longer qualifies, so step 6 (B 0.9
    # under the SFT model's 1.0) is the best until step 8
    strict = scripted(tmp_path / "strict", SCRIPT, tolerance=0.5)
    strict.begin(None, 0)
    for step in (2, 4, 6, 8):
        strict.record(None, step)
    assert strict.trainer.saves == [0, 6, 8]


def test_a_dpo_that_never_beats_sft_keeps_the_sft_weights(tmp_path):
    guard = scripted(tmp_path, {0: (0.6, 0.2), 2: (0.9, 0.2), 4: (1.4, 0.1)})
    guard.begin(None, 0)
    guard.record(None, 2)
    guard.record(None, 4)
    assert guard.state["best"]["step"] == 0
    assert (tmp_path / BEST_DIR / "step.txt").read_text() == "0"


def test_resume_takes_over_the_state_of_the_same_run_only(tmp_path):
    first = scripted(tmp_path, SCRIPT)
    first.begin(None, 0)
    first.record(None, 2)
    # the same run resumed from its step-2 checkpoint: no new reference, the best is kept
    again = scripted(tmp_path, SCRIPT)
    again.begin(None, 2)
    assert again.trainer.saves == []
    assert again.state["reference"]["step"] == 0 and again.state["best"]["step"] == 2
    again.record(None, 4)
    assert [h["step"] for h in again.state["history"]] == [0, 2, 4]
    # another run (another training key) in the same directory starts over
    other = scripted(tmp_path, SCRIPT, key="k2")
    other.begin(None, 0)
    assert [h["step"] for h in other.state["history"]] == [0]


def test_summary_shares_and_spread():
    pred = ["Question", "Question", None, "Others"]
    metrics = {"as_others": {"B": 1.5, "Q": 0.25, "accuracy": 0.5}}
    s = summary(metrics, pred)
    assert s["shares"]["Question"] == 0.5 and s["shares"]["Others"] == 0.25
    assert s["unparseable"] == 0.25 and abs(sum(s["shares"].values()) + 0.25 - 1) < 1e-12
    assert spread(10, 4) == [0, 2, 5, 7] and spread(3, 5) == [0, 1, 2]
