"""The layers of the NumPy GPT, each a forward/backward pair with mirrored signatures.

`x_forward(inputs..., params...) -> (out, cache)` and `x_backward(dout, cache) -> (dinputs, dparams)`.
Every function works for float32 and float64 alike; nothing here knows about the model as a whole.
Shapes: B batch, T time, C channels, V vocabulary, nh query heads, nkv key/value heads, hs head size,
F the MLP's hidden width, N = B*T rows.
"""

from __future__ import annotations

import math

import numpy as np

from pocketgpt import kernels

# ----------------------------------------------------------------------------- embedding


def embedding_forward(idx, wte, wpe=None, positions=None):
    """Token embedding, plus the learned position embedding when wpe is given: (B, T) ids -> (B, T, C).
    positions (T,) or (B, T) default to 0..T-1."""
    positions = np.arange(idx.shape[1]) if positions is None else positions
    x = wte[idx]  # (B, T, C)
    if wpe is not None:
        x += wpe[positions]
    return x, (idx, wte.shape[0], positions)


def embedding_backward(dx, cache, dwte, dwpe=None):
    """Accumulates into dwte (V, C) and, when given, dwpe (block_size, C); positions (T,) as in training."""
    idx, V, positions = cache
    C = dx.shape[-1]
    if V <= 2048:  # a one-hot matmul beats a scatter-add while the one-hot matrix is small
        onehot = (idx.reshape(-1, 1) == np.arange(V)).astype(dx.dtype)  # (N, V)
        dwte += onehot.T @ dx.reshape(-1, C)  # (V, N) @ (N, C) -> (V, C)
    else:
        np.add.at(dwte, idx.reshape(-1), dx.reshape(-1, C))
    if dwpe is not None:
        dwpe[positions] += dx.sum(axis=0)  # (B, T, C) -> (T, C)


# ----------------------------------------------------------------------------- rotary positions


def rope_tables(n_positions: int, head_size: int, theta: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (n_positions, hs / 2) of the angles p * theta^(-2i / hs), computed in float64."""
    inv_freq = theta ** (-np.arange(0, head_size, 2, dtype=np.float64) / head_size)  # (hs / 2,)
    angles = np.arange(n_positions, dtype=np.float64)[:, None] * inv_freq  # (P, hs / 2)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rope_forward(x, cos, sin):
    """Rotate each pair (x_i, x_{i + hs/2}) of every head by its position's angle (Hugging Face's Llama layout:
    the two halves of a head, not adjacent channels): (B, nh, T, hs) -> (B, nh, T, hs). cos and sin broadcast
    to (B, nh, T, hs / 2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1), (cos, sin)


def rope_backward(dy, cache):
    """The inverse rotation (a rotation's transpose) applied to dy."""
    cos, sin = cache
    half = dy.shape[-1] // 2
    d1, d2 = dy[..., :half], dy[..., half:]
    return np.concatenate([d1 * cos + d2 * sin, d2 * cos - d1 * sin], axis=-1)


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
    C = x.shape[-1]
    mean_vec = np.full(C, 1.0 / C, x.dtype)
    xhat = x - (x @ mean_vec)[..., None]  # means as a matrix-vector product (BLAS) rather than a reduction
    rstd = 1.0 / np.sqrt(np.einsum("...c,...c->...", xhat, xhat)[..., None] / C + eps)  # (..., 1)
    xhat *= rstd
    y = xhat * w if w is not None else xhat.copy()
    if b is not None:
        y += b
    return y, (xhat, rstd, w, b is not None)


def layernorm_backward(dy, cache):
    xhat, rstd, w, has_b = cache
    C = xhat.shape[-1]
    dw = column_dot(dy, xhat) if w is not None else None
    db = dy.reshape(-1, C).sum(axis=0) if has_b else None
    g = dy * w if w is not None else dy.copy()
    mean_vec = np.full(C, 1.0 / C, g.dtype)
    g -= (g @ mean_vec)[..., None]
    g -= xhat * (np.einsum("...c,...c->...", g, xhat)[..., None] / C)  # g's mean is now 0: same projection
    g *= rstd
    return g, dw, db


# ----------------------------------------------------------------------------- linear


SMALL_N = 32  # up to this many rows, (W x^T)^T beats x W^T: OpenBLAS is slow for a few rows times W^T


def linear_forward(x, w, b):
    """y = x W^T + b with W stored (out, in), as torch.nn.Linear: (..., in) -> (..., out)."""
    n_in, n_out = w.shape[1], w.shape[0]
    x2 = x.reshape(-1, n_in)
    if x2.shape[0] <= SMALL_N:  # decoding: a token, a speculative block, a batch of slots
        y = np.ascontiguousarray((w @ x2.T).T)
    else:
        y = x2 @ w.T  # one (N, in) @ (in, out) GEMM rather than one per batch row
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
    """GELU with the tanh approximation (GPT-2's): 0.5 x (1 + tanh(k (x + 0.044715 x^3)))."""
    y, t = kernels.gelu_train(x)
    return y, (x, t)


def gelu_backward(dy, cache):
    """dy * (0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 * 0.044715 x^2)), t = tanh(...) from the forward."""
    x, t = cache
    return kernels.gelu_train_backward(dy, x, t)


def swiglu_forward(h):
    """silu(gate) * up, with gate and up the two halves of h: (..., 2F) -> (..., F)."""
    F = h.shape[-1] // 2
    gate, up = h[..., :F], h[..., F:]
    sig = 1.0 / (1.0 + np.exp(-gate))
    silu = gate * sig
    return silu * up, (gate, up, sig, silu)


def swiglu_backward(dy, cache):
    """d gate = dy * up * sig (1 + gate (1 - sig)), d up = dy * silu: (..., F) -> (..., 2F)."""
    gate, up, sig, silu = cache
    dgate = dy * up * sig * (1.0 + gate * (1.0 - sig))
    return np.concatenate([dgate, dy * silu], axis=-1)


ACTIVATION = {"relu": (relu_forward, relu_backward), "gelu": (gelu_forward, gelu_backward),
              "swiglu": (swiglu_forward, swiglu_backward)}


# ----------------------------------------------------------------------------- attention


def attention_forward(q, k, v, mask):
    """softmax(q k^T / sqrt(hs) + mask) v, per head: q (B, nh, Tq, hs), k and v (B, nkv, Tk, hs) -> (B, nh, Tq, hs).

    nh is a multiple of nkv (grouped-query attention; nkv = nh is multi-head, nkv = 1 multi-query): query head h
    reads key/value head h // (nh / nkv). The g = nh / nkv query heads of one key/value head are stacked along
    time, so each key/value head is one (g Tq, hs) @ (hs, Tk) product. mask is additive (0 or -inf),
    broadcastable to (B, 1, 1, Tq, Tk).
    """
    B, nh, Tq, hs = q.shape
    nkv, Tk = k.shape[1], k.shape[2]
    g = nh // nkv
    scale = 1.0 / math.sqrt(hs)
    qs = (q * scale).reshape(B, nkv, g * Tq, hs)  # pre-scaled, queries of a group stacked
    att = qs @ k.transpose(0, 1, 3, 2)  # (B, nkv, g Tq, Tk)
    att.reshape(B, nkv, g, Tq, Tk)[...] += mask
    softmax_(att)
    y = (att @ v).reshape(B, nh, Tq, hs)
    return y, (qs, k, v, att, scale, q.shape)


def attention_backward(dy, cache):
    """(dq, dk, dv) from dy (B, nh, Tq, hs); dk and dv sum over the query heads that share a key/value head."""
    qs, k, v, att, scale, q_shape = cache
    B, nkv, gT, hs = qs.shape
    dy = dy.reshape(B, nkv, gT, hs)
    dv = att.transpose(0, 1, 3, 2) @ dy  # (B, nkv, Tk, hs)
    dscores = dy @ v.transpose(0, 1, 3, 2)  # d att, (B, nkv, g Tq, Tk)
    dscores -= np.einsum("bhts,bhts->bht", dscores, att)[..., None]
    dscores *= att  # softmax backward
    dq = dscores @ k
    dq *= scale
    dk = dscores.transpose(0, 1, 3, 2) @ qs  # (B, nkv, Tk, hs)
    return dq.reshape(q_shape), dk, dv


def causal_mask(T_q: int, T_k: int, dtype) -> np.ndarray:
    """(T_q, T_k) additive mask: query i (the last T_q of T_k positions) sees keys 0..T_k-T_q+i."""
    offset = T_k - T_q
    allowed = np.arange(T_k)[None, :] <= np.arange(T_q)[:, None] + offset
    return np.where(allowed, 0.0, -np.inf).astype(dtype)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_(x):
    """Softmax over the last axis, in place."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


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
