"""The layers of the NumPy GPT, each a forward/backward pair with mirrored signatures.

`x_forward(inputs..., params...) -> (out, cache)` and `x_backward(dout, cache) -> (dinputs, dparams)`.
Every function works for float32 and float64 alike; nothing here knows about the model as a whole.
Shapes: B batch, T time, C channels, V vocabulary, nh heads, hs head size, N = B*T rows.
"""

from __future__ import annotations

import math

import numpy as np

GELU_K = math.sqrt(2.0 / math.pi)


# ----------------------------------------------------------------------------- embedding


def embedding_forward(idx, wte, wpe):
    """Token plus position embedding: (B, T) ids -> (B, T, C)."""
    T = idx.shape[1]
    x = wte[idx] + wpe[:T]  # (B, T, C)
    return x, (idx, wte.shape[0], T)


def embedding_backward(dx, cache, dwte, dwpe):
    """Accumulates into dwte (V, C) and dwpe (block_size, C)."""
    idx, V, T = cache
    C = dx.shape[-1]
    if V <= 2048:  # a one-hot matmul beats a scatter-add while the one-hot matrix is small
        onehot = (idx.reshape(-1, 1) == np.arange(V)).astype(dx.dtype)  # (N, V)
        dwte += onehot.T @ dx.reshape(-1, C)  # (V, N) @ (N, C) -> (V, C)
    else:
        np.add.at(dwte, idx.reshape(-1), dx.reshape(-1, C))
    dwpe[:T] += dx.sum(axis=0)  # (B, T, C) -> (T, C)


# ----------------------------------------------------------------------------- norms


def column_dot(a, b):
    """sum over all rows of a * b: (..., C), (..., C) -> (C,)."""
    C = a.shape[-1]
    return np.einsum("nc,nc->c", a.reshape(-1, C), b.reshape(-1, C))


def rmsnorm_forward(x, w, eps):
    """y = x / sqrt(mean(x^2) + eps) * w, over the last axis; w may be None."""
    C = x.shape[-1]
    rstd = 1.0 / np.sqrt(np.einsum("...c,...c->...", x, x)[..., None] / C + eps)  # (..., 1)
    xhat = x * rstd
    y = xhat * w if w is not None else xhat
    return y, (xhat, rstd, w)


def rmsnorm_backward(dy, cache):
    xhat, rstd, w = cache
    C = xhat.shape[-1]
    dw = None
    if w is not None:
        dw = column_dot(dy, xhat)
        dy = dy * w
    dx = rstd * (dy - xhat * (np.einsum("...c,...c->...", dy, xhat)[..., None] / C))
    return dx, dw


def layernorm_forward(x, w, b, eps):
    """y = (x - mean) / sqrt(var + eps) * w + b, over the last axis; w and b may be None."""
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
    xhat = xc * rstd
    y = xhat * w if w is not None else xhat
    if b is not None:
        y = y + b
    return y, (xhat, rstd, w, b is not None)


def layernorm_backward(dy, cache):
    xhat, rstd, w, has_b = cache
    dw = column_dot(dy, xhat) if w is not None else None
    db = dy.reshape(-1, dy.shape[-1]).sum(axis=0) if has_b else None
    g = dy * w if w is not None else dy
    dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
    return dx, dw, db


# ----------------------------------------------------------------------------- linear


def linear_forward(x, w, b):
    """y = x W^T + b with W stored (out, in), as torch.nn.Linear: (..., in) -> (..., out)."""
    n_in, n_out = w.shape[1], w.shape[0]
    y = x.reshape(-1, n_in) @ w.T  # one (N, in) @ (in, out) GEMM rather than one per batch row
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], n_out), (x, w, b is not None)


def linear_backward(dy, cache):
    x, w, has_b = cache
    n_in, n_out = x.shape[-1], dy.shape[-1]
    dy2 = dy.reshape(-1, n_out)  # (N, out)
    dw = dy2.T @ x.reshape(-1, n_in)  # (out, N) @ (N, in) -> (out, in)
    db = dy2.sum(axis=0) if has_b else None
    dx = (dy2 @ w).reshape(x.shape)  # (N, out) @ (out, in) -> (..., in)
    return dx, dw, db


# ----------------------------------------------------------------------------- activations


def relu_forward(x):
    y = np.maximum(x, 0)
    return y, y


def relu_backward(dy, cache):
    return dy * (cache > 0)


def gelu_forward(x):
    """GELU with the tanh approximation (GPT-2's)."""
    t = np.tanh(GELU_K * (x + 0.044715 * (x * x * x)))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dy, cache):
    x, t = cache
    dt = GELU_K * (1.0 + 3 * 0.044715 * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dt)


ACTIVATION = {"relu": (relu_forward, relu_backward), "gelu": (gelu_forward, gelu_backward)}


# ----------------------------------------------------------------------------- attention


def attention_forward(qkv, n_head):
    """Causal self-attention on a fused projection: (B, T, 3C) -> (B, T, C)."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    hs = C // n_head
    q, k, v = (qkv[..., i * C:(i + 1) * C].reshape(B, T, n_head, hs).transpose(0, 2, 1, 3)
               for i in range(3))  # each (B, nh, T, hs)
    scale = 1.0 / math.sqrt(hs)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, nh, T, T)
    scores += causal_mask(T, T, scores.dtype)
    att = softmax(scores)
    y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
    return y, (q, k, v, att, scale)


def attention_backward(dy, cache):
    q, k, v, att, scale = cache
    B, nh, T, hs = q.shape
    dy = dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, T, C) -> (B, nh, T, hs)
    datt = dy @ v.transpose(0, 1, 3, 2)  # (B, nh, T, T)
    dv = att.transpose(0, 1, 3, 2) @ dy  # (B, nh, T, hs)
    dscores = att * (datt - np.einsum("bhts,bhts->bht", datt, att)[..., None]) * scale
    dq = dscores @ k  # (B, nh, T, hs)
    dk = dscores.transpose(0, 1, 3, 2) @ q  # (B, nh, T, hs)
    dqkv = np.concatenate([d.transpose(0, 2, 1, 3).reshape(B, T, nh * hs) for d in (dq, dk, dv)], axis=-1)
    return dqkv  # (B, T, 3C)


def causal_mask(T_q: int, T_k: int, dtype) -> np.ndarray:
    """(T_q, T_k) additive mask: query i (the last T_q of T_k positions) sees keys 0..T_k-T_q+i."""
    offset = T_k - T_q
    allowed = np.arange(T_k)[None, :] <= np.arange(T_q)[:, None] + offset
    return np.where(allowed, 0.0, -np.inf).astype(dtype)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ----------------------------------------------------------------------------- loss


def cross_entropy_forward(logits, targets, weights, denom):
    """Sum of weighted next-token losses divided by denom: (B, T, V), (B, T), (B, T) -> scalar.

    `denom` is passed in (usually the number of target tokens in the whole batch) so that a
    batch split across workers gives the same loss and gradients as the whole batch.
    """
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    z = z - z.max(axis=1, keepdims=True)
    logsumexp = np.log(np.exp(z).sum(axis=1))
    rows = np.arange(z.shape[0])
    nll = logsumexp - z[rows, targets.reshape(-1)]  # (N,)
    w = weights.reshape(-1)
    loss = float(nll @ w) / denom
    return loss, (z, logsumexp, targets.reshape(-1), w, denom, logits.shape)


def cross_entropy_backward(cache):
    z, logsumexp, targets, w, denom, shape = cache
    dz = np.exp(z - logsumexp[:, None])  # softmax, (N, V)
    dz[np.arange(z.shape[0]), targets] -= 1.0
    dz *= (w / denom)[:, None].astype(dz.dtype)
    return dz.reshape(shape)
