"""Compiled products y = x W^T straight from packed weights (numba): no float copy of a matrix is kept.

Three shapes of work, each parallel over the rows of W:
- matvec (one token, x (n,)): a fused body per hot layout that reads the packed bytes in one flat loop (LLVM
  vectorizes a loop only when its body allows it: a flat loop over a row's bytes with the scales read inside it
  runs several times faster than a nested loop per block), and for the other layouts a row decoded then dotted;
- rows (a few tokens, x (B, n)): each row is decoded once into a buffer the size of one row, then dotted with
  every token (a speculative block, a batch of slots);
- tiles (a prompt): rows decoded in tiles that stay in cache (gather) and multiplied by BLAS.
These are the float kernels: activations as they are. Integer formats with integer dot products on run interleaved
instead (pocketgpt.kernels.interleaved), for any number of tokens; fused_matvec calls that kernel too.
The fused matvec kernels (FUSED, by layout kind and group) are module functions, so that a compiled decode step
(pocketgpt.kernels.step) can call them; the kernels made per layout by a factory (decoded_matvec, row_kernels)
close over integers only, never over other compiled functions: numba's disk cache keys a closure by its
contents, and a compiled function's key changes in every process.
The 4-bit bodies split a byte b into its nibbles with float arithmetic, hi = floor(b / 16) and lo = b - 16 hi,
which vectorizes into 16 lanes (numba widens an integer shift and mask to 64-bit lanes); and since
lo xa + hi xb = b xa + hi (xb - 16 xa), they read xa and xc = xb - 16 xa, computed once per call, so each
weight costs two multiply-adds and a rounding.
Legend: n input width, R rows of W, B tokens, G groups (or blocks) per row.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange

from pocketgpt.kernels import interleaved
from pocketgpt.kernels.decoders import F32, INT4, INT8, INTERLEAVED, Q4_0, Q4_1, Q5_1, Q8_0, decode

FAST = {"cache": True, "fastmath": True, "error_model": "numpy"}
BODY = {"cache": True, "fastmath": True, "inline": "always", "error_model": "numpy"}
PARALLEL = {"cache": True, "fastmath": True, "parallel": True, "error_model": "numpy"}
SIXTEENTH, SIXTEEN = np.float32(0.0625), np.float32(16.0)


@njit(**FAST)
def _block_halves(x, xa, xc, xs):
    """x (n,) -> xa (n/2,), the inputs a block's low nibbles meet (j of each block of 32), xc = xb - 16 xa with xb
    those its high nibbles meet (j + 16), and xs (n/32,) the sum of each block."""
    for k in range(xa.size):
        b, j = k >> 4, k & 15
        xa[k] = x[32 * b + j]
        xc[k] = x[32 * b + 16 + j] - SIXTEEN * x[32 * b + j]
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


@njit(**BODY)
def mv_f32(parts, x, y):
    """parts (w,): w (R, n) float32."""
    w = parts[0]
    for r in prange(w.shape[0]):
        row = w[r]
        acc = np.float32(0.0)
        for k in range(x.size):
            acc += row[k] * x[k]
        y[r] = acc


@njit(**BODY)
def mv_q8_0(parts, x, y):
    """parts (q, d): q (R, n) int8, d (R, n/32) float32; w = d q."""
    q, d = parts[0], parts[1]
    for r in prange(q.shape[0]):
        qr, dr = q[r], d[r]
        acc = np.float32(0.0)
        for k in range(x.size):
            acc += dr[k >> 5] * (np.float32(qr[k]) * x[k])
        y[r] = acc


@njit(**BODY)
def mv_q4_0(parts, x, y):
    """parts (q, d): q (R, n/2) nibbles of blocks of 32, d (R, n/32); w = d (u - 8)."""
    q, d = parts[0], parts[1]
    xa, xc = np.empty(q.shape[1], np.float32), np.empty(q.shape[1], np.float32)
    xs = np.empty(d.shape[1], np.float32)
    _block_halves(x, xa, xc, xs)
    for r in prange(q.shape[0]):
        qr, dr = q[r], d[r]
        acc = np.float32(0.0)
        for k in range(xa.size):
            f = np.float32(qr[k])
            acc += dr[k >> 4] * (f * xa[k] + np.floor(f * SIXTEENTH) * xc[k])
        t = np.float32(0.0)
        for b in range(xs.size):
            t += dr[b] * xs[b]
        y[r] = acc - np.float32(8.0) * t


@njit(**BODY)
def mv_q4_1(parts, x, y):
    """parts (q, d, m): q (R, n/2), d and m (R, n/32); w = d u + m."""
    _offset_rows(parts[0], parts[1], parts[2], parts[1], x, y, False)


@njit(**BODY)
def mv_q5_1(parts, x, y):
    """parts (q, d, m, h) for Q5_1, w = d u + m: u the nibble of q (as Q4_1's) plus 16 times the weight's bit of h
    (R, n/32) uint32."""
    _offset_rows(parts[0], parts[1], parts[2], parts[3], x, y, True)


@njit(**BODY)
def _offset_rows(q, d, m, h, x, y, fifth):
    """y = W x for Q4_1 rows, or with fifth for Q5_1 rows (h their fifth bits; for Q4_1 any array, unread)."""
    xa, xc = np.empty(q.shape[1], np.float32), np.empty(q.shape[1], np.float32)
    xs = np.empty(d.shape[1], np.float32)
    _block_halves(x, xa, xc, xs)
    for r in prange(q.shape[0]):
        qr, dr, mr = q[r], d[r], m[r]
        acc = np.float32(0.0)
        for k in range(xa.size):
            f = np.float32(qr[k])
            acc += dr[k >> 4] * (f * xa[k] + np.floor(f * SIXTEENTH) * xc[k])
        t = np.float32(0.0)
        for b in range(xs.size):
            t += mr[b] * xs[b]
        y[r] = acc + t + (_fifth_bits(dr, h[r], x) if fifth else np.float32(0.0))


@njit(**BODY)
def _fifth_bits(dr, hr, x):
    """16 sum_k d_(k/32) bit_k x_k: what the fifth bits of one row of Q5_1 blocks add to its product (bit k of a
    block's word h is that of its weight k; x in the row's own order). Shifted in 32-bit lanes, twice as many to a
    vector as 64-bit ones."""
    acc = np.float32(0.0)
    for k in range(x.size):
        acc += dr[k >> 5] * np.float32((np.uint32(hr[k >> 5]) >> np.uint32(k & 31)) & np.uint32(1)) * x[k]
    return SIXTEEN * acc


@njit(**PARALLEL)
def matvec_f32(parts, x, y):
    mv_f32(parts, x, y)


@njit(**PARALLEL)
def matvec_q8_0(parts, x, y):
    mv_q8_0(parts, x, y)


@njit(**PARALLEL)
def matvec_q4_0(parts, x, y):
    mv_q4_0(parts, x, y)


@njit(**PARALLEL)
def matvec_q4_1(parts, x, y):
    mv_q4_1(parts, x, y)


@njit(**PARALLEL)
def matvec_q5_1(parts, x, y):
    mv_q5_1(parts, x, y)


@njit(**BODY)
def _zero_term(sr, zr, xs):
    """sum_g s_g z_g xs_g: what the zero points of one row's groups take from its product (xs: group sums of x)."""
    t = np.float32(0.0)
    for g in range(xs.size):
        t += sr[g] * zr[g] * xs[g]
    return t


def int4_matvec(group: int) -> Callable:
    """The fused matvec of pocketgpt's 4-bit groups of `group` weights (32, 64 or 128): parts (q, s, z, bits),
    w = s (u - z), s and z (R, n / group) float32; byte i holds weights 2i (low nibble) and 2i + 1. Made per
    group so that the group's shift is a constant inside the parallel loop: numba hands a variable to the loop's
    outlined body, and a division or shift by one there keeps LLVM from vectorizing the loop."""
    shift = (group // 2).bit_length() - 1  # a group's bytes: 2^shift

    @njit(**PARALLEL)
    def matvec(parts, x, y):
        q, s, z = parts[0], parts[1], parts[2]
        xa = np.ascontiguousarray(x[0::2])  # low nibbles: the even weights
        xc = x[1::2] - SIXTEEN * xa
        xs = np.empty(s.shape[1], np.float32)
        _group_sums(x, xs)
        for r in prange(q.shape[0]):
            qr, sr, zr = q[r], s[r], z[r]
            acc = np.float32(0.0)
            for k in range(xa.size):
                f = np.float32(qr[k])
                acc += sr[k >> shift] * (f * xa[k] + np.floor(f * SIXTEENTH) * xc[k])
            y[r] = acc - _zero_term(sr, zr, xs)

    return matvec


def int8_matvec(group: int) -> Callable:
    """The fused matvec of pocketgpt's 8-bit groups (one code per byte), made per group as int4_matvec is."""
    shift = group.bit_length() - 1

    @njit(**PARALLEL)
    def matvec(parts, x, y):
        q, s, z = parts[0], parts[1], parts[2]
        xs = np.empty(s.shape[1], np.float32)
        _group_sums(x, xs)
        for r in prange(q.shape[0]):
            qr, sr, zr = q[r], s[r], z[r]
            acc = np.float32(0.0)
            for k in range(x.size):
                acc += sr[k >> shift] * (np.float32(qr[k]) * x[k])
            y[r] = acc - _zero_term(sr, zr, xs)

    return matvec


matvec_int4_32, matvec_int4_64, matvec_int4_128 = (int4_matvec(g) for g in (32, 64, 128))
matvec_int8_16, matvec_int8_32, matvec_int8_64, matvec_int8_128 = (int8_matvec(g) for g in (16, 32, 64, 128))

FUSED = {(F32, 0): matvec_f32, (Q8_0, 0): matvec_q8_0, (Q4_0, 0): matvec_q4_0, (Q4_1, 0): matvec_q4_1,
         (Q5_1, 0): matvec_q5_1,
         (INT4, 32): matvec_int4_32, (INT4, 64): matvec_int4_64, (INT4, 128): matvec_int4_128,
         (INT8, 16): matvec_int8_16, (INT8, 32): matvec_int8_32, (INT8, 64): matvec_int8_64,
         (INT8, 128): matvec_int8_128}  # 8-bit groups of 16: Q6_K (pocketgpt.formats.kquants)


@njit(cache=True, inline="always")
def fused_matvec(parts, x, y, kind, group):
    """The FUSED kernel of (kind, group), or the interleaved one (group: its spec); both must be compile-time
    constants of the caller."""
    if kind == INTERLEAVED:
        interleaved.matvec(parts, x, y, group)
    elif kind == F32:
        matvec_f32(parts, x, y)
    elif kind == Q8_0:
        matvec_q8_0(parts, x, y)
    elif kind == Q4_0:
        matvec_q4_0(parts, x, y)
    elif kind == Q4_1:
        matvec_q4_1(parts, x, y)
    elif kind == Q5_1:
        matvec_q5_1(parts, x, y)
    elif kind == INT4:
        if group == 32:
            matvec_int4_32(parts, x, y)
        elif group == 64:
            matvec_int4_64(parts, x, y)
        else:
            matvec_int4_128(parts, x, y)
    elif group == 16:
        matvec_int8_16(parts, x, y)
    elif group == 32:
        matvec_int8_32(parts, x, y)
    elif group == 64:
        matvec_int8_64(parts, x, y)
    else:
        matvec_int8_128(parts, x, y)


@njit(cache=True, inline="always")
def fused_product(parts, x, y, kind, group):
    """y (T, R) = x (T, n) W^T through the kernels of fused_matvec: the interleaved layout's product of all T tokens
    at once, the others' matvec token by token. Either way a token's result is what its matvec alone gives."""
    if kind == INTERLEAVED:
        interleaved.linear(parts, x, y, group)
    else:
        for t in range(x.shape[0]):
            fused_matvec(parts, x[t], y[t], kind, group)


@njit(cache=True, inline="always")
def rows_of(parts, kind):
    """The rows of a matrix from its layout's parts (kind a compile-time constant of the caller): an interleaved
    layout records them in its spec array, the others hold them as the first part's rows."""
    if kind == INTERLEAVED:
        return parts[3][1]
    return parts[0].shape[0]


def decoded_matvec(kind: int):
    """matvec(parts, x, y) of a layout through its row decoder: each row decoded into a buffer, then dotted (the
    closure holds only an integer, so numba's disk cache recognises it in the next process)."""

    @njit(**PARALLEL)
    def matvec(parts, x, y):
        n, R = x.size, y.size
        chunks = min(R, 64)
        for c in prange(chunks):
            buf = np.empty(n, np.float32)
            for r in range(c * R // chunks, (c + 1) * R // chunks):
                decode(parts, r, buf, kind)
                acc = np.float32(0.0)
                for k in range(n):
                    acc += buf[k] * x[k]
                y[r] = acc

    return matvec


def row_kernels(kind: int) -> tuple[Callable, Callable]:
    """The kernels built on a layout's row decoder: (rows, gather)."""

    @njit(**PARALLEL)
    def rows(parts, x, y, n_rows):
        """x (B, n) -> y (B, R): each row decoded once into a buffer, then dotted with every token."""
        B, n = x.shape
        chunks = min(n_rows, 64)
        for c in prange(chunks):
            buf = np.empty(n, np.float32)
            for r in range(c * n_rows // chunks, (c + 1) * n_rows // chunks):
                decode(parts, r, buf, kind)
                for b in range(B):
                    xb = x[b]
                    acc = np.float32(0.0)
                    for k in range(n):
                        acc += buf[k] * xb[k]
                    y[b, r] = acc

    @njit(cache=True, fastmath=False, error_model="numpy")
    def gather(parts, index, out):
        """Rows index (M,) decoded into out (M, n), exactly as the NumPy dequantizer. On one thread: it runs
        between BLAS calls (pocketgpt.kernels.dispatch's tiles), and a parallel region there contends with BLAS's
        still-spinning threads for the cores."""
        for i in range(index.size):
            decode(parts, index[i], out[i], kind)

    return rows, gather


# ----------------------------------------------------------------------------- a few tokens from the hot layouts
# A row decoded in "split order": the weights its bytes' low nibbles hold, then those its high nibbles hold (for the
# 8-bit and float layouts: the row's own order). Each decoder is one flat loop over the row's bytes, which
# vectorizes, where the row decoders above scatter the two nibbles of a byte to their places (scalar code). The
# tokens are permuted into the same order once per call (to_split_order), so each product is a flat dot product.


def to_split_order(kind: int, x: np.ndarray) -> np.ndarray:
    """Tokens x (N, n) with each row's positions in the split order of `kind`: Q4_0, Q4_1 and Q5_1 (byte k of a
    block of 32 holds weights j and j + 16 of the block) and int4 (byte k holds weights 2k and 2k + 1) permuted, the
    others as they are. A copy into a fresh array (NumPy copies a transposed view into a given array faster than it
    reshapes one)."""
    N, n = x.shape
    if kind in (Q4_0, Q4_1, Q5_1):
        view, into = x.reshape(N, n // 32, 2, 16).transpose(0, 2, 1, 3), (N, 2, n // 32, 16)
    elif kind == INT4:
        view, into = x.reshape(N, n // 2, 2).transpose(0, 2, 1), (N, 2, n // 2)
    else:
        return x
    out = np.empty((N, n), x.dtype)
    np.copyto(out.reshape(into), view)
    return out


@njit(**BODY)
def _dot_each(buf, xs, y, r):
    """y[b, r] = buf . xs[b] for every token b, four tokens to a pass over buf (each load of it serves four
    multiply-adds, and the four sums are independent chains)."""
    B = xs.shape[0]
    b = 0
    while b + 4 <= B:
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for k in range(buf.size):
            w = buf[k]
            a0 += w * xs[b, k]
            a1 += w * xs[b + 1, k]
            a2 += w * xs[b + 2, k]
            a3 += w * xs[b + 3, k]
        y[b, r], y[b + 1, r], y[b + 2, r], y[b + 3, r] = a0, a1, a2, a3
        b += 4
    for t in range(b, B):
        acc = np.float32(0.0)
        for k in range(buf.size):
            acc += buf[k] * xs[t, k]
        y[t, r] = acc


# Each body unpacks its arrays before the parallel loop and indexes them in two dimensions: unpacked inside it, or
# read through a row's view (q[r]), they leave LLVM's stores to the buffer scalar.


@njit(**BODY)
def _rows_f32(parts, xs, y):
    w = parts[0]
    R, n = w.shape
    for c in prange(min(R, 64)):
        buf = np.empty(n, np.float32)
        for r in range(c * R // min(R, 64), (c + 1) * R // min(R, 64)):
            for k in range(n):
                buf[k] = w[r, k]
            _dot_each(buf, xs, y, r)


@njit(**BODY)
def _five_bit_pair(byte, bits, j):
    """The two 5-bit codes of byte j of a Q5_1 block (its low and high nibble, plus 16 times bits j and j + 16 of
    the block's word), as float32."""
    f = np.float32(byte)
    hi = np.floor(f * SIXTEENTH)
    word, one = np.uint32(bits), np.uint32(1)  # in 32-bit lanes, as _fifth_bits
    return (f - SIXTEEN * hi + SIXTEEN * np.float32((word >> np.uint32(j)) & one),
            hi + SIXTEEN * np.float32((word >> np.uint32(j + 16)) & one))


def split_rows(kind: int, group: int = 0) -> Callable:
    """rows(parts, xs, y) for a hot layout other than the llama.cpp blocks that block_tokens reads in place (f32,
    Q5_1, int4 and int8 groups of 32, 64 or 128): xs (B, n) the tokens in split order (to_split_order), y
    (B, R); each row decoded once, in split order, into a buffer, then dotted with every token. Made per (kind,
    group): both are constants inside the parallel loop."""
    if kind in BLOCK_TOKENS:
        raise ValueError("llama.cpp's blocks take a few tokens through block_tokens")
    shift = (group // 2).bit_length() - 1 if kind == INT4 else group.bit_length() - 1

    @njit(**PARALLEL)
    def rows(parts, xs, y):
        if kind == F32:
            _rows_f32(parts, xs, y)
        elif kind == INT4:  # w = s (u - z); byte k holds weights 2k and 2k + 1
            q, s, z = parts[0], parts[1], parts[2]
            R, h = q.shape
            for c in prange(min(R, 64)):
                buf = np.empty(2 * h, np.float32)
                for r in range(c * R // min(R, 64), (c + 1) * R // min(R, 64)):
                    for k in range(h):
                        f = np.float32(q[r, k])
                        hi = np.floor(f * SIXTEENTH)
                        g = k >> shift
                        buf[k] = s[r, g] * (f - SIXTEEN * hi - z[r, g])
                        buf[h + k] = s[r, g] * (hi - z[r, g])
                    _dot_each(buf, xs, y, r)
        elif kind == Q5_1:  # the nibbles as Q4_1's, plus 16 times each weight's bit of h
            q, d, m, hb = parts[0], parts[1], parts[2], parts[3]
            R, hn = q.shape
            for c in prange(min(R, 64)):
                buf = np.empty(2 * hn, np.float32)
                for r in range(c * R // min(R, 64), (c + 1) * R // min(R, 64)):
                    for k in range(hn):
                        lo5, hi5 = _five_bit_pair(q[r, k], hb[r, k >> 4], k & 15)
                        buf[k], buf[hn + k] = d[r, k >> 4] * lo5 + m[r, k >> 4], d[r, k >> 4] * hi5 + m[r, k >> 4]
                    _dot_each(buf, xs, y, r)
        else:  # INT8
            q, s, z = parts[0], parts[1], parts[2]
            R, n = q.shape
            for c in prange(min(R, 64)):
                buf = np.empty(n, np.float32)
                for r in range(c * R // min(R, 64), (c + 1) * R // min(R, 64)):
                    for k in range(n):
                        g = k >> shift
                        buf[k] = s[r, g] * (np.float32(q[r, k]) - z[r, g])
                    _dot_each(buf, xs, y, r)

    return rows


def split_tile(kind: int, group: int = 0) -> Callable:
    """tile(parts, r0, out): rows r0 .. r0 + len(out) of a hot layout decoded in split order into out (M, n), for BLAS
    (a prompt's products, pocketgpt.kernels.dispatch). The loop over rows is a parallel loop for one reason: the
    stores vectorize only in such a loop's body, straight into an argument of the kernel (numba marks the body's
    array arguments as aliasing nothing; in a plain function, in a helper inlined there, or with a dot product in
    the same body they stay scalar, several times slower). The caller decides how many
    threads run it. kind and group reach that body as its arguments rather than as constants, so each layout has
    its own loop without branches, and the group layouts find a byte's group by a shift fixed here (one computed
    inside the kernel would reach the body as a variable too, and a shift by a variable keeps the loop scalar).
    Made per (kind, group)."""
    shift, shift8 = max(group // 2, 1).bit_length() - 1, max(group, 1).bit_length() - 1  # log2 of a group's bytes

    @njit(**PARALLEL)
    def tile(parts, r0, out):
        M = out.shape[0]
        chunks = min(M, 64)
        if kind == F32:
            w = parts[0]
            for c in prange(chunks):
                for i in range(c * M // chunks, (c + 1) * M // chunks):
                    for k in range(w.shape[1]):
                        out[i, k] = w[r0 + i, k]
        elif kind == Q8_0:
            q, d = parts[0], parts[1]
            for c in prange(chunks):
                for i in range(c * M // chunks, (c + 1) * M // chunks):
                    for k in range(q.shape[1]):
                        out[i, k] = d[r0 + i, k >> 5] * np.float32(q[r0 + i, k])
        elif kind == Q4_0 or kind == Q4_1:
            q, d = parts[0], parts[1]
            m = parts[2] if kind == Q4_1 else d
            h = q.shape[1]
            for c in prange(chunks):
                for i in range(c * M // chunks, (c + 1) * M // chunks):
                    r = r0 + i
                    if kind == Q4_1:  # w = d u + m
                        for k in range(h):
                            f = np.float32(q[r, k])
                            hi = np.floor(f * SIXTEENTH)
                            out[i, k] = d[r, k >> 4] * (f - SIXTEEN * hi) + m[r, k >> 4]
                            out[i, h + k] = d[r, k >> 4] * hi + m[r, k >> 4]
                    else:  # w = d (u - 8)
                        for k in range(h):
                            f = np.float32(q[r, k])
                            hi = np.floor(f * SIXTEENTH)
                            out[i, k] = d[r, k >> 4] * (f - SIXTEEN * hi - np.float32(8.0))
                            out[i, h + k] = d[r, k >> 4] * (hi - np.float32(8.0))
        elif kind == Q5_1:  # as Q4_1, plus 16 times each weight's bit of hb
            q, d, m, hb = parts[0], parts[1], parts[2], parts[3]
            h = q.shape[1]
            for c in prange(chunks):
                for i in range(c * M // chunks, (c + 1) * M // chunks):
                    r = r0 + i
                    for k in range(h):
                        lo5, hi5 = _five_bit_pair(q[r, k], hb[r, k >> 4], k & 15)
                        out[i, k] = d[r, k >> 4] * lo5 + m[r, k >> 4]
                        out[i, h + k] = d[r, k >> 4] * hi5 + m[r, k >> 4]
        elif kind == INT4:  # w = s (u - z); byte k holds weights 2k and 2k + 1
            q, s, z = parts[0], parts[1], parts[2]
            h = q.shape[1]  # bytes of a row
            for c in prange(chunks):
                for i in range(c * M // chunks, (c + 1) * M // chunks):
                    r = r0 + i
                    for k in range(h):
                        f = np.float32(q[r, k])
                        hi = np.floor(f * SIXTEENTH)
                        out[i, k] = s[r, k >> shift] * (f - SIXTEEN * hi - z[r, k >> shift])
                        out[i, h + k] = s[r, k >> shift] * (hi - z[r, k >> shift])
        else:  # INT8, w = s (u - z)
            q, s, z = parts[0], parts[1], parts[2]
            for c in prange(chunks):
                for i in range(c * M // chunks, (c + 1) * M // chunks):
                    r = r0 + i
                    for k in range(q.shape[1]):
                        out[i, k] = s[r, k >> shift8] * (np.float32(q[r, k]) - z[r, k >> shift8])

    return tile


# ----------------------------------------------------------------------------- a few tokens from the llama.cpp blocks
# Q4_0, Q4_1 and Q8_0 take a few tokens the way their matvec takes one: one flat loop over a row's bytes, each weight
# (two, for a 4-bit byte) scaled once and met by every token of a group of four (or two), so a byte read and
# decoded serves four products. Against decoding the row into a buffer and dotting it with each token, this reads
# nothing but the packed row and the tokens, and at 2-4 tokens costs well under 2-4 single-token products.


@njit(**FAST)
def _halves_of(xs):
    """_block_halves of each token of xs (B, n): xa, xc (B, n/2) and the block sums (B, n/32)."""
    B, n = xs.shape
    xa, xc = np.empty((B, n // 2), np.float32), np.empty((B, n // 2), np.float32)
    sums = np.empty((B, n // 32), np.float32)
    for b in range(B):
        _block_halves(xs[b], xa[b], xc[b], sums[b])
    return xa, xc, sums


@njit(**BODY)
def _q4_offset(dr, mr, sums, t, with_min):
    """What the blocks' offsets add to token t's product with one row: sum_b m_b xs_b (Q4_1) or -8 sum_b d_b xs_b."""
    acc = np.float32(0.0)
    for b in range(dr.size):
        acc += (mr[b] if with_min else np.float32(-8.0) * dr[b]) * sums[t, b]
    return acc


@njit(**PARALLEL)
def q4_four(parts, xa, xc, sums, y, t, with_min):
    """y[t:t+4] for Q4_0 or Q4_1 rows (see mv_q4_1: lo xa + hi xb = b xa + hi xc)."""
    q, d, m = parts[0], parts[1], parts[2]  # m unused for Q4_0 (block_tokens passes d again)
    a0, a1, a2, a3 = xa[t], xa[t + 1], xa[t + 2], xa[t + 3]
    c0, c1, c2, c3 = xc[t], xc[t + 1], xc[t + 2], xc[t + 3]
    for r in prange(q.shape[0]):
        qr, dr = q[r], d[r]
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(qr.size):
            f = np.float32(qr[k])
            wa, wc = dr[k >> 4] * f, dr[k >> 4] * np.floor(f * SIXTEENTH)
            s0 += wa * a0[k] + wc * c0[k]
            s1 += wa * a1[k] + wc * c1[k]
            s2 += wa * a2[k] + wc * c2[k]
            s3 += wa * a3[k] + wc * c3[k]
        y[t, r] = s0 + _q4_offset(dr, m[r], sums, t, with_min)
        y[t + 1, r] = s1 + _q4_offset(dr, m[r], sums, t + 1, with_min)
        y[t + 2, r] = s2 + _q4_offset(dr, m[r], sums, t + 2, with_min)
        y[t + 3, r] = s3 + _q4_offset(dr, m[r], sums, t + 3, with_min)


@njit(**PARALLEL)
def q4_two(parts, xa, xc, sums, y, t, with_min):
    """y[t:t+2], as q4_four."""
    q, d, m = parts[0], parts[1], parts[2]
    a0, a1, c0, c1 = xa[t], xa[t + 1], xc[t], xc[t + 1]
    for r in prange(q.shape[0]):
        qr, dr = q[r], d[r]
        s0 = s1 = np.float32(0.0)
        for k in range(qr.size):
            f = np.float32(qr[k])
            wa, wc = dr[k >> 4] * f, dr[k >> 4] * np.floor(f * SIXTEENTH)
            s0 += wa * a0[k] + wc * c0[k]
            s1 += wa * a1[k] + wc * c1[k]
        y[t, r] = s0 + _q4_offset(dr, m[r], sums, t, with_min)
        y[t + 1, r] = s1 + _q4_offset(dr, m[r], sums, t + 1, with_min)


@njit(**PARALLEL)
def q8_four(parts, xs, y, t):
    """y[t:t+4] for Q8_0 rows."""
    q, d = parts[0], parts[1]
    x0, x1, x2, x3 = xs[t], xs[t + 1], xs[t + 2], xs[t + 3]
    for r in prange(q.shape[0]):
        qr, dr = q[r], d[r]
        s0 = s1 = s2 = s3 = np.float32(0.0)
        for k in range(qr.size):
            w = dr[k >> 5] * np.float32(qr[k])
            s0 += w * x0[k]
            s1 += w * x1[k]
            s2 += w * x2[k]
            s3 += w * x3[k]
        y[t, r], y[t + 1, r], y[t + 2, r], y[t + 3, r] = s0, s1, s2, s3


@njit(**PARALLEL)
def q8_two(parts, xs, y, t):
    """y[t:t+2] for Q8_0 rows."""
    q, d = parts[0], parts[1]
    x0, x1 = xs[t], xs[t + 1]
    for r in prange(q.shape[0]):
        qr, dr = q[r], d[r]
        s0 = s1 = np.float32(0.0)
        for k in range(qr.size):
            w = dr[k >> 5] * np.float32(qr[k])
            s0 += w * x0[k]
            s1 += w * x1[k]
        y[t, r], y[t + 1, r] = s0, s1


def block_tokens(kind: int, parts: tuple, xs: np.ndarray, y: np.ndarray) -> None:
    """y = xs W^T for a few tokens xs (B, n) of a Q4_0, Q4_1 or Q8_0 matrix: groups of four tokens, then two, then
    the single-token matvec (FUSED) for the last one."""
    B = xs.shape[0]
    four, two, one = ((q8_four, q8_two, matvec_q8_0) if kind == Q8_0
                      else (q4_four, q4_two, matvec_q4_0 if kind == Q4_0 else matvec_q4_1))
    args = (xs,) if kind == Q8_0 else _halves_of(xs)
    wide = parts if kind != Q4_0 else (*parts, parts[1])  # q4_four's third array: Q4_1's minima, unread for Q4_0
    extra = () if kind == Q8_0 else (kind == Q4_1,)
    t = 0
    while t + 4 <= B:
        four(wide, *args, y, t, *extra)
        t += 4
    if t + 2 <= B:
        two(wide, *args, y, t, *extra)
        t += 2
    if t < B:
        one(parts, xs[t], y[t])


BLOCK_TOKENS = (Q4_0, Q4_1, Q8_0)  # the kinds block_tokens takes
