"""The compiled passes of a training step (pocketgpt.kernels.training) against their NumPy references
(pocketgpt.kernels.reference): the GELU forward and backward within a stated float32 tolerance of the float64
reference, Adam bit for bit against the NumPy passes it replaces, the norms, SwiGLU, rotary embedding, the attention
softmax and the cross-entropy forward and backward within float32 rounding of the float64 reference (whose own
gradients tests/test_layers.py checks against finite differences), a float32 model's loss and gradient against the
float64 model's for every model family, and float64 models still on the reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from pocketgpt import kernels
from pocketgpt.kernels import reference
from pocketgpt.model import GPT, layers, param_shapes, views

# tanh from the kernels' exp: 1 - 2 / (e^(2v) + 1) loses at most a few float32 ulp of 1 (about 6e-8 each) to the
# exp's own error and the subtraction; the products after it add a few float32 roundings relative to |x|.
TANH_ATOL = 5e-7
GELU_RTOL = 1e-6


def _inputs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 3
    x[:6] = [0.0, -0.0, 1e-8, -40.0, 40.0, 9.0]  # zero, tiny, saturated both ways
    return x.astype(np.float32)


@pytest.mark.parametrize("shape", [(7,), (3, 7, 2051), (2, 4096)])  # ragged against the compiled chunks of 2048
def test_the_gelu_forward_and_backward_equal_the_float64_reference(shape):
    x = _inputs(int(np.prod(shape)), len(shape)).reshape(shape)
    dy = np.random.default_rng(9).standard_normal(shape).astype(np.float32)
    y, t = kernels.gelu_train(x)
    assert y.dtype == t.dtype == np.float32 and y.shape == t.shape == shape
    ry, rt = reference.gelu_train(x.astype(np.float64))
    assert np.all(np.abs(t - rt) <= TANH_ATOL)
    assert np.all(np.abs(y - ry) <= TANH_ATOL * np.abs(x) + GELU_RTOL * np.abs(ry) + 1e-30)
    dx = kernels.gelu_train_backward(dy, x, t)
    rdx = reference.gelu_train_backward(dy.astype(np.float64), x.astype(np.float64), rt)
    bound = np.abs(dy) * (1.0 + np.abs(x) * 2.0 * (1.0 + 0.14 * x.astype(np.float64) ** 2))  # |dy| times each term
    assert np.all(np.abs(dx - rdx) <= 2 * TANH_ATOL * bound + 1e-30)


def test_a_float64_gelu_is_the_reference():
    x = _inputs(1000, 3).astype(np.float64)
    y, t = kernels.gelu_train(x)
    ry, rt = reference.gelu_train(x)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(t, rt)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decayed", [True, False])
def test_the_compiled_adamw_step_equals_the_numpy_passes_bit_for_bit(dtype, decayed):
    rng = np.random.default_rng(5)
    n = 70_001  # more than one of the reference's chunks
    flat, grad = (rng.standard_normal(n).astype(dtype) for _ in range(2))
    m, v = rng.standard_normal(n).astype(dtype) * 0.1, rng.random(n).astype(dtype) * 0.01
    decay = (rng.random(n) < 0.7).astype(dtype) if decayed else None
    ours = [a.copy() for a in (flat, grad, m, v)]
    theirs = [a.copy() for a in (flat, grad, m, v)]
    settings = (3e-3, 0.9, 0.95, 1 / (1 - 0.9**3), 1 / (1 - 0.95**3), 1e-8, 0.1)
    kernels.adamw(*ours, decay, *settings)
    reference.adamw(*theirs, decay, *settings)
    for got, expected in zip(ours, theirs):
        np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(ours[0], flat)  # it did step


# float32 against float64 for the passes below: each output is a sum of at most a few hundred products, whose
# float32 rounding stays under 1e-5 of the output's largest magnitude (assert_close: max |error| / max |expected|).
F32_RTOL = 1e-5


def _normal(*shape, seed=0, scale=1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _both(f32_out, f64_out, what):
    for got, expected, name in zip(f32_out, f64_out, what):
        if expected is None:
            assert got is None, name
            continue
        assert got.dtype == np.float32 and got.shape == expected.shape, name
        assert_close(got, expected, F32_RTOL, name)


@pytest.mark.parametrize("gain", [True, False])
@pytest.mark.parametrize("shape", [(2, 5, 576), (7, 33)])
def test_the_compiled_rmsnorm_forward_and_backward_equal_the_reference(shape, gain):
    x, dy = _normal(*shape, seed=1, scale=3.0), _normal(*shape, seed=2)
    w = _normal(shape[-1], seed=3) if gain else None
    f64 = [a if a is None else a.astype(np.float64) for a in (x, dy, w)]
    y, rstd = kernels.rmsnorm_train(x, w, 1e-5)
    ry, rrstd = reference.rmsnorm_train(f64[0], f64[2], 1e-5)
    _both((y, rstd), (ry, rrstd), ("y", "rstd"))
    _both(kernels.rmsnorm_train_backward(dy, x, w, rstd), reference.rmsnorm_train_backward(f64[1], f64[0], f64[2],
                                                                                          rrstd), ("dx", "dw"))


@pytest.mark.parametrize("gain,bias", [(True, True), (True, False), (False, False)])
def test_the_compiled_layernorm_forward_and_backward_equal_the_reference(gain, bias):
    shape = (3, 9, 129)
    x, dy = _normal(*shape, seed=4, scale=2.0) + 5.0, _normal(*shape, seed=5)  # an offset the mean must remove
    w, b = (_normal(129, seed=6) if gain else None), (_normal(129, seed=7) if bias else None)
    f64 = [a if a is None else a.astype(np.float64) for a in (x, dy, w, b)]
    y, mean, rstd = kernels.layernorm_train(x, w, b, 1e-5)
    ry, rmean, rrstd = reference.layernorm_train(f64[0], f64[2], f64[3], 1e-5)
    _both((y, mean, rstd), (ry, rmean, rrstd), ("y", "mean", "rstd"))
    _both(kernels.layernorm_train_backward(dy, x, w, mean, rstd, bias),
          reference.layernorm_train_backward(f64[1], f64[0], f64[2], rmean, rrstd, bias), ("dx", "dw", "db"))


@pytest.mark.parametrize("F", [7, 1536])
def test_the_compiled_swiglu_backward_equals_the_reference(F):
    h, dy = _normal(4, 3, 2 * F, seed=8, scale=4.0), _normal(4, 3, F, seed=9)
    _both((kernels.swiglu(h), kernels.swiglu_train_backward(dy, h)),
          (reference.swiglu(h.astype(np.float64)), reference.swiglu_train_backward(dy.astype(np.float64),
                                                                                  h.astype(np.float64))),
          ("y", "dh"))


def test_the_rotary_layer_in_float32_equals_float64_and_its_backward_is_the_inverse_rotation():
    cos, sin = layers.rope_tables(10, 16, 10000.0, np.float64)
    x = _normal(2, 3, 10, 16, seed=10)
    y, cache = layers.rope_forward(x, cos.astype(np.float32), sin.astype(np.float32))
    ry, _ = layers.rope_forward(x.astype(np.float64), cos, sin)
    _both((y,), (ry,), ("y",))
    np.testing.assert_allclose(layers.rope_backward(y, cache), x, atol=1e-5)  # a rotation's transpose undoes it


def test_the_compiled_masked_softmax_equals_the_reference_with_exact_zeros_where_masked():
    Tq = Tk = 70
    mask = layers.causal_mask(Tq, Tk, np.float32)
    att = _normal(2, 3, 2 * Tq, Tk, seed=11, scale=5.0)  # two query heads stacked per key/value head, as attention
    expected = reference.masked_softmax(att.astype(np.float64), mask.astype(np.float64))
    got = kernels.masked_softmax(att.copy(), mask)
    _both((got,), (expected,), ("softmax",))
    assert np.all(got.reshape(-1, Tq, Tk)[:, ~np.isfinite(mask)] == 0.0)  # not the exp floor e^-87
    np.testing.assert_allclose(got.sum(axis=-1), 1.0, rtol=1e-6)
    datt = _normal(*att.shape, seed=12)
    _both((kernels.softmax_backward(datt.copy(), got),),
          (reference.softmax_backward(datt.astype(np.float64), expected),), ("d softmax",))


@pytest.mark.parametrize("V", [65, 5001])  # one chunk of the compiled exp, and a ragged last one
def test_the_compiled_cross_entropy_equals_the_reference(V):
    z = _normal(6, V, seed=13, scale=4.0)
    targets = np.random.default_rng(14).integers(0, V, 6)
    scale = np.random.default_rng(15).random(6).astype(np.float32)
    lse, rlse = kernels.logsumexp(z), reference.logsumexp(z.astype(np.float64))
    _both((lse,), (rlse,), ("logsumexp",))
    _both((kernels.cross_entropy_backward(z, targets, lse, scale),),
          (reference.cross_entropy_backward(z.astype(np.float64), targets, rlse, scale.astype(np.float64)),),
          ("dz",))


# A whole model: the float32 loss and gradient through the compiled passes against the float64 model's, relative to
# each gradient's largest entry; float32 rounding compounds over the layers, so the bound is looser than a pass's.
MODEL_RTOL = 1e-4


@pytest.mark.parametrize("name", ["shakespeare-cpu", "layernorm-bias", "gpt2", "llama-gqa", "llama-mqa-untied"])
def test_a_float32_model_trains_through_the_kernels_as_the_float64_model_does(tiny_configs, name):
    config = tiny_configs[name]
    model64 = GPT(config, dtype="float64", seed=3)
    model32 = GPT(config, {k: v.astype(np.float32) for k, v in model64.params.items()})
    idx = np.random.default_rng(16).integers(0, config.vocab_size, (3, config.block_size + 1))
    x, y = idx[:, :-1], idx[:, 1:]
    loss32, grad32 = model32.loss_and_grad(x, y)
    loss64, grad64 = model64.loss_and_grad(x, y)
    assert abs(loss32 - loss64) < MODEL_RTOL * loss64
    grads32, grads64 = views(grad32.copy(), param_shapes(config)), views(grad64.copy(), param_shapes(config))
    for k in grads64:
        assert_close(grads32[k], grads64[k], MODEL_RTOL, k)
