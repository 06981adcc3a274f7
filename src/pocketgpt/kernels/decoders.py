"""Row decoders: one compiled function per weight layout that writes row r of a packed matrix as float32.

Each decoder is `name(parts, r, out)`: `parts` is the layout's tuple of arrays (pocketgpt.kernels.layouts), `out`
an (n,) float32 row; `decode(parts, r, out, kind)` picks one by its code in KINDS, which must be a compile-time
constant of the calling kernel (numba then drops the other branches). The arithmetic is the NumPy
dequantizer's, operation for operation and without fastmath, so a decoded row equals `Packed.dequantize()`'s
row bit for bit; the products built on these decoders (pocketgpt.kernels.products) are where rounding may differ.
Layouts: f32 (W), f16 and bf16 (the raw 16 bits), q8_0 (int8 codes, block scales), q4_0 and q4_1 (nibbles of
each block of 32: weight j low, j + 16 high; scales, Q4_1's minimums), mxfp4 (as q4_0 with FP4 values and
power-of-two scales), int (pocketgpt's little-endian bit stream of 2, 3, 4 or 8-bit codes, per-group scales and
zero points), q4_k, q5_k and q6_k (the GGUF super-blocks as stored; see pocketgpt.formats.kquants), q5_1 (as
q4_1, with each block's fifth bits in one uint32), interleaved (rows sixteen to a group, pocketgpt.formats.interleaved).
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from pocketgpt.formats.interleaved import LANES, MINIMUM, MXFP4_TABLE, ZERO
from pocketgpt.formats.mxfp4 import FP4_VALUES

EXACT = {"cache": True, "inline": "always", "error_model": "numpy"}  # no fastmath: same rounding as NumPy
HALF_SCALE = np.float32(2.0**112)  # f16 bits << 13, read as float32, times 2^112 = the f16 value (and subnormals)
FP4 = FP4_VALUES.copy()
HALF_STEP = np.ldexp(np.float32(1), np.maximum(np.arange(32), 1) - 25).astype(np.float32)  # 2^(e - 25), e >= 1


@njit(**EXACT)
def f32(parts, r, out):
    out[:] = parts[0][r]


@njit(**EXACT)
def f16(parts, r, out):
    bits = parts[0][r]
    word = out.view(np.uint32)
    for k in range(bits.size):
        h = np.uint32(bits[k])
        word[k] = ((h & np.uint32(0x7FFF)) << np.uint32(13)) | ((h & np.uint32(0x8000)) << np.uint32(16))
    for k in range(bits.size):
        out[k] *= HALF_SCALE


@njit(**EXACT)
def bf16(parts, r, out):
    bits = parts[0][r]
    word = out.view(np.uint32)
    for k in range(bits.size):
        word[k] = np.uint32(bits[k]) << np.uint32(16)


@njit(**EXACT)
def q8_0(parts, r, out):
    q, d = parts[0][r], parts[1][r]
    for k in range(q.size):
        out[k] = d[k >> 5] * np.float32(q[k])


@njit(**EXACT)
def q4_0(parts, r, out):
    q, d = parts[0][r], parts[1][r]
    for k in range(q.size):
        b, j = k >> 4, k & 15
        c = q[k]
        out[32 * b + j] = d[b] * (np.float32(c & 15) - np.float32(8))
        out[32 * b + 16 + j] = d[b] * (np.float32(c >> 4) - np.float32(8))


@njit(**EXACT)
def q4_1(parts, r, out):
    q, d, m = parts[0][r], parts[1][r], parts[2][r]
    for k in range(q.size):
        b, j = k >> 4, k & 15
        c = q[k]
        out[32 * b + j] = d[b] * np.float32(c & 15) + m[b]
        out[32 * b + 16 + j] = d[b] * np.float32(c >> 4) + m[b]


@njit(**EXACT)
def mxfp4(parts, r, out):
    q, d = parts[0][r], parts[1][r]
    for k in range(q.size):
        b, j = k >> 4, k & 15
        c = q[k]
        out[32 * b + j] = FP4[c & 15] * d[b]
        out[32 * b + 16 + j] = FP4[c >> 4] * d[b]


@njit(**EXACT)
def int_codes(parts, r, out):
    """pocketgpt's bit stream: code k occupies bits [k b, (k + 1) b) from bit 0 of byte 0 (b = parts[3][0])."""
    q, s, z, bits = parts[0][r], parts[1][r], parts[2][r], parts[3][0]
    n = out.size
    group = n // s.size
    mask = (1 << bits) - 1
    for k in range(n):
        first = k * bits
        byte, shift = first >> 3, first & 7
        word = np.int32(q[byte])
        if shift + bits > 8:
            word |= np.int32(q[byte + 1]) << 8
        g = k // group
        out[k] = (np.float32((word >> shift) & mask) - z[g]) * s[g]


@njit(**EXACT)
def half(h):
    """A finite float16 given by its 16 bits, as float32 (exact): (1024 + m) 2^(e - 25), or m 2^-24 if e = 0."""
    e, m = (h >> 10) & 31, np.float32(h & 1023)
    v = (m + np.float32(1024.0)) * HALF_STEP[e] if e > 0 else m * HALF_STEP[0]
    return -v if h & 0x8000 else v


@njit(**EXACT)
def _half(lo, hi):
    """The float16 stored little-endian in two bytes."""
    return half(np.int32(lo) | (np.int32(hi) << 8))


@njit(**EXACT)
def _scale_min(s, j):
    """Six-bit scale and min j of a Q4_K/Q5_K super-block's 12 scale bytes s."""
    if j < 4:
        return np.float32(s[j] & 63), np.float32(s[j + 4] & 63)
    return (np.float32((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4)),
            np.float32((s[j + 4] >> 4) | ((s[j] >> 6) << 4)))


@njit(**EXACT)
def q4_k(parts, r, out):
    raw = parts[0][r]
    for sb in range(out.size // 256):
        blk = raw[144 * sb:144 * (sb + 1)]
        d, dmin = _half(blk[0], blk[1]), _half(blk[2], blk[3])
        for j in range(8):
            sc, m = _scale_min(blk[4:16], j)
            a, c = d * sc, dmin * m
            for ll in range(32):
                byte = blk[16 + 32 * (j // 2) + ll]
                code = byte & 15 if j % 2 == 0 else byte >> 4
                out[256 * sb + 32 * j + ll] = a * np.float32(code) - c


@njit(**EXACT)
def q5_k(parts, r, out):
    raw = parts[0][r]
    for sb in range(out.size // 256):
        blk = raw[176 * sb:176 * (sb + 1)]
        d, dmin = _half(blk[0], blk[1]), _half(blk[2], blk[3])
        for j in range(8):
            sc, m = _scale_min(blk[4:16], j)
            a, c = d * sc, dmin * m
            for ll in range(32):
                byte = blk[48 + 32 * (j // 2) + ll]
                code = (byte & 15 if j % 2 == 0 else byte >> 4) + 16 * ((blk[16 + ll] >> j) & 1)
                out[256 * sb + 32 * j + ll] = a * np.float32(code) - c


@njit(**EXACT)
def q6_k(parts, r, out):
    raw = parts[0][r]
    for sb in range(out.size // 256):
        blk = raw[210 * sb:210 * (sb + 1)]
        d = _half(blk[208], blk[209])
        for half in range(2):
            ql, qh = blk[64 * half:64 * half + 64], blk[128 + 32 * half:128 + 32 * half + 32]
            for quarter in range(4):
                for ll in range(32):
                    byte = np.int32(ql[ll + 32 * (quarter % 2)])
                    low = byte & 15 if quarter < 2 else byte >> 4
                    code = (low | (((np.int32(qh[ll]) >> (2 * quarter)) & 3) << 4)) - 32
                    scale = np.float32(np.int8(blk[192 + 8 * half + 2 * quarter + ll // 16]))
                    out[256 * sb + 128 * half + 32 * quarter + ll] = d * scale * np.float32(code)


@njit(**EXACT)
def q5_1(parts, r, out):
    """parts (q, d, m, h): w = d u + m, u the nibble of q (as Q4_1's) plus 16 times bit j of the block's h for
    weight j. (Q5_0 runs as the Q8_0 blocks of the same weights: pocketgpt.formats.ggml.as_q8_0.)"""
    q, d, m, h = parts[0][r], parts[1][r], parts[2][r], parts[3][r]
    for k in range(q.size):
        b, j = k >> 4, k & 15
        c, bits = np.int64(q[k]), np.int64(h[b])
        out[32 * b + j] = d[b] * np.float32((c & 15) | (((bits >> j) & 1) << 4)) + m[b]
        out[32 * b + 16 + j] = d[b] * np.float32((c >> 4) | (((bits >> (j + 16)) & 1) << 4)) + m[b]


def widened(v):
    """A scale as float32: float16 bits (uint16) widened exactly, float32 as it is."""


@overload(widened)
def _widened(v):
    if v == types.uint16:
        return lambda v: half(np.int32(v))
    return lambda v: np.float32(v)


@njit(**EXACT)
def interleaved(parts, r, out):
    """parts (codes, scale, offset, spec) of pocketgpt.formats.interleaved: d u + m, d (u - z) or d (u - o), as the
    stored format's own dequantize() computes it (MXFP4: (2 v) times d / 2, which is v d exactly)."""
    q, d, m, code = parts[0], parts[1], parts[2], parts[3][0]
    bits, top, table, offset = code & 15, (code >> 4) & 1, (code >> 5) & 1, (code >> 8) + ZERO
    sides = 2 if (code >> 6) & 1 else 1  # scales per block: of each half (Q6_K) or of the whole
    last = 64 * ((8 if bits == 8 else 4 if bits == 4 else 2) + top - 1)  # the quad of top bits
    g, lane = r // LANES, r % LANES
    for k in range(q.shape[1]):
        for v in range(8):
            dk = widened(d[g, sides * k + (v // 4 if sides == 2 else 0), lane])
            for c in range(4):
                at = 4 * lane + c
                if bits == 8:
                    u = np.int32(q[g, k, 64 * v + at])
                elif bits == 4:
                    u = (np.int32(q[g, k, 64 * (v % 4) + at]) >> (4 * (v // 4))) & 15
                else:
                    u = (np.int32(q[g, k, 64 * (v % 2) + at]) >> (2 * (v // 2))) & 3
                if top:
                    u |= ((np.int32(q[g, k, last + at]) >> v) & 1) << bits
                if table:
                    u = np.int32(MXFP4_TABLE[u])
                j = 32 * k + 4 * v + c
                if offset == MINIMUM:
                    out[j] = dk * np.float32(u) + widened(m[g, k, lane])
                elif offset == ZERO:
                    out[j] = dk * (np.float32(u) - np.float32(m[g, k, lane]))
                else:
                    out[j] = dk * (np.float32(u) - np.float32(offset))


KINDS = {name: i for i, name in enumerate(("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "mxfp4", "int", "int4", "int8",
                                           "q4_k", "q5_k", "q6_k", "q5_1", "interleaved"))}  # int4, int8: groups
F32, F16, BF16, Q8_0, Q4_0, Q4_1, MXFP4, INT, INT4, INT8, Q4_K, Q5_K, Q6_K, Q5_1, INTERLEAVED = KINDS.values()


@njit(**EXACT)
def decode(parts, r, out, kind):
    if kind == F32:
        f32(parts, r, out)
    elif kind == F16:
        f16(parts, r, out)
    elif kind == BF16:
        bf16(parts, r, out)
    elif kind == Q8_0:
        q8_0(parts, r, out)
    elif kind == Q4_0:
        q4_0(parts, r, out)
    elif kind == Q4_1:
        q4_1(parts, r, out)
    elif kind == MXFP4:
        mxfp4(parts, r, out)
    elif kind == INT:
        int_codes(parts, r, out)
    elif kind == INT4:
        int_codes(parts, r, out)
    elif kind == INT8:
        int_codes(parts, r, out)
    elif kind == Q4_K:
        q4_k(parts, r, out)
    elif kind == Q5_K:
        q5_k(parts, r, out)
    elif kind == Q6_K:
        q6_k(parts, r, out)
    elif kind == Q5_1:
        q5_1(parts, r, out)
    else:
        interleaved(parts, r, out)
