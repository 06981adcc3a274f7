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


def _rotate_heads(x, cos, sin):
    """x (B, nh, T, hs) through the kernels' rope, which takes (B, T, nh, hs): the same array seen transposed."""
    if cos.ndim == 4:  # (B, 1, T, hs / 2), positions per sequence
        cos, sin = cos[:, 0], sin[:, 0]
    return kernels.rope(x.transpose(0, 2, 1, 3), cos, sin).transpose(0, 2, 1, 3)


def rope_forward(x, cos, sin):
    """Rotate each pair (x_i, x_{i + hs/2}) of every head by its position's angle (Hugging Face's Llama layout:
    the two halves of a head, not adjacent channels): (B, nh, T, hs) -> (B, nh, T, hs). cos and sin (T, hs / 2),
    or (B, 1, T, hs / 2) for positions per sequence."""
    return _rotate_heads(x, cos, sin), (cos, sin)


def rope_backward(dy, cache):
    """The inverse rotation (a rotation's transpose: the angle negated) applied to dy."""
    cos, sin = cache
    return _rotate_heads(dy, cos, -sin)


# ----------------------------------------------------------------------------- norms


def rmsnorm_forward(x, w, eps):
    """y = x / sqrt(mean(x^2) + eps) * w, over the last axis; w may be None. The cache keeps x and each row's
    1 / sqrt(...), from which the backward rebuilds the normed x as it reads x."""
    y, rstd = kernels.rmsnorm_train(x, w, eps)
    return y, (x, w, rstd)


def rmsnorm_backward(dy, cache):
    return kernels.rmsnorm_train_backward(dy, *cache)


def layernorm_forward(x, w, b, eps):
    """y = (x - mean) / sqrt(var + eps) * w + b, over the last axis; w and b may be None."""
    y, mean, rstd = kernels.layernorm_train(x, w, b, eps)
    return y, (x, w, mean, rstd, b is not None)


def layernorm_backward(dy, cache):
    return kernels.layernorm_train_backward(dy, *cache)


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
    """silu(gate) * up, with gate and up the two halves of h: (..., 2F) -> (..., F). The backward recomputes the
    sigmoid from h rather than keeping it."""
    return kernels.swiglu(h), h


def swiglu_backward(dy, cache):
    """d gate = dy * up * sig (1 + gate (1 - sig)), d up = dy * gate * sig: (..., F) -> (..., 2F)."""
    return kernels.swiglu_train_backward(dy, cache)


ACTIVATION = {"relu": (relu_forward, relu_backward), "gelu": (gelu_forward, gelu_backward),
              "swiglu": (swiglu_forward, swiglu_backward)}


# ----------------------------------------------------------------------------- attention


def attention_forward(q, k, v, mask):
    """softmax(q k^T / sqrt(hs) + mask) v, per head: q (B, nh, Tq, hs), k and v (B, nkv, Tk, hs) -> (B, nh, Tq, hs).

    nh is a multiple of nkv (grouped-query attention; nkv = nh is multi-head, nkv = 1 multi-query): query head h
    reads key/value head h // (nh / nkv). The g = nh / nkv query heads of one key/value head are stacked along
    time, so each key/value head is one (g Tq, hs) @ (hs, Tk) product. mask (Tq, Tk) is additive (0 or -inf).
    """
    B, nh, Tq, hs = q.shape
    nkv = k.shape[1]
    g = nh // nkv
    scale = 1.0 / math.sqrt(hs)
    qs = (q * scale).reshape(B, nkv, g * Tq, hs)  # pre-scaled, queries of a group stacked
    att = kernels.masked_softmax(qs @ k.transpose(0, 1, 3, 2), mask)  # (B, nkv, g Tq, Tk)
    y = (att @ v).reshape(B, nh, Tq, hs)
    return y, (qs, k, v, att, scale, q.shape)


def attention_backward(dy, cache):
    """(dq, dk, dv) from dy (B, nh, Tq, hs); dk and dv sum over the query heads that share a key/value head."""
    qs, k, v, att, scale, q_shape = cache
    B, nkv, gT, hs = qs.shape
    dy = dy.reshape(B, nkv, gT, hs)
    dv = att.transpose(0, 1, 3, 2) @ dy  # (B, nkv, Tk, hs)
    dscores = dy @ v.transpose(0, 1, 3, 2)  # d att, (B, nkv, g Tq, Tk)
    dscores = kernels.softmax_backward(dscores, att)
    dq = dscores @ k
    dq *= scale
    dk = dscores.transpose(0, 1, 3, 2) @ qs  # (B, nkv, Tk, hs)
    return dq.reshape(q_shape), dk, dv


def causal_mask(T_q: int, T_k: int, dtype) -> np.ndarray:
    """(T_q, T_k) additive mask: query i (the last T_q of T_k positions) sees keys 0..T_k-T_q+i."""
    offset = T_k - T_q
    allowed = np.arange(T_k)[None, :] <= np.arange(T_q)[:, None] + offset
    return np.where(allowed, 0.0, -np.inf).astype(dtype)


# ----------------------------------------------------------------------------- loss


def cross_entropy_forward(logits, targets, weights, denom):
    """Sum of weighted next-token losses divided by denom: (B, T, V), (B, T), (B, T) -> scalar.

    `denom` is passed in (usually the number of target tokens in the whole batch) so that a
    batch split across workers gives the same loss and gradients as the whole batch.
    """
    V = logits.shape[-1]
    z, t = logits.reshape(-1, V), targets.reshape(-1)  # (N, V), (N,)
    lse = kernels.logsumexp(z)
    nll = lse - z[np.arange(z.shape[0]), t]  # (N,)
    w = weights.reshape(-1)
    loss = float(nll @ w) / denom
    return loss, (z, lse, t, w, denom, logits.shape)


def cross_entropy_backward(cache):
    z, lse, targets, w, denom, shape = cache
    return kernels.cross_entropy_backward(z, targets, lse, (w / denom).astype(z.dtype)).reshape(shape)
