"""One transformer block for one new token of one sequence, as a single compiled call (numba): the decode step
of pocketgpt.kernels.block when its keys and values live in float arrays.

It runs exactly the operations the composed block runs (pocketgpt.kernels.block), in the same order and with the
same compiled kernels (norm rows, the layouts' fused matvec kernels, rotary embedding, attention per head,
activations), so the two agree within float rounding; what it removes is the Python between them: about a dozen
calls and a dozen temporary arrays per block, which at SmolLM2's size are a large share of a decode step.
A step is compiled for one combination of weight layouts (those with a fused matvec kernel), norm, activation and
rotary embedding (`step_kernel`); it calls the parallel kernels, which are compiled (and cached) on their own.
Legend: C channels, nh query heads, nkv key/value heads, hs head size, S cache positions, F MLP width.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit

from pocketgpt.kernels import ops
from pocketgpt.kernels.products import fused_matvec

_STEPS: dict[tuple, Callable] = {}
ACTIVATIONS = ("swiglu", "gelu", "relu")


def step_kernel(layouts: tuple[tuple[int, int], ...], norm: str, activation: str, rope: bool) -> Callable:
    """The compiled block step for the layouts (kind, group, int8) of c_attn, c_proj, c_fc and mlp.c_proj, made once per
    combination (its closure holds only integers and flags, which numba's disk cache recognises).

    step(x, attn, proj, fc, down, biases, ln1, ln2, eps, cos, sin, k, v, pos, n_head): x (C,) is the residual
    stream, updated in place; attn .. down the four layouts' parts; biases a tuple of the four biases (size-0
    arrays where there are none); ln1, ln2 (weight, bias) each; cos, sin (hs/2,) at this position; k, v the
    layer's cache (nkv, S, hs), into which position pos is written.
    """
    key = (layouts, norm, activation, rope)
    if key not in _STEPS:
        _STEPS[key] = _make(*layouts, norm == "rmsnorm", ACTIVATIONS.index(activation), rope)
    return _STEPS[key]


def _make(attn_layout, proj_layout, fc_layout, down_layout, rms: bool, act: int, rope: bool) -> Callable:
    (k1, g1, i1), (k2, g2, i2), (k3, g3, i3), (k4, g4, i4) = attn_layout, proj_layout, fc_layout, down_layout

    @njit(cache=True, fastmath=True, error_model="numpy")
    def step(x, attn, proj, fc, down, biases, ln1, ln2, eps, cos, sin, k, v, pos, n_head):
        C = x.size
        n_kv, hs = k.shape[0], k.shape[2]
        h = np.empty(C, np.float32)
        _normed(x, ln1, eps, h, rms)
        qkv = np.empty((n_head + 2 * n_kv) * hs, np.float32)
        fused_matvec(attn, h, qkv, k1, g1, i1)
        if biases[0].size:
            qkv += biases[0]
        q = qkv[:n_head * hs].reshape(n_head, hs)
        kn = qkv[n_head * hs:(n_head + n_kv) * hs].reshape(n_kv, hs)
        vn = qkv[(n_head + n_kv) * hs:].reshape(n_kv, hs)
        if rope:
            for j in range(n_head):
                ops.rope_head(q[j], cos, sin, q[j])
            for j in range(n_kv):
                ops.rope_head(kn[j], cos, sin, kn[j])
        k[:, pos] = kn
        v[:, pos] = vn
        y = np.empty((n_head, hs), np.float32)
        ops.attend_heads(q, k, v, pos + 1, y)
        o = np.empty(C, np.float32)
        fused_matvec(proj, y.reshape(-1), o, k2, g2, i2)
        x += o
        if biases[1].size:
            x += biases[1]
        _normed(x, ln2, eps, h, rms)
        f = np.empty(fc[0].shape[0], np.float32)
        fused_matvec(fc, h, f, k3, g3, i3)
        if biases[2].size:
            f += biases[2]
        a = _activated(f, act)
        fused_matvec(down, a, o, k4, g4, i4)
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
    """SwiGLU (act 0: f = [gate | up]), GELU (1) or ReLU (2) of f."""
    if act == 0:
        F = f.size // 2
        a = np.empty(F, np.float32)
        ops.swiglu_row(f[:F], f[F:], a, np.empty(F, np.float32), np.empty(F, np.int32), np.empty(F, np.float32))
    elif act == 1:
        a = np.empty(f.size, np.float32)
        ops.gelu_row(f, a, np.empty(f.size, np.float32), np.empty(f.size, np.int32), np.empty(f.size, np.float32))
    else:
        a = np.maximum(f, np.float32(0.0))
    return a
