"""microgpt's recipe on the fast engine: same losses (to print precision) and the same samples."""

from __future__ import annotations

from test_reference import MICROGPT_20_STEP_LOSSES, MICROGPT_20_STEP_SAMPLES

from pocketgpt.train.reproduce import reproduce_microgpt


def test_fast_engine_reproduces_microgpt_20_step_run():
    losses, samples = reproduce_microgpt(steps=20, log=lambda s: None)
    for ours, theirs in zip(losses, MICROGPT_20_STEP_LOSSES):
        assert abs(ours - theirs) < 1e-9  # float64, different summation order: far below the printed 4 decimals
    assert samples == MICROGPT_20_STEP_SAMPLES


def test_fast_engine_reaches_microgpt_published_losses_early_in_the_1000_step_run():
    # microgpt's published 1000-step run: step 1 3.3660, 2 3.4243, 3 3.1778, 4 3.0664, 5 3.2209, 10 3.2229
    losses, _ = reproduce_microgpt(steps=1000, num_samples=0, log=lambda s: None, stop_after=10)
    assert [f"{losses[i]:.4f}" for i in (0, 1, 2, 3, 4, 9)] == ["3.3660", "3.4243", "3.1778", "3.0664",
                                                                  "3.2209", "3.2229"]
