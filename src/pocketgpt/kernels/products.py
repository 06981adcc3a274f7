"""Compiled products y = x W^T straight from packed weights (numba): no float copy of a matrix is kept.

Three shapes of work, each parallel over the rows of W:
- matvec (one token, x (n,)): a fused kernel per hot layout that reads the packed bytes in one flat loop;
  LLVM vectorizes a loop only when its body allows it (notes on this machine: a flat loop over a row's bytes,
  scales read inside it, runs 4x faster than a nested loop per block), so the loops below are written that way;
- rows (a few tokens, x (B, n)): each row is decoded once into a buffer the size of one row, then dotted with
  every token (a speculative block, a batch of slots);
- tiles (a prompt): rows are decoded in tiles that stay in cache and multiplied by BLAS.
The 4-bit kernels split a byte into its two nibbles with float arithmetic (hi = floor(b / 16), lo = b - 16 hi):
on this CPU that vectorizes into 16 lanes where the integer shift and mask widen to 64-bit lanes.
Legend: n input width, R rows of W, B tokens, G groups (or blocks) per row.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

FAST = {"cache": True, "fastmath": True}
PARALLEL = {"cache": True, "fastmath": True, "parallel": True}
SIXTEENTH, SIXTEEN = np.float32(0.0625), np.float32(16.0)


@njit(**FAST)
def _block_halves(x, xa, xb, xs):
    """x (n,) -> xa, xb (n/2,): the weights a block's low and high nibbles meet (j and j + 16 of each block of
    32), and xs (n/32,) the sum of each block."""
    for k in range(xa.size):
        b, j = k >> 4, k & 15
        xa[k] = x[32 * b + j]
        xb[k] = x[32 * b + 16 + j]
    for b in range(xs.size):
        t = np.float32(0.0)
        for j in range(32):
            t += x[32 * b + j]
        xs[b] = t


@njit(**FAST)
def _group_sums(x, xs):
    group = x.size // xs.size
    for g in range(xs.size):
        t = np.float32(0.0)
        for j in range(group):
            t += x[g * group + j]
        xs[g] = t


@njit(**PARALLEL)
def matvec_f32(w, x, y):
    """w (R, n) float32, x (n,) -> y (R,)."""
    for r in prange(w.shape[0]):
        row = w[r]
        acc = np.float32(0.0)
        for k in range(x.size):
            acc += row[k] * x[k]
        y[r] = acc


@njit(**PARALLEL)
def matvec_q8_0(q, d, x, y):
    """q (R, n) int8, d (R, n/32) float32: w = d q."""
    for r in prange(q.shape[0]):
        qr, dr = q[r], d[r]
        acc = np.float32(0.0)
        for k in range(x.size):
            acc += dr[k >> 5] * (np.float32(qr[k]) * x[k])
        y[r] = acc


@njit(**PARALLEL)
def matvec_q4_0(q, d, x, y):
    """q (R, n/2) nibbles of blocks of 32, d (R, n/32): w = d (u - 8)."""
    xa, xb = np.empty(q.shape[1], np.float32), np.empty(q.shape[1], np.float32)
    xs = np.empty(d.shape[1], np.float32)
    _block_halves(x, xa, xb, xs)
    for r in prange(q.shape[0]):
        qr, dr = q[r], d[r]
        acc = np.float32(0.0)
        for k in range(xa.size):
            f = np.float32(qr[k])
            hi = np.floor(f * SIXTEENTH)
            acc += dr[k >> 4] * ((f - SIXTEEN * hi) * xa[k] + hi * xb[k])
        t = np.float32(0.0)
        for b in range(xs.size):
            t += dr[b] * xs[b]
        y[r] = acc - np.float32(8.0) * t


@njit(**PARALLEL)
def matvec_q4_1(q, d, m, x, y):
    """q (R, n/2), d and m (R, n/32): w = d u + m."""
    xa, xb = np.empty(q.shape[1], np.float32), np.empty(q.shape[1], np.float32)
    xs = np.empty(d.shape[1], np.float32)
    _block_halves(x, xa, xb, xs)
    for r in prange(q.shape[0]):
        qr, dr, mr = q[r], d[r], m[r]
        acc = np.float32(0.0)
        for k in range(xa.size):
            f = np.float32(qr[k])
            hi = np.floor(f * SIXTEENTH)
            acc += dr[k >> 4] * ((f - SIXTEEN * hi) * xa[k] + hi * xb[k])
        t = np.float32(0.0)
        for b in range(xs.size):
            t += mr[b] * xs[b]
        y[r] = acc + t


def int_matvec(bits: int, group: int):
    """The fused matvec of pocketgpt's 4- or 8-bit groups of `group` weights: w = s (code - z)."""
    if bits == 4:
        per_group = group // 2  # bytes

        @njit(**PARALLEL)
        def matvec_int4(q, s, z, _bits, x, y):
            xa, xb = np.ascontiguousarray(x[0::2]), np.ascontiguousarray(x[1::2])  # low nibble: even weights
            xs = np.empty(s.shape[1], np.float32)
            _group_sums(x, xs)
            for r in prange(q.shape[0]):
                qr, sr, zr = q[r], s[r], z[r]
                acc = np.float32(0.0)
                for k in range(xa.size):
                    f = np.float32(qr[k])
                    hi = np.floor(f * SIXTEENTH)
                    acc += sr[k // per_group] * ((f - SIXTEEN * hi) * xa[k] + hi * xb[k])
                t = np.float32(0.0)
                for g in range(xs.size):
                    t += sr[g] * zr[g] * xs[g]
                y[r] = acc - t

        return matvec_int4
    if bits == 8:
        @njit(**PARALLEL)
        def matvec_int8(q, s, z, _bits, x, y):
            xs = np.empty(s.shape[1], np.float32)
            _group_sums(x, xs)
            for r in prange(q.shape[0]):
                qr, sr, zr = q[r], s[r], z[r]
                acc = np.float32(0.0)
                for k in range(x.size):
                    acc += sr[k // group] * (np.float32(qr[k]) * x[k])
                t = np.float32(0.0)
                for g in range(xs.size):
                    t += sr[g] * zr[g] * xs[g]
                y[r] = acc - t

        return matvec_int8
    return None


def row_kernels(decode):
    """The kernels built on a layout's row decoder: (rows, gather)."""

    @njit(**PARALLEL)
    def rows(parts, x, y, n_rows):
        """x (B, n) -> y (B, R): each row decoded once into a buffer, then dotted with every token."""
        B, n = x.shape
        chunks = min(n_rows, 64)
        for c in prange(chunks):
            buf = np.empty(n, np.float32)
            for r in range(c * n_rows // chunks, (c + 1) * n_rows // chunks):
                decode(parts, r, buf)
                for b in range(B):
                    xb = x[b]
                    acc = np.float32(0.0)
                    for k in range(n):
                        acc += buf[k] * xb[k]
                    y[b, r] = acc

    @njit(cache=True, parallel=True)
    def gather(parts, index, out):
        """Rows index (M,) decoded into out (M, n), exactly as the NumPy dequantizer."""
        for i in prange(index.size):
            decode(parts, index[i], out[i])

    return rows, gather
