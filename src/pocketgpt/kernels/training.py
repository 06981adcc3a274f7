"""Compiled passes of a training step (numba): where a profile of the shakespeare-cpu step found the time outside
the matrix products, each NumPy pass over the activations (seven for the GELU forward, ten for its backward, four
for Adam's moments and update, each reading and writing the whole array) becomes one loop that reads its inputs
once and writes its outputs once.

The GELU's tanh is computed from the kernels' exp (tanh(v) = 1 - 2 / (e^(2v) + 1), a polynomial that vectorizes,
pocketgpt.kernels.ops.exp_into), where np.tanh in a numba loop stays scalar. Its error against np.tanh is a few
float32 ulp of 1 (tested). The kernels release the GIL: the training loop runs one per worker thread, each on its
slice of the batch (pocketgpt.model.GPT.loss_and_grad). Adam runs without fastmath, operation for operation as the
NumPy optimizer, so that a float64 model still follows the reference engine's Adam.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pocketgpt.kernels.ops import GELU_K, exp_into

TRAIN = {"cache": True, "fastmath": True, "nogil": True}
CHUNK = 2048  # elements per pass of the GELU's exp: its scratch stays in the L1 cache
A, B3 = np.float32(0.044715), np.float32(3 * 0.044715)


@njit(**TRAIN)
def gelu_forward(x, y, t):
    """x (n,) float32 -> y = 0.5 x (1 + t) and t = tanh(k (x + 0.044715 x^3)), which the backward reads."""
    u = np.zeros(CHUNK, np.float32)  # a last, shorter chunk leaves the previous one's values past its end
    e = np.empty(CHUNK, np.float32)
    work = np.empty(CHUNK, np.int32)
    for lo in range(0, x.size, CHUNK):  # each chunk's slices: an index lo + j would keep the loops scalar
        xs, ys, ts = x[lo:lo + CHUNK], y[lo:lo + CHUNK], t[lo:lo + CHUNK]
        for j in range(xs.size):
            v = xs[j]
            u[j] = np.float32(2.0) * GELU_K * (v + A * v * v * v)
        exp_into(u, e, work)  # whole: a slice would reach exp_into with unknown strides, and stay scalar
        for j in range(xs.size):
            th = np.float32(1.0) - np.float32(2.0) / (e[j] + np.float32(1.0))
            ts[j] = th
            ys[j] = np.float32(0.5) * xs[j] * (np.float32(1.0) + th)


@njit(**TRAIN)
def gelu_backward(dy, x, t, dx):
    """dx = dy (0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 * 0.044715 x^2)), all (n,) float32."""
    for i in range(x.size):
        v, th = x[i], t[i]
        inner = GELU_K * (np.float32(1.0) + B3 * v * v)
        dx[i] = dy[i] * np.float32(0.5) * (np.float32(1.0) + th + v * (np.float32(1.0) - th * th) * inner)


@njit(cache=True, nogil=True)
def adamw(flat, grad, m, v, decay, lr, beta1, beta2, c1, c2, eps, weight_decay):
    """One AdamW step over flat parameters (n,) in place: the moments m, v, then the decoupled decay (decay (n,)
    its mask, or a size-0 array for none) and the update, in one pass, operation for operation as
    pocketgpt.train.optim.AdamW's NumPy passes (float32 or float64 arrays; the scalars in the arrays' type)."""
    b1, b2 = flat.dtype.type(beta1), flat.dtype.type(beta2)
    a1, a2 = flat.dtype.type(1.0 - beta1), flat.dtype.type(1.0 - beta2)
    step, shrink = flat.dtype.type(lr), flat.dtype.type(lr * weight_decay)
    k1, k2, tiny = flat.dtype.type(c1), flat.dtype.type(c2), flat.dtype.type(eps)
    decayed = decay.size > 0
    for i in range(flat.size):
        g = grad[i]
        mi = m[i] * b1 + a1 * g
        vi = v[i] * b2 + a2 * (g * g)
        m[i], v[i] = mi, vi
        p = flat[i]
        if decayed:
            p = p - shrink * decay[i] * p
        flat[i] = p - step * (mi * k1) / (np.sqrt(vi * k2) + tiny)
