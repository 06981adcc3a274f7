"""GPTQ: equal to the plain optimal-brain-quantizer recursion it speeds up, and better than RTN where
inputs are correlated."""

from __future__ import annotations

import numpy as np
import pytest

from pocketgpt.formats.groups import group_params, quantize_codes, quantize_groups
from pocketgpt.quant.gptq import gptq_quantize, hessian, inverse_cholesky


def correlated_inputs(rng, n_in=128, n=1024):
    mix = rng.standard_normal((n_in, n_in)) / np.sqrt(n_in) + 0.1 * np.eye(n_in)
    x = rng.standard_normal((n, n_in)) @ mix.T
    x[:, :3] *= 8.0  # a few dominant channels
    return x


def obq_reference(w, h, bits, group_size, damp):
    """The textbook recursion: quantize column j, spread its error with H^-1, drop j from H^-1 (Schur)."""
    w = w.astype(np.float64).copy()
    hinv = np.linalg.inv(h + damp * np.mean(np.diag(h)) * np.eye(len(h)))
    deq = np.zeros_like(w)
    for j in range(w.shape[1]):
        if j % group_size == 0:
            scales, _ = group_params(w[:, j:j + group_size], bits, group_size, True)
        q = quantize_codes(w[:, j:j + 1], scales, None, bits)[:, 0].astype(np.float64)
        deq[:, j] = (q - 2 ** (bits - 1)) * scales[:, 0].astype(np.float64)
        err = (w[:, j] - deq[:, j]) / hinv[j, j]
        w[:, j + 1:] -= np.outer(err, hinv[j, j + 1:])
        hinv -= np.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return deq


def test_gptq_equals_the_obq_recursion():
    rng = np.random.default_rng(0)
    x = correlated_inputs(rng, n_in=64)
    w = rng.standard_normal((16, 64)) * 0.1
    h = hessian(x)
    ours = gptq_quantize(w, h, bits=4, group_size=32, block=16).dequantize(np.float64)
    np.testing.assert_allclose(ours, obq_reference(w, h, 4, 32, 0.01), rtol=0, atol=1e-6)
    same = gptq_quantize(w, h, bits=4, group_size=32, block=128).dequantize(np.float64)
    np.testing.assert_array_equal(ours, same)  # blocking does not change the result


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_is_below_rtn_on_correlated_inputs(symmetric, act_order):
    rng = np.random.default_rng(1)
    x = correlated_inputs(rng)
    w = (rng.standard_normal((64, 128)) * 0.05).astype(np.float32)

    def output_error(q):
        return np.mean(((w - q.dequantize()) @ x.T) ** 2)

    rtn = output_error(quantize_groups(w, 4, 64, symmetric))
    gptq = output_error(gptq_quantize(w, hessian(x), 4, 64, symmetric, act_order=act_order))
    assert gptq < 0.5 * rtn


def test_dampening_rises_until_cholesky_succeeds():
    x = np.random.default_rng(3).standard_normal((5, 16))  # 5 samples, 16 inputs: H has rank 5
    h = hessian(x)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(h)
    u, lam = inverse_cholesky(h, damp=0.0)
    assert lam > 0 and np.all(np.isfinite(u))
    np.testing.assert_allclose(u.T @ u @ (h + lam * np.eye(16)), np.eye(16), atol=1e-6)


def test_dead_inputs_get_zero_weights():
    rng = np.random.default_rng(2)
    x = correlated_inputs(rng, n_in=64)
    x[:, 5] = 0.0
    q = gptq_quantize(rng.standard_normal((8, 64)), hessian(x), 4, 32)
    assert not q.dequantize()[:, 5].any()
