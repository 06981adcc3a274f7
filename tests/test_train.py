"""Training: loss goes down, evaluation is deterministic, and resume continues exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pocketgpt.config import PRESETS
from pocketgpt.model import GPT
from pocketgpt.train import TRAIN_DEFAULTS, TrainSettings, evaluate, load_checkpoint, load_dataset, train


def setup(data="names", preset="microgpt", **changes):
    ds = load_dataset(data)
    config = PRESETS[preset].replace(vocab_size=ds.tokenizer.vocab_size)
    settings = dataclasses.replace(TRAIN_DEFAULTS[preset], **changes)
    return ds, config, settings


def test_training_lowers_validation_loss():
    ds, config, s = setup(steps=150, batch_size=16)
    model = GPT(config, seed=0)
    before = evaluate(model, ds)
    result = train(model, ds, s)
    assert result["val_loss"] < before - 0.5  # from ~ln(27) = 3.30 to below 2.8
    assert result["val_loss"] == evaluate(model, ds)


@pytest.mark.parametrize("data,preset", [("names", "microgpt"), ("shakespeare", "shakespeare-cpu")])
def test_resume_gives_identical_weights(tmp_path, data, preset):
    n = 6
    ds, config, s = setup(data, preset, steps=2 * n, eval_interval=n, batch_size=4, warmup=2)
    config = config.replace(n_layer=1) if preset == "shakespeare-cpu" else config

    straight = GPT(config, seed=s.seed)
    train(straight, ds, s)

    interrupted = GPT(config, seed=s.seed)

    def stop(info):
        if info["step"] == n + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(interrupted, ds, s, out=tmp_path / "run", on_step=stop)
    ckpt = load_checkpoint(tmp_path / "run", train_state=True)
    assert ckpt.train_state["step"] == n
    resumed = ckpt.model()
    train(resumed, ds, s, out=tmp_path / "run", resume=ckpt)
    np.testing.assert_array_equal(resumed.flat, straight.flat)
    assert load_checkpoint(tmp_path / "run", train_state=True).train_state["step"] == 2 * n


def test_settings_are_validated():
    with pytest.raises(ValueError, match="lr must be > 0"):
        TrainSettings(lr=0)
    with pytest.raises(ValueError, match="schedule"):
        TrainSettings(schedule="step")
