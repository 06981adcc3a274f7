"""Compiled passes of a training step (numba), each the forward or backward of one layer outside the matrix
products: where a profile of the shakespeare-cpu step found the time outside BLAS, each NumPy pass over the
activations (seven for the GELU forward, ten for its backward, four for Adam's moments and update, each reading and
writing the whole array) becomes one loop that reads its inputs once and writes its outputs once. The Llama family's
layers are here too (RMSNorm, SwiGLU's backward; rotary embedding is the inference kernel), and the attention's
softmax and the cross-entropy over the vocabulary. Not here: the matrix products, which BLAS runs.

Transcendentals come from the kernels' exp (pocketgpt.kernels.ops.exp_into, a polynomial that vectorizes), where a
libm call in a numba loop stays scalar: the GELU's tanh(v) = 1 - 2 / (e^(2v) + 1), whose error against np.tanh is
a few float32 ulp of 1 (tested), SwiGLU's sigmoid, the softmaxes' exponentials. The kernels release the GIL: the
training loop runs one per worker thread, each on its slice of the batch (pocketgpt.model.GPT.loss_and_grad). Adam
runs without fastmath, operation for operation as the NumPy optimizer, so that a float64 model still follows the
reference engine's Adam. Legend: N rows (tokens), C channels, F the MLP's width, R attention rows, Tk keys,
V vocabulary.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from pocketgpt.kernels.ops import GELU_K, exp_into, layernorm_row, rmsnorm_row

TRAIN = {"cache": True, "fastmath": True, "nogil": True, "error_model": "numpy"}
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


@njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
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


@njit(**TRAIN)
def rmsnorm_forward(x, w, eps, y, rstd):
    """x (N, C), w (C,) -> y = x rstd w and rstd (N,) = 1 / sqrt(mean(x^2) + eps): the decode step's rows."""
    for i in range(x.shape[0]):
        rstd[i] = rmsnorm_row(x[i], w, eps, y[i])


@njit(**TRAIN)
def rmsnorm_backward(dy, x, w, rstd, dx, dw):
    """dx (N, C) = rstd (g - xhat mean(g xhat)) with g = dy w, xhat = x rstd; dw (C,) += sum over rows of dy xhat."""
    N, C = x.shape
    for i in range(N):
        xi, di, oi, r = x[i], dy[i], dx[i], rstd[i]
        dot = np.float32(0.0)
        for c in range(C):
            dot += di[c] * w[c] * xi[c]
            dw[c] += di[c] * xi[c] * r
        k = dot * r * r / np.float32(C)
        for c in range(C):
            oi[c] = r * (di[c] * w[c] - xi[c] * k)


@njit(**TRAIN)
def layernorm_forward(x, w, b, eps, y, mean, rstd):
    """x (N, C), w and b (C,) -> y = (x - mean) rstd w + b, mean (N,) and rstd (N,) = 1 / sqrt(var + eps): the decode
    step's rows."""
    for i in range(x.shape[0]):
        mean[i], rstd[i] = layernorm_row(x[i], w, b, eps, y[i])


@njit(**TRAIN)
def layernorm_backward(dy, x, w, mean, rstd, dx, dw, db):
    """dx (N, C) = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy w, xhat = (x - mean) rstd; dw (C,) += sum of
    dy xhat and db (C,) += sum of dy over the rows."""
    N, C = x.shape
    for i in range(N):
        xi, di, oi, mu, r = x[i], dy[i], dx[i], mean[i], rstd[i]
        gsum, gdot = np.float32(0.0), np.float32(0.0)
        for c in range(C):
            xh = (xi[c] - mu) * r
            g = di[c] * w[c]
            gsum += g
            gdot += g * xh
            dw[c] += di[c] * xh
            db[c] += di[c]
        gsum /= np.float32(C)
        gdot /= np.float32(C)
        for c in range(C):
            oi[c] = r * (di[c] * w[c] - gsum - (xi[c] - mu) * r * gdot)


@njit(**TRAIN)
def swiglu_backward(dy, h, dh):
    """dy (N, F), h (N, 2F) = [gate | up] -> dh (N, 2F): d gate = dy up sig (1 + gate (1 - sig)), d up = dy gate sig."""
    N, F = dy.shape
    neg, e, work = np.empty(F, np.float32), np.empty(F, np.float32), np.empty(F, np.int32)
    for i in range(N):
        gate, up, d = h[i, :F], h[i, F:], dy[i]
        dgate, dup = dh[i, :F], dh[i, F:]
        for j in range(F):
            neg[j] = -gate[j]
        exp_into(neg, e, work)
        for j in range(F):
            sig = np.float32(1.0) / (np.float32(1.0) + e[j])
            dgate[j] = d[j] * up[j] * sig * (np.float32(1.0) + gate[j] * (np.float32(1.0) - sig))
            dup[j] = d[j] * gate[j] * sig


@njit(**TRAIN)
def masked_softmax(att, mask):
    """softmax(att + mask) over each row of att (R, Tk), in place; row r is query r % Tq of the additive mask
    (Tq, Tk). A masked position (-inf) gets exactly 0, not the kernels' exp floor e^-87."""
    R, Tk = att.shape
    Tq = mask.shape[0]
    u, e, work = np.empty(Tk, np.float32), np.empty(Tk, np.float32), np.empty(Tk, np.int32)
    floor = np.float32(-87.0)
    for r in range(R):
        row, m = att[r], mask[r % Tq]
        top = np.float32(-np.inf)
        for p in range(Tk):
            top = max(top, row[p] + m[p])
        for p in range(Tk):
            u[p] = row[p] + m[p] - top
        exp_into(u, e, work)
        total = np.float32(0.0)
        for p in range(Tk):
            w = e[p] if u[p] >= floor else np.float32(0.0)
            e[p] = w
            total += w
        inv = np.float32(1.0) / total
        for p in range(Tk):
            row[p] = e[p] * inv


@njit(**TRAIN)
def softmax_backward(datt, att):
    """The gradient through a softmax over each row, in place: datt (R, Tk) = (datt - sum(datt att)) att."""
    R, Tk = att.shape
    for r in range(R):
        d, a = datt[r], att[r]
        s = np.float32(0.0)
        for p in range(Tk):
            s += d[p] * a[p]
        for p in range(Tk):
            d[p] = (d[p] - s) * a[p]


@njit(**TRAIN)
def logsumexp(z, lse):
    """log sum exp of each row of z (N, V) -> lse (N,), the exp taken CHUNK values at a time."""
    N, V = z.shape
    u, e = np.zeros(CHUNK, np.float32), np.empty(CHUNK, np.float32)  # zeros: see gelu_forward
    work = np.empty(CHUNK, np.int32)
    for i in range(N):
        row = z[i]
        top = row[0]
        for p in range(V):
            top = max(top, row[p])
        total = np.float32(0.0)
        for lo in range(0, V, CHUNK):
            part = row[lo:lo + CHUNK]
            n = part.size
            for j in range(n):
                u[j] = part[j] - top
            exp_into(u, e, work)
            for j in range(n):
                total += e[j]
        lse[i] = np.log(total) + top


@njit(**TRAIN)
def cross_entropy_backward(z, targets, lse, scale, dz):
    """dz (N, V) = (softmax(z) - onehot(targets)) scale: z (N, V), targets (N,), lse (N,) from logsumexp, scale (N,)."""
    N, V = z.shape
    u, e = np.zeros(CHUNK, np.float32), np.empty(CHUNK, np.float32)
    work = np.empty(CHUNK, np.int32)
    for i in range(N):
        row, out, shift, s = z[i], dz[i], lse[i], scale[i]
        for lo in range(0, V, CHUNK):
            part, dst = row[lo:lo + CHUNK], out[lo:lo + CHUNK]
            n = part.size
            for j in range(n):
                u[j] = part[j] - shift
            exp_into(u, e, work)
            for j in range(n):
                dst[j] = e[j] * s
        out[targets[i]] -= s
