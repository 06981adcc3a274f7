"""AWQ: scales that protect outlier channels, folding that leaves the float model unchanged, and a model
that loses less than with RTN."""

from __future__ import annotations

import numpy as np
import pytest

from pocketgpt.config import PRESETS
from pocketgpt.formats.groups import quantize_groups
from pocketgpt.model import GPT
from pocketgpt.quant import QuantRecipe, quantize_weights
from pocketgpt.quant.awq import awq_fold_scales, awq_quantize, search_scales
from pocketgpt.quant.calibration import BlockInputs
from pocketgpt.train import Batches, evaluate, load_dataset


def test_awq_beats_rtn_on_a_layer_with_outlier_input_channels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 128)).astype(np.float32)
    x[:, [3, 40, 77, 100]] *= 30.0
    w = (rng.standard_normal((64, 128)) * 0.05).astype(np.float32)
    y = x @ w.T
    rtn = np.mean((x @ quantize_groups(w, 4, 64).dequantize().T - y) ** 2)
    q, s = awq_quantize(w, x, 4, 64)
    awq = np.mean((x @ (q.dequantize() / s).T - y) ** 2)
    assert awq < 0.5 * rtn
    assert s[[3, 40, 77, 100]].min() > s.max() * 0.9  # the outlier channels get the largest scales


def test_alpha_zero_is_in_the_grid_so_awq_is_never_worse_than_rtn_on_its_own_objective():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((512, 64)).astype(np.float32)  # no outliers: scaling should not help much
    w = rng.standard_normal((32, 64)).astype(np.float32)
    s, alpha = search_scales(w, x, 4, 32, True)
    rtn = np.mean((x @ (quantize_groups(w, 4, 32).dequantize() - w).T) ** 2)
    awq = np.mean((x @ (quantize_groups(w * s, 4, 32).dequantize() / s - w).T) ** 2)
    assert awq <= rtn * (1 + 1e-6) and 0 <= alpha < 1


@pytest.mark.parametrize("preset", ["shakespeare-cpu", "microgpt"])
def test_folding_the_scales_leaves_the_float_model_unchanged(preset):
    ds = load_dataset("shakespeare")
    config = PRESETS[preset].replace(vocab_size=65, n_layer=2, n_embd=32, n_head=4, block_size=32)
    model = GPT(config, seed=0)
    for p in model.params.values():
        p += np.random.default_rng(1).standard_normal(p.shape).astype(p.dtype) * 0.05
    calib = [Batches(ds, 4, 32, seed=0).next()]
    work = GPT(config, {k: v.copy() for k, v in model.params.items()})
    inputs = BlockInputs(work, calib)
    for layer in range(config.n_layer):
        awq_fold_scales(work, layer, inputs, 4, 32, True)
    assert not np.allclose(work.params["h.0.attn.c_proj.weight"], model.params["h.0.attn.c_proj.weight"])
    x = calib[0][0]
    np.testing.assert_allclose(work.forward(x)[0], model.forward(x)[0], rtol=1e-4, atol=1e-4)


def test_awq_model_loses_less_than_rtn(trained):
    model, ds, calib, base = trained
    rtn = evaluate(quantize_weights(model, QuantRecipe("rtn", 3, 32)), ds) - base
    awq = evaluate(quantize_weights(model, QuantRecipe("awq", 3, 32), calib), ds) - base
    assert rtn > 0 and awq < rtn
