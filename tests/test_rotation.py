"""Rotations (QuaRot, SpinQuant): exact equivalence of the rotated float model, outliers spread, the chain rule
of the learned rotation, Cayley steps that stay orthogonal, and quantized rotated models end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_close, numerical_grad

from pocketgpt.cli import main
from pocketgpt.model import GPT, views
from pocketgpt.quant import QuantRecipe, quantize, rotation
from pocketgpt.quant.calibration import calibration_inputs
from pocketgpt.quant.fake import FakeQuantGPT
from pocketgpt.quant.rotation import cayley_step, hadamard_rotate, learn_rotation, rotatable
from pocketgpt.train import Checkpoint, evaluate, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("n", [8, 64, 96, 128])
def test_random_hadamard_is_orthogonal(n):
    h = rotation.random_hadamard(n, np.random.default_rng(0))
    np.testing.assert_allclose(h @ h.T, np.eye(n), atol=1e-12)
    if n & (n - 1) == 0:  # a power of two: a true Hadamard matrix, every entry +-1/sqrt(n)
        np.testing.assert_allclose(np.abs(h), 1 / np.sqrt(n), rtol=1e-12)


@pytest.mark.parametrize("name", ["microgpt", "shakespeare-cpu"])
def test_rotated_model_computes_the_same_logits(tiny_configs, name):
    config = tiny_configs[name]
    model = GPT(config, dtype=np.float64, seed=3)
    for p in model.params.values():  # norm gains away from 1, so folding them matters
        if p.ndim == 1:
            p[...] = np.random.default_rng(4).uniform(0.5, 2.0, p.shape)
    idx = np.random.default_rng(5).integers(0, config.vocab_size, (3, config.block_size))
    expected = model.forward(idx)[0]
    base = rotatable(model)
    assert base.config.norm == "rmsnorm" and not base.config.norm_weights and not base.config.tie_embeddings
    assert_close(base.forward(idx)[0], expected, 1e-12, "gain-folded RMSNorm model")
    assert_close(hadamard_rotate(model)[0].forward(idx)[0], expected, 1e-12, "rotated model")



def max_to_mean(x: np.ndarray) -> float:
    """Mean over rows of max|x| / mean|x|: how much one channel dominates a token's activations."""
    a = np.abs(x.reshape(-1, x.shape[-1]))
    return float(np.mean(a.max(axis=1) / np.maximum(a.mean(axis=1), 1e-12)))

def test_rotation_refuses_models_with_biases(tiny_configs):
    with pytest.raises(ValueError, match="without biases"):
        rotatable(GPT(tiny_configs["gpt2"]))


def test_rotation_spreads_an_outlier_channel(trained):
    """A residual channel 20x larger than the rest (a 'massive activation'): before rotation it dominates
    every token's input to the QKV projection; after, it is spread over all channels."""
    model, _, calib, _ = trained
    outlier = GPT(model.config, {k: v.copy() for k, v in model.params.items()})
    outlier.params["wpe.weight"][:, 5] += 20 * np.abs(outlier.params["wpe.weight"]).max()
    base = rotatable(outlier)
    rotated = hadamard_rotate(outlier)[0]
    before = max_to_mean(calibration_inputs(base, calib[:1], "h.0.attn.c_attn"))
    after = max_to_mean(calibration_inputs(rotated, calib[:1], "h.0.attn.c_attn"))
    assert before > 10 and after < before / 4, (before, after)  # measured: 16.8 -> 2.0


def test_rotation_grad_matches_finite_differences(tiny_configs):
    config = tiny_configs["shakespeare-cpu"]
    base = rotatable(GPT(config, dtype=np.float64, seed=1))
    rng = np.random.default_rng(2)
    idx = rng.integers(0, config.vocab_size, (2, config.block_size))
    targets = rng.integers(0, config.vocab_size, (2, config.block_size))
    r = rotation.random_hadamard(config.n_embd, rng)
    work = GPT(base.config, dtype=np.float64)

    def loss() -> float:
        work.load_params(rotation.rotated_params(base.params, base.config, r))
        return work.forward(idx, targets)[1]

    loss()
    _, flat = work.loss_and_grad(idx, targets)
    analytic = rotation.rotation_grad(base.params, base.config, views(flat.copy(), work.shapes))
    assert_close(analytic, numerical_grad(loss, r), 1e-6, "dL/dR")


def test_cayley_step_stays_orthogonal_and_descends():
    a = np.random.default_rng(0).standard_normal((16, 16))
    a -= a.T  # skew-symmetric, so the target below is a rotation (det +1), reachable from the identity
    target = np.linalg.solve(np.eye(16) + a / 4, np.eye(16) - a / 4)
    r = np.eye(16)
    for _ in range(50):  # minimise ||r - target||^2 / 2, whose gradient is r - target
        r = cayley_step(r, r - target, 0.2)
        np.testing.assert_allclose(r @ r.T, np.eye(16), atol=1e-10)
    assert np.linalg.norm(r - target) < 0.1 * np.linalg.norm(np.eye(16) - target)


def test_learned_rotation_lowers_the_fake_quantized_calibration_loss(trained):
    model, _, calib, _ = trained
    recipe = QuantRecipe("rtn", bits=3, group_size=64)

    def calib_loss(m: GPT) -> float:
        fake = FakeQuantGPT(m, recipe)
        return float(np.mean([fake.forward(x, y, w)[1] for x, y, w in calib]))

    start = calib_loss(hadamard_rotate(model)[0])
    learned, r = learn_rotation(model, recipe, calib, steps=40)
    np.testing.assert_allclose(r @ r.T, np.eye(r.shape[0]), atol=1e-10)
    assert calib_loss(learned) < start


def test_rotated_quantized_model_round_trips_and_stays_close(trained, tmp_path, capsys):
    model, ds, _, base = trained
    recipe = QuantRecipe("gptq", bits=4, group_size=64, rotation="hadamard")
    q = quantize(model, recipe, ds, calib=64)
    assert q.config.norm == "rmsnorm" and recipe.label == "gptq+hadamard"
    assert evaluate(q, ds) < base * 1.02  # a 4-bit GPTQ model within 2% of float (measured: ~0.2%)
    save_checkpoint(tmp_path / "q", Checkpoint.of(q, ds.tokenizer, ds.spec()))
    back = load_checkpoint(tmp_path / "q").model()
    tokens = np.arange(30)[None] % 65
    np.testing.assert_array_equal(back.forward(tokens)[0], q.forward(tokens)[0])
    save_checkpoint(tmp_path / "f", Checkpoint.of(model, ds.tokenizer, ds.spec()))
    assert main(["quantize", str(tmp_path / "f"), str(tmp_path / "q2"), "--method", "rtn", "--rotate", "learned",
                 "--steps", "5", "--calib", "32", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert r["rotation"] == "learned" and r["relative_increase"] < 0.05
    assert main(["quantize", str(tmp_path / "f"), str(tmp_path / "q3"), "--method", "awq", "--rotate",
                 "hadamard"]) == 2
    assert "--rotate works with rtn and gptq" in capsys.readouterr().err
