"""One transformer block for a few new tokens of one sequence, as a single compiled call (numba): the decode step
of pocketgpt.kernels.block, and a speculative block's verification, when keys and values live in float arrays.

It runs exactly the operations the composed block runs (pocketgpt.kernels.block), in the same order and with the
same compiled kernels (norm rows, the layouts' fused kernels, rotary embedding, attention per head and token,
activations), so the two agree within float rounding; what it removes is the Python between them: about a dozen
calls and a dozen temporary arrays per block, which at SmolLM2's size are a large share of a decode step. Each
token's arithmetic is the same whatever the number of tokens (the products' kernels see to theirs), so a verified
token gets the logits its decode step would.
A step is compiled for one combination of weight layouts (those with a fused matvec kernel), norm, activation and
rotary embedding (`step_kernel`); it calls the parallel kernels, which are compiled (and cached) on their own.
Legend: C channels, nh query heads, nkv key/value heads, hs head size, S cache positions, F MLP width.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from pocketgpt.kernels import ops
from pocketgpt.kernels.products import fused_product, rows_of

_STEPS: dict[tuple, Callable] = {}
ACTIVATIONS = ("swiglu", "gelu", "relu")


def step_kernel(layouts: tuple[tuple[int, int], ...], norm: str, activation: str, rope: bool) -> Callable:
    """The compiled block step for the layouts (kind, group) of c_attn, c_proj, c_fc and mlp.c_proj, made once per
    combination (its closure holds only integers and flags, which numba's disk cache recognises).

    step(x, attn, proj, fc, down, biases, ln1, ln2, eps, cos, sin, k, v, pos, n_head): x (T, C) is the residual
    stream of T new tokens, updated in place; attn .. down the four layouts' parts; biases a tuple of the four
    biases (size-0 arrays where there are none); ln1, ln2 (weight, bias) each; cos, sin (T, hs/2) at their
    positions; k, v the layer's cache (nkv, S, hs), into which positions pos .. pos + T - 1 are written.
    """
    key = (layouts, norm, activation, rope)
    if key not in _STEPS:
        _STEPS[key] = _make(*layouts, norm == "rmsnorm", ACTIVATIONS.index(activation), rope)
    return _STEPS[key]


def _make(attn_layout, proj_layout, fc_layout, down_layout, rms: bool, act: int, rope: bool) -> Callable:
    (k1, g1), (k2, g2), (k3, g3), (k4, g4) = attn_layout, proj_layout, fc_layout, down_layout

    @njit(cache=True, fastmath=True, error_model="numpy")
    def step(x, attn, proj, fc, down, biases, ln1, ln2, eps, cos, sin, k, v, pos, n_head):
        T, C = x.shape
        n_kv, hs = k.shape[0], k.shape[2]
        h = np.empty((T, C), np.float32)
        for t in range(T):
            _normed(x[t], ln1, eps, h[t], rms)
        qkv = np.empty((T, (n_head + 2 * n_kv) * hs), np.float32)
        fused_product(attn, h, qkv, k1, g1)
        if biases[0].size:
            qkv += biases[0]
        q = np.empty((T, n_head, hs), np.float32)
        for t in range(T):
            q[t] = qkv[t, :n_head * hs].reshape(n_head, hs)
            kn = qkv[t, n_head * hs:(n_head + n_kv) * hs].reshape(n_kv, hs)
            vn = qkv[t, (n_head + n_kv) * hs:].reshape(n_kv, hs)
            if rope:
                for j in range(n_head):
                    ops.rope_head(q[t, j], cos[t], sin[t], q[t, j])
                for j in range(n_kv):
                    ops.rope_head(kn[j], cos[t], sin[t], kn[j])
            k[:, pos + t] = kn
            v[:, pos + t] = vn
        y = np.empty((T, n_head, hs), np.float32)
        ops.attend_tokens(q, k, v, pos, y)
        o = np.empty((T, C), np.float32)
        fused_product(proj, y.reshape(T, n_head * hs), o, k2, g2)
        x += o
        if biases[1].size:
            x += biases[1]
        for t in range(T):
            _normed(x[t], ln2, eps, h[t], rms)
        f = np.empty((T, rows_of(fc, k3)), np.float32)
        fused_product(fc, h, f, k3, g3)
        if biases[2].size:
            f += biases[2]
        a = _activated(f, act)
        fused_product(down, a, o, k4, g4)
        x += o
        if biases[3].size:
            x += biases[3]

    return step


@njit(cache=True, fastmath=True, inline="always", error_model="numpy")
def _normed(x, gain_bias, eps, out, rms):
    if rms:
        ops.rmsnorm_row(x, gain_bias[0], eps, out)
    else:
        ops.layernorm_row(x, gain_bias[0], gain_bias[1], eps, out)


@njit(cache=True, fastmath=True, inline="always", error_model="numpy")
def _activated(f, act):
    """SwiGLU (act 0: f = [gate | up]), GELU (1) or ReLU (2) of each row of f (T, F or 2F)."""
    T, W = f.shape
    F = W // 2 if act == 0 else W
    a = np.empty((T, F), np.float32)
    e, work, scratch = np.empty(F, np.float32), np.empty(F, np.int32), np.empty(F, np.float32)
    for t in range(T):
        if act == 0:
            ops.swiglu_row(f[t, :F], f[t, F:], a[t], e, work, scratch)
        elif act == 1:
            ops.gelu_row(f[t], a[t], e, work, scratch)
        else:
            for j in range(F):
                a[t, j] = max(f[t, j], np.float32(0.0))
    return a
