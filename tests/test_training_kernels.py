"""The compiled passes of a training step (pocketgpt.kernels.training) against their NumPy references
(pocketgpt.kernels.reference): the GELU forward and backward within a stated float32 tolerance of the float64
reference, Adam bit for bit against the NumPy passes it replaces, and float64 models still on the reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from pocketgpt import kernels
from pocketgpt.kernels import reference

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
