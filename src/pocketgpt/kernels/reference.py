"""The NumPy reference of every compiled kernel, with the same signatures as pocketgpt.kernels' operations: what
the engine ran before it had compiled kernels (a packed matrix dequantized, then multiplied by BLAS). Used for
float64 models, for prompts long enough that BLAS wins, and by the tests as the kernels' reference.
Legend: N rows, C channels, B batch, T new tokens, S cache positions, nh query heads, nkv key/value heads,
hs head size.
"""

from __future__ import annotations

import math

import numpy as np

from pocketgpt.formats import Packed
from pocketgpt.formats.kv4 import expand


def dense(w) -> np.ndarray:
    return w.dequantize() if isinstance(w, Packed) else w


def linear(x, w, b=None):
    """x (..., n) @ W^T (+ b) -> (..., R), W (R, n) a float array or a packed matrix (dequantized first)."""
    w = dense(w).astype(x.dtype, copy=False)
    y = x @ w.T
    return y if b is None else y + b


def int8_activations(x):
    """x (..., n) float32 as the integer-dot kernels round it (pocketgpt.kernels.interleaved): per block of 32, codes
    round(x / s) (int8) with s = max |x| / 127 (float32) -> (codes (..., n), scales (..., n / 32))."""
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    scale = np.abs(blocks).max(axis=-1) * np.float32(1.0 / 127.0)
    inverse = np.divide(np.float32(1.0), scale, out=np.zeros_like(scale), where=scale > 0)
    codes = np.rint(blocks * inverse[..., None]).astype(np.int8)
    return codes.reshape(x.shape), scale


def embedding(w, idx):
    """Rows idx of W."""
    return dense(w)[np.asarray(idx)]


def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


def layernorm(x, w, b, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def rope(x, cos, sin):
    """x (B, T, n, hs), cos and sin (B or 1, T, hs/2) -> (B, T, n, hs)."""
    half = x.shape[-1] // 2
    c, s = cos[:, :, None], sin[:, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def swiglu(h):
    F = h.shape[-1] // 2
    gate, up = h[..., :F], h[..., F:]
    return gate / (1.0 + np.exp(-gate)) * up


GELU_K = math.sqrt(2.0 / math.pi)


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(GELU_K * (x + 0.044715 * x**3)))


def gelu_train(x):
    """GELU (the tanh approximation) of x for training -> (y, t): y = 0.5 x (1 + t), t = tanh(k (x + 0.044715 x^3)),
    which the backward reads. In-place passes: at this size memory traffic, not arithmetic, is the cost."""
    t = x * x
    t *= 0.044715 * GELU_K
    t += GELU_K
    t *= x
    np.tanh(t, out=t)
    y = t + 1.0
    y *= x
    y *= 0.5
    return y, t


def gelu_train_backward(dy, x, t):
    """dy * (0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 * 0.044715 x^2))."""
    dx = x * x
    dx *= 3 * 0.044715 * GELU_K
    dx += GELU_K
    sech2 = t * t
    np.subtract(1.0, sech2, out=sech2)
    dx *= sech2
    dx *= x
    dx += t
    dx += 1.0
    dx *= 0.5
    dx *= dy
    return dx


def column_dot(a, b):
    """sum over all rows of a * b: (..., C), (..., C) -> (C,)."""
    C = a.shape[-1]
    return np.einsum("nc,nc->c", a.reshape(-1, C), b.reshape(-1, C))


def rmsnorm_train(x, w, eps):
    """RMSNorm for training: x (..., C), w (C,) or None -> (y, rstd (..., 1)), rstd = 1 / sqrt(mean(x^2) + eps),
    which the backward reads with x."""
    C = x.shape[-1]
    rstd = 1.0 / np.sqrt(np.einsum("...c,...c->...", x, x)[..., None] / C + eps)
    y = x * rstd
    if w is not None:
        y *= w
    return y, rstd


def rmsnorm_train_backward(dy, x, w, rstd):
    """-> (dx, dw or None): dx = rstd (g - xhat mean(g xhat)) with g = dy w, xhat = x rstd; dw = sum of dy xhat."""
    C = x.shape[-1]
    xhat = x * rstd
    dw = None
    if w is not None:
        dw = column_dot(dy, xhat)
        dy = dy * w
    dx = rstd * (dy - xhat * (np.einsum("...c,...c->...", dy, xhat)[..., None] / C))
    return dx, dw


def layernorm_train(x, w, b, eps):
    """LayerNorm for training: x (..., C), w and b (C,) or None -> (y, mean, rstd), mean and rstd (..., 1)."""
    C = x.shape[-1]
    mean = (x @ np.full(C, 1.0 / C, x.dtype))[..., None]  # a matrix-vector product (BLAS) rather than a reduction
    y = x - mean
    rstd = 1.0 / np.sqrt(np.einsum("...c,...c->...", y, y)[..., None] / C + eps)
    y *= rstd
    if w is not None:
        y *= w
    if b is not None:
        y += b
    return y, mean, rstd


def layernorm_train_backward(dy, x, w, mean, rstd, has_b):
    """-> (dx, dw or None, db or None): dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy w, xhat the normed x."""
    C = x.shape[-1]
    xhat = (x - mean) * rstd
    dw = column_dot(dy, xhat) if w is not None else None
    db = dy.reshape(-1, C).sum(axis=0) if has_b else None
    g = dy * w if w is not None else dy.copy()
    g -= (g @ np.full(C, 1.0 / C, g.dtype))[..., None]
    g -= xhat * (np.einsum("...c,...c->...", g, xhat)[..., None] / C)  # g's mean is now 0: same projection
    g *= rstd
    return g, dw, db


def swiglu_train_backward(dy, h):
    """The gradient through swiglu(h), h (..., 2F) = [gate | up]: d gate = dy up sig (1 + gate (1 - sig)),
    d up = dy gate sig, sig = sigmoid(gate) -> (..., 2F)."""
    F = h.shape[-1] // 2
    gate, up = h[..., :F], h[..., F:]
    sig = 1.0 / (1.0 + np.exp(-gate))
    return np.concatenate([dy * up * sig * (1.0 + gate * (1.0 - sig)), dy * gate * sig], axis=-1)


def masked_softmax(att, mask):
    """softmax(att + mask) over the last axis: att (..., R, Tk), R a multiple of Tq, whose row r is query r % Tq of
    the additive mask (Tq, Tk) (0 or -inf)."""
    Tq, Tk = mask.shape
    s = att.reshape(-1, Tq, Tk) + mask
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)
    return s.reshape(att.shape)


def softmax_backward(datt, att):
    """The gradient through a softmax over the last axis, in place: datt = (datt - sum(datt att)) att."""
    datt -= np.einsum("...t,...t->...", datt, att)[..., None]
    datt *= att
    return datt


def logsumexp(z):
    """log sum exp of each row of z (N, V) -> (N,)."""
    top = z.max(axis=1)
    return np.log(np.exp(z - top[:, None]).sum(axis=1)) + top


def cross_entropy_backward(z, targets, lse, scale):
    """d loss / d z of the weighted next-token loss sum(scale (lse - z[target])): (softmax(z) - onehot) scale,
    z (N, V), targets (N,), lse (N,) = logsumexp(z), scale (N,) each row's weight over the denominator."""
    dz = np.exp(z - lse[:, None])
    dz[np.arange(z.shape[0]), targets] -= 1.0
    dz *= scale[:, None].astype(dz.dtype)
    return dz


ADAM_CHUNK = 1 << 16  # elements per pass: the temporaries of one chunk stay in cache


def adamw(flat, grad, m, v, decay, lr, beta1, beta2, c1, c2, eps, weight_decay):
    """One AdamW step in place (see pocketgpt.train.optim.AdamW): decay is the decay mask, or None for none."""
    for lo in range(0, flat.size, ADAM_CHUNK):
        s = slice(lo, lo + ADAM_CHUNK)
        p, g, ms, vs = flat[s], grad[s], m[s], v[s]
        ms *= beta1
        ms += (1.0 - beta1) * g
        vs *= beta2
        vs += (1.0 - beta2) * (g * g)
        if decay is not None:
            p -= (lr * weight_decay) * decay[s] * p
        p -= lr * (ms * c1) / (np.sqrt(vs * c2) + eps)


def attention(q, k, v, rows, first):
    """Causal attention of new queries over a float cache: q (B, T, nh, hs); k, v (cache rows, nkv, S, hs);
    rows (B,) each sequence's cache row; first (B,) the position of each sequence's first query (query t sees
    positions 0 .. first + t) -> (B, T, nh, hs)."""
    B, T, nh, hs = q.shape
    nkv = k.shape[1]
    g = nh // nkv
    end = int(first.max()) + T
    lo = int(rows[0])
    run = slice(lo, lo + B) if np.array_equal(rows, np.arange(lo, lo + B)) else rows
    keys, values = k[run, :, :end], v[run, :, :end]  # (B, nkv, end, hs)
    qs = q.transpose(0, 2, 1, 3).reshape(B, nkv, g * T, hs) / math.sqrt(hs)  # query heads of a group stacked
    att = qs @ keys.transpose(0, 1, 3, 2)  # (B, nkv, g T, end)
    seen = np.arange(end) <= first[:, None, None] + np.arange(T)[None, :, None]  # (B, T, end)
    att.reshape(B, nkv, g, T, end)[...] += np.where(seen, 0.0, -np.inf).astype(q.dtype)[:, None, None]
    att = np.exp(att - att.max(axis=-1, keepdims=True))
    att /= att.sum(axis=-1, keepdims=True)
    y = (att @ values).reshape(B, nh, T, hs)
    return y.transpose(0, 2, 1, 3)


def attention_q4(q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, k_float, v_float, group, first):
    """attention() over one layer of a 4-bit KV cache (pocketgpt.formats.kv4), expanded first."""
    end = int(first.max()) + q.shape[1]
    keys, values = expand(k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, k_float, v_float, group, end)
    rows = np.arange(q.shape[0])
    return attention(q, keys.astype(q.dtype, copy=False), values.astype(q.dtype, copy=False), rows, first)
