"""SmoothQuant W8A8: smoothing moves activation outliers into the weights; folding keeps the float model."""

from __future__ import annotations

import numpy as np

from pocketgpt.config import PRESETS
from pocketgpt.formats.groups import quantize_groups, quantize_per_token
from pocketgpt.model import GPT
from pocketgpt.quant import QuantRecipe, quantize_weights
from pocketgpt.quant.calibration import BlockInputs
from pocketgpt.quant.smoothquant import smooth_fold_scales
from pocketgpt.train import Batches, evaluate, load_dataset


def test_smoothing_lowers_w8a8_error_on_activation_outliers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2048, 128)).astype(np.float32)
    x[:, [5, 60]] *= 60.0  # outlier channels wreck per-token int8 scales
    w = (rng.standard_normal((64, 128)) * 0.05).astype(np.float32)
    y = x @ w.T

    def w8a8(x, w):
        return quantize_per_token(x) @ quantize_groups(w, 8, 64).dequantize().T

    plain = np.mean((w8a8(x, w) - y) ** 2)
    s = np.abs(x).max(axis=0) ** 0.5 / np.abs(w).max(axis=0) ** 0.5
    smooth = np.mean((w8a8(x / s, w * s) - y) ** 2)
    assert smooth < 0.2 * plain


def test_per_token_quantization_is_within_half_a_step():
    x = np.random.default_rng(1).standard_normal((10, 32))
    step = np.abs(x).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(quantize_per_token(x) - x) <= 0.5 * step + 1e-12)


def test_smoothing_leaves_the_float_model_unchanged():
    ds = load_dataset("shakespeare")
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=65, n_layer=2, n_embd=32, block_size=32)
    model = GPT(config, seed=0)
    calib = [Batches(ds, 4, 32, seed=0).next()]
    work = GPT(config, {k: v.copy() for k, v in model.params.items()})
    inputs = BlockInputs(work, calib)
    for layer in range(2):
        smooth_fold_scales(work, layer, inputs)
    assert not np.allclose(work.params["h.1.ln_2.weight"], model.params["h.1.ln_2.weight"])
    np.testing.assert_allclose(work.forward(calib[0][0])[0], model.forward(calib[0][0])[0], rtol=1e-4, atol=1e-4)


def test_w8a8_model_loses_under_one_percent(trained):
    model, ds, calib, base = trained
    q = quantize_weights(model, QuantRecipe("smoothquant", 8, 64), calib)
    assert abs(evaluate(q, ds) - base) / base < 0.01
