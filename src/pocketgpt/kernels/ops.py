"""Compiled decode-step operations (numba): norms, rotary embedding, SwiGLU and GELU, attention over a KV cache.

Each takes and returns float32 arrays and computes what its NumPy reference (pocketgpt.kernels.reference) does,
within float rounding (fastmath lets LLVM reorder sums). exp is computed here rather than by libm, whose scalar
calls would keep these loops from vectorizing: e^x = 2^k e^r with k = round(x / ln 2) and a degree-6 polynomial
for e^r, |r| <= ln 2 / 2 (relative error about 2e-7); 2^k is built from its exponent bits.
Legend: N rows (tokens), C channels, B batch, T new tokens, S cache positions, nh query heads, nkv key/value
heads, hs head size.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from pocketgpt.kernels.decoders import half

# error_model "numpy": a division by zero gives inf or nan, as in NumPy, instead of raising; the check for it
# would otherwise keep every loop that divides from vectorizing (every kernel of the package is compiled so).
FAST = {"cache": True, "fastmath": True, "nogil": True, "error_model": "numpy"}
INLINE = {"cache": True, "fastmath": True, "inline": "always", "error_model": "numpy"}
PARALLEL = {"cache": True, "fastmath": True, "parallel": True, "error_model": "numpy"}
LOG2E = np.float32(1.4426950408889634)
LN2_HI, LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 in two parts, the first exact
EXP_POLY = tuple(np.float32(1 / math.factorial(i)) for i in range(7))  # 1, 1, 1/2, ..., 1/720


@njit(**INLINE)
def exp_into(x, out, work):
    """out = e^x for float32 arrays (x clamped to [-87, 88], where e^x is a normal float32); work is an int32
    array of the same size."""
    for i in range(x.size):
        v = min(max(x[i], np.float32(-87.0)), np.float32(88.0))
        k = np.floor(v * LOG2E + np.float32(0.5))
        r = (v - k * LN2_HI) - k * LN2_LO
        p = EXP_POLY[6]
        p = p * r + EXP_POLY[5]
        p = p * r + EXP_POLY[4]
        p = p * r + EXP_POLY[3]
        p = p * r + EXP_POLY[2]
        p = p * r + EXP_POLY[1]
        out[i] = p * r + EXP_POLY[0]
        work[i] = (np.int32(k) + np.int32(127)) << np.int32(23)
    two_k = work.view(np.float32)
    for i in range(x.size):
        out[i] *= two_k[i]


@njit(**FAST)
def exp(x):
    """e^x of a 1-D float32 array (the kernels' exp, exposed for its test)."""
    out = np.empty_like(x)
    exp_into(x, out, np.empty(x.size, np.int32))
    return out


@njit(**INLINE)
def rmsnorm_row(x, w, eps, out):
    """x (C,) -> out = x / sqrt(mean(x^2) + eps) * w; returns 1 / sqrt(mean(x^2) + eps) (training keeps it)."""
    ss = np.float32(0.0)
    for c in range(x.size):
        ss += x[c] * x[c]
    r = np.float32(1.0) / np.sqrt(ss / np.float32(x.size) + np.float32(eps))
    for c in range(x.size):
        out[c] = x[c] * r * w[c]
    return r


@njit(**INLINE)
def layernorm_row(x, w, b, eps, out):
    """x (C,) -> out = (x - mean) / sqrt(var + eps) * w + b; returns mean and 1 / sqrt(var + eps)."""
    C = np.float32(x.size)
    mean = np.float32(0.0)
    for c in range(x.size):
        mean += x[c]
    mean /= C
    var = np.float32(0.0)
    for c in range(x.size):
        var += (x[c] - mean) * (x[c] - mean)
    r = np.float32(1.0) / np.sqrt(var / C + np.float32(eps))
    for c in range(x.size):
        out[c] = (x[c] - mean) * r * w[c] + b[c]
    return mean, r


@njit(**FAST)
def rmsnorm(x, w, eps, out):
    """x (N, C) -> out (N, C)."""
    for i in range(x.shape[0]):
        rmsnorm_row(x[i], w, eps, out[i])


@njit(**FAST)
def layernorm(x, w, b, eps, out):
    """x (N, C) -> out (N, C)."""
    for i in range(x.shape[0]):
        layernorm_row(x[i], w, b, eps, out[i])


@njit(**INLINE)
def rope_head(x, c, s, out):
    """One head x (hs,) rotated by its position's cos and sin (hs/2,) -> out (hs,), which may be x itself."""
    half_ = x.size // 2
    for i in range(half_):
        x1, x2 = x[i], x[half_ + i]
        out[i] = x1 * c[i] - x2 * s[i]
        out[half_ + i] = x2 * c[i] + x1 * s[i]


@njit(**FAST)
def rope(x, cos, sin, out):
    """Rotate the two halves of every head: x (B, T, n, hs) (any strides) with cos, sin (B or 1, T, hs/2)
    -> out (B, T, n, hs)."""
    B, T, n, hs = x.shape
    for b in range(B):
        cb = min(b, cos.shape[0] - 1)
        for t in range(T):
            for h in range(n):
                rope_head(x[b, t, h], cos[cb, t], sin[cb, t], out[b, t, h])


@njit(**INLINE)
def swiglu_row(g, u, out, e, work, neg):
    """out = g sigmoid(g) u for rows g, u (F,); e, work, neg: (F,) float32, int32, float32 scratch."""
    for j in range(g.size):
        neg[j] = -g[j]
    exp_into(neg, e, work)
    for j in range(g.size):
        out[j] = g[j] / (np.float32(1.0) + e[j]) * u[j]


@njit(**FAST)
def swiglu(h, out):
    """h (N, 2F) = [gate | up] -> out (N, F) = gate sigmoid(gate) up."""
    N, F = out.shape
    e, work, neg = np.empty(F, np.float32), np.empty(F, np.int32), np.empty(F, np.float32)
    for i in range(N):
        swiglu_row(h[i, :F], h[i, F:], out[i], e, work, neg)


GELU_K = np.float32(math.sqrt(2.0 / math.pi))


@njit(**INLINE)
def gelu_row(x, out, e, work, u):
    """out = 0.5 x (1 + tanh(k (x + 0.044715 x^3))), tanh(v) = 1 - 2 / (e^(2v) + 1); e, work, u scratch."""
    for j in range(x.size):
        u[j] = np.float32(2.0) * GELU_K * (x[j] + np.float32(0.044715) * x[j] * x[j] * x[j])
    exp_into(u, e, work)
    for j in range(x.size):
        out[j] = np.float32(0.5) * x[j] * (np.float32(2.0) - np.float32(2.0) / (e[j] + np.float32(1.0)))


@njit(**FAST)
def gelu(x, out):
    """x (N, F) -> out (N, F)."""
    N, F = x.shape
    e, work, u = np.empty(F, np.float32), np.empty(F, np.int32), np.empty(F, np.float32)
    for i in range(N):
        gelu_row(x[i], out[i], e, work, u)


@njit(**INLINE)
def _softmax_weights(scores, n, e, work):
    """scores[:n] -> e[:n] = exp(scores - max), returning their sum."""
    top = scores[0]
    for p in range(1, n):
        top = max(top, scores[p])
    for p in range(n):
        scores[p] -= top
    exp_into(scores[:n], e[:n], work[:n])
    total = np.float32(0.0)
    for p in range(n):
        total += e[p]
    return total


@njit(**INLINE)
def attend_head(qv, K, V, n, o):
    """One query head qv (hs,) over positions 0 .. n - 1 of its key/value head K, V (S, hs) -> o (hs,)."""
    hs = qv.size
    scale = np.float32(1.0 / math.sqrt(hs))
    scores, e, work = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.int32)
    for p in range(n):
        kp = K[p]
        acc = np.float32(0.0)
        for i in range(hs):
            acc += qv[i] * kp[i]
        scores[p] = acc * scale
    total = _softmax_weights(scores, n, e, work)
    o[:] = 0.0
    for p in range(n):
        vp, w = V[p], e[p]
        for i in range(hs):
            o[i] += w * vp[i]
    for i in range(hs):
        o[i] /= total


@njit(**PARALLEL)
def attend_tokens(q, k, v, first, out):
    """Every query head q (T, nh, hs) of T consecutive tokens of one sequence, token t over positions
    0 .. first + t of k, v (nkv, S, hs) -> out (T, nh, hs)."""
    T, nh = q.shape[0], q.shape[1]
    g = nh // k.shape[0]
    for job in prange(T * nh):
        t, h = job // nh, job % nh
        attend_head(q[t, h], k[h // g], v[h // g], first + t + 1, out[t, h])


@njit(**PARALLEL)
def attention(q, k, v, rows, first, out):
    """Causal attention of new queries over a float cache.

    q (B, T, nh, hs); k, v (rows of the cache, nkv, S, hs); rows (B,) the cache row of each sequence; first (B,)
    the position of each sequence's first query: query t sees positions 0 .. first + t. -> out (B, T, nh, hs).
    """
    B, T, nh, hs = q.shape
    g = nh // k.shape[1]
    for job in prange(B * T * nh):
        b, t, h = job // (T * nh), (job // nh) % T, job % nh
        attend_head(q[b, t, h], k[rows[b], h // g], v[rows[b], h // g], first[b] + t + 1, out[b, t, h])


@njit(**PARALLEL)
def attention_q4(q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, k_float, v_float, group, first, out):
    """Causal attention over a 4-bit KV cache (pocketgpt.model.kvcache.QuantizedKVCache), read without expanding it.

    One layer's arrays, batch row b for sequence b: k_codes, v_codes (B, nkv, S, hs/2) uint8, channel 2i in the
    low nibble of byte i; k_scale, k_zero (B, nkv, S/group, 1, hs) (float16 bits as uint16; uint8): key channel c
    of position p is (code - zero[p // group, c]) * scale[p // group, c]; v_scale, v_zero (B, nkv, S, 1): value
    channel c of position p is (code - zero[p]) * scale[p]; k_float, v_float (B, nkv, group, hs) float16 bits:
    the positions of the group still being filled. q, first and out as in attention().
    """
    B, T, nh, hs = q.shape
    g = nh // k_codes.shape[1]
    scale = np.float32(1.0 / math.sqrt(hs))
    for job in prange(B * T * nh):
        b, t, h = job // (T * nh), (job // nh) % T, job % nh
        j = h // g
        n = first[b] + t + 1
        complete = ((first[b] + T) // group) * group  # positions held as codes; the rest are in the float group
        qv = q[b, t, h]
        scores, e, work = np.empty(n, np.float32), np.empty(n, np.float32), np.empty(n, np.int32)
        sc, zc, key = np.empty(hs, np.float32), np.empty(hs, np.float32), np.empty(hs, np.float32)
        for p in range(n):
            if p < complete:
                if p % group == 0:
                    for c in range(hs):
                        sc[c] = half(k_scale[b, j, p // group, 0, c])
                        zc[c] = np.float32(k_zero[b, j, p // group, 0, c])
                codes = k_codes[b, j, p]
                for i in range(hs // 2):
                    key[2 * i] = (np.float32(codes[i] & 15) - zc[2 * i]) * sc[2 * i]
                    key[2 * i + 1] = (np.float32(codes[i] >> 4) - zc[2 * i + 1]) * sc[2 * i + 1]
            else:
                for c in range(hs):
                    key[c] = half(k_float[b, j, p - complete, c])
            acc = np.float32(0.0)
            for c in range(hs):
                acc += qv[c] * key[c]
            scores[p] = acc * scale
        total = _softmax_weights(scores, n, e, work)
        o = out[b, t, h]
        o[:] = 0.0
        for p in range(n):
            w = e[p]
            if p < complete:
                s, z = half(v_scale[b, j, p, 0]) * w, np.float32(v_zero[b, j, p, 0])
                codes = v_codes[b, j, p]
                for i in range(hs // 2):
                    o[2 * i] += (np.float32(codes[i] & 15) - z) * s
                    o[2 * i + 1] += (np.float32(codes[i] >> 4) - z) * s
            else:
                for c in range(hs):
                    o[c] += w * half(v_float[b, j, p - complete, c])
        for i in range(hs):
            o[i] /= total
