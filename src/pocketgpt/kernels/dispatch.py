"""Which implementation runs each operation (see pocketgpt.kernels): the compiled kernel or its NumPy reference.
Legend: N tokens, n input width, R output rows, C channels, B batch, T new tokens, nh heads, hs head size.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit

from pocketgpt.formats import Packed
from pocketgpt.formats.groups import quantize_per_token
from pocketgpt.formats.kv4 import expand
from pocketgpt.kernels import ops, products, reference, training
from pocketgpt.kernels.layouts import Layout, layout

ROWS_UP_TO = 32  # tokens whose product decodes each row once and dots it with every token; more: tiles and BLAS
TILE_BYTES = 1 << 19  # a tile of decoded rows stays in a core's L2 cache
ATTENTION_UP_TO = 16  # new tokens per sequence that the compiled attention takes; more: BLAS
PROMPT_BLOCK = 64  # a longer prompt's queries per block: a block reads the keys up to its own last query only
F32 = np.dtype(np.float32)


@njit(**products.PARALLEL)
def F32_MATVEC(w, x, y):
    products.mv_f32((w,), x, y)


def _compiled(*arrays) -> bool:
    return all(a.dtype == F32 for a in arrays)


def _rows2d(x: np.ndarray, width: int) -> np.ndarray:
    return np.ascontiguousarray(x.reshape(-1, width))


def _present(*arrays) -> tuple[np.ndarray, ...]:
    return tuple(a for a in arrays if a is not None)


def _or_fill(a: np.ndarray | None, C: int, value: float, dtype=F32) -> np.ndarray:
    """A norm's gain or bias, or for none a row of `value` that leaves the kernel's arithmetic as it is."""
    return np.full(C, value, dtype) if a is None else a


def linear(x: np.ndarray, w: np.ndarray | Packed, b: np.ndarray | None = None) -> np.ndarray:
    """y = x W^T + b: x (..., n) -> (..., R), W (R, n) a float array or a packed matrix (never expanded whole)."""
    R, n = w.shape
    dense = isinstance(w, np.ndarray)
    if not dense and w.act_bits:  # W8A8: this layer's inputs rounded to integers per token first
        x = quantize_per_token(x, w.act_bits).astype(x.dtype, copy=False)
    if x.dtype != F32 or (dense and w.dtype != F32):
        return reference.linear(x, w, b)
    x2 = _rows2d(x, n)
    N = x2.shape[0]
    if dense:
        y = np.empty((N, R), F32)
        if N == 1:
            F32_MATVEC(w, x2[0], y[0])
        elif N <= ROWS_UP_TO:  # compiled as well: BLAS would wake its own threads for a product this small, and
            _few(layout(w), x2, y)  # they spin afterwards on the cores the next compiled kernel needs
        else:  # BLAS
            y = x2 @ w.T
    else:
        lay = layout(w)
        y = np.empty((N, R), F32)
        if lay.interleaved:  # any number of tokens, rounded to 8 bits
            lay.product(lay.parts, x2, y)
        elif N == 1:
            lay.matvec(lay.parts, x2[0], y[0])
        elif N <= ROWS_UP_TO:
            _few(lay, x2, y)
        else:
            y = _tiled(lay, x2, R)
    if b is not None:
        y += b
    return y.reshape(*x.shape[:-1], R)


def rounds_activations(w: np.ndarray | Packed) -> bool:
    """Whether linear() with W rounds its tokens to 8 bits per block of 32 first: an integer format held interleaved
    for integer dot products (pocketgpt.kernels.interleaved), whatever the number of tokens."""
    return isinstance(w, Packed) and not w.act_bits and layout(w).interleaved


def blas_multiplies(w: np.ndarray | Packed) -> bool:
    """Whether a prompt's product with W runs on BLAS (float matrices, and packed ones decoded in tiles), rather
    than on the compiled interleaved kernels."""
    return isinstance(w, np.ndarray) or w.act_bits > 0 or not layout(w).interleaved


def _few(lay: Layout, x2: np.ndarray, y: np.ndarray) -> None:
    """y = x2 W^T for a few tokens: llama.cpp's blocks read in place, four tokens to a pass (products.block_tokens);
    the others' rows decoded once each and dotted with every token (in split order for the hot layouts, see
    products.split_rows)."""
    if lay.kind in products.BLOCK_TOKENS:
        products.block_tokens(lay.kind, lay.parts, x2, y)
        return
    if lay.split_rows is None:
        lay.row_kernels[0](lay.parts, x2, y, y.shape[1])
        return
    lay.split_rows(lay.parts, products.to_split_order(lay.kind, x2), y)


def _tiled(lay: Layout, x2: np.ndarray, R: int) -> np.ndarray:
    """x2 (N, n) times W^T, W decoded a tile of rows at a time for BLAS: a hot layout's rows in split order by one
    vectorized pass (products.split_tile; the tokens permuted to match once), the others' exactly as dequantize().
    The decoding runs on this thread alone, between BLAS calls: in the same process BLAS's threads spin after each
    call, and compiled kernels' threads woken then contend with them for the cores (a long prefill became an order
    of magnitude slower)."""
    n = x2.shape[1]
    tile = lay.split_tile
    if tile is None:
        gather = lay.row_kernels[1]

        def decode(r0: int, out: np.ndarray) -> None:
            gather(lay.parts, np.arange(r0, r0 + out.shape[0]), out)
    else:
        x2 = products.to_split_order(lay.kind, x2)

        def decode(r0: int, out: np.ndarray) -> None:
            tile(lay.parts, r0, out)
    step = max(16, TILE_BYTES // (4 * n))
    buf = np.empty((min(step, R), n), F32)
    y = np.empty((x2.shape[0], R), F32)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for r0 in range(0, R, step):
            r1 = min(R, r0 + step)
            decode(r0, buf[:r1 - r0])
            np.matmul(x2, buf[:r1 - r0].T, out=y[:, r0:r1])  # (N, n) @ (n, rows), into columns r0:r1 of y
    finally:
        numba.set_num_threads(threads)
    return y


def embedding(w: np.ndarray | Packed, idx) -> np.ndarray:
    """Rows idx (any shape) of W (R, n) -> (*idx.shape, n) float32, a packed W decoded row by row."""
    idx = np.asarray(idx)
    if isinstance(w, np.ndarray):
        return w[idx]
    lay = layout(w)
    out = np.empty((idx.size, w.shape[1]), F32)
    lay.row_kernels[1](lay.parts, idx.reshape(-1).astype(np.int64), out)
    return out.reshape(*idx.shape, w.shape[1])


def rmsnorm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis (w None: no gain)."""
    C = x.shape[-1]
    w = _or_fill(w, C, 1.0, x.dtype)
    if not _compiled(x, w):
        return reference.rmsnorm(x, w, eps)
    x2 = _rows2d(x, C)
    out = np.empty_like(x2)
    ops.rmsnorm(x2, w, eps, out)
    return out.reshape(x.shape)


def layernorm(x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * w + b over the last axis (w, b None: none)."""
    C = x.shape[-1]
    w, b = _or_fill(w, C, 1.0, x.dtype), _or_fill(b, C, 0.0, x.dtype)
    if not _compiled(x, w, b):
        return reference.layernorm(x, w, b, eps)
    x2 = _rows2d(x, C)
    out = np.empty_like(x2)
    ops.layernorm(x2, w, b, eps, out)
    return out.reshape(x.shape)


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotary embedding of x (B, T, n, hs) with cos, sin (T, hs/2) or (B, T, hs/2) -> (B, T, n, hs) contiguous."""
    cos, sin = (cos[None], sin[None]) if cos.ndim == 2 else (cos, sin)
    if not _compiled(x, cos, sin):
        return reference.rope(x, cos, sin)
    out = np.empty(x.shape, F32)
    ops.rope(x, cos, sin, out)
    return out


def swiglu(h: np.ndarray) -> np.ndarray:
    """silu(gate) * up of h (..., 2F) = [gate | up] -> (..., F)."""
    if not _compiled(h):
        return reference.swiglu(h)
    h2 = _rows2d(h, h.shape[-1])
    out = np.empty((h2.shape[0], h2.shape[1] // 2), F32)
    ops.swiglu(h2, out)
    return out.reshape(*h.shape[:-1], out.shape[1])


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (GPT-2's)."""
    if not _compiled(x):
        return reference.gelu(x)
    x2 = _rows2d(x, x.shape[-1])
    out = np.empty_like(x2)
    ops.gelu(x2, out)
    return out.reshape(x.shape)


def gelu_train(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GELU for training: x (any shape) -> (y, t) with t = tanh(k (x + 0.044715 x^3)) for gelu_train_backward."""
    if not _compiled(x):
        return reference.gelu_train(x)
    x = np.ascontiguousarray(x)
    y, t = np.empty_like(x), np.empty_like(x)
    training.gelu_forward(x.reshape(-1), y.reshape(-1), t.reshape(-1))
    return y, t


def gelu_train_backward(dy: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The gradient through gelu_train: dy, x, t of one shape -> dx."""
    if not _compiled(dy, x, t):
        return reference.gelu_train_backward(dy, x, t)
    dy, x, t = (np.ascontiguousarray(a) for a in (dy, x, t))
    dx = np.empty_like(x)
    training.gelu_backward(dy.reshape(-1), x.reshape(-1), t.reshape(-1), dx.reshape(-1))
    return dx


def rmsnorm_train(x: np.ndarray, w: np.ndarray | None, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm for training: x (..., C), w (C,) or None -> (y, rstd (..., 1)) for rmsnorm_train_backward."""
    if not _compiled(x, *_present(w)):
        return reference.rmsnorm_train(x, w, eps)
    C = x.shape[-1]
    x2 = _rows2d(x, C)
    y, rstd = np.empty_like(x2), np.empty((x2.shape[0], 1), F32)
    training.rmsnorm_forward(x2, _or_fill(w, C, 1.0), eps, y, rstd.reshape(-1))
    return y.reshape(x.shape), rstd.reshape(*x.shape[:-1], 1)


def rmsnorm_train_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray | None,
                           rstd: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The gradient through rmsnorm_train -> (dx, dw or None)."""
    if not _compiled(dy, x, rstd, *_present(w)):
        return reference.rmsnorm_train_backward(dy, x, w, rstd)
    C = x.shape[-1]
    dx, dw = np.empty(x.shape, F32), np.zeros(C, F32)
    training.rmsnorm_backward(_rows2d(dy, C), _rows2d(x, C), _or_fill(w, C, 1.0), _rows2d(rstd, 1).reshape(-1),
                              dx.reshape(-1, C), dw)
    return dx, dw if w is not None else None


def layernorm_train(x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None,
                    eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm for training: x (..., C), w and b (C,) or None -> (y, mean, rstd), mean and rstd (..., 1)."""
    if not _compiled(x, *_present(w, b)):
        return reference.layernorm_train(x, w, b, eps)
    C = x.shape[-1]
    x2 = _rows2d(x, C)
    y, mean, rstd = np.empty_like(x2), np.empty((x2.shape[0], 1), F32), np.empty((x2.shape[0], 1), F32)
    training.layernorm_forward(x2, _or_fill(w, C, 1.0), _or_fill(b, C, 0.0), eps, y, mean.reshape(-1),
                               rstd.reshape(-1))
    stats = (*x.shape[:-1], 1)
    return y.reshape(x.shape), mean.reshape(stats), rstd.reshape(stats)


def layernorm_train_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray | None, mean: np.ndarray,
                             rstd: np.ndarray, has_b: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The gradient through layernorm_train -> (dx, dw or None, db or None)."""
    if not _compiled(dy, x, mean, rstd, *_present(w)):
        return reference.layernorm_train_backward(dy, x, w, mean, rstd, has_b)
    C = x.shape[-1]
    dx, dw, db = np.empty(x.shape, F32), np.zeros(C, F32), np.zeros(C, F32)
    training.layernorm_backward(_rows2d(dy, C), _rows2d(x, C), _or_fill(w, C, 1.0), _rows2d(mean, 1).reshape(-1),
                                _rows2d(rstd, 1).reshape(-1), dx.reshape(-1, C), dw, db)
    return dx, dw if w is not None else None, db if has_b else None


def swiglu_train_backward(dy: np.ndarray, h: np.ndarray) -> np.ndarray:
    """The gradient through swiglu: dy (..., F), h (..., 2F) the forward's input -> dh (..., 2F)."""
    if not _compiled(dy, h):
        return reference.swiglu_train_backward(dy, h)
    F = dy.shape[-1]
    dh = np.empty(h.shape, F32)
    training.swiglu_backward(_rows2d(dy, F), _rows2d(h, 2 * F), dh.reshape(-1, 2 * F))
    return dh


def masked_softmax(att: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """softmax(att + mask) over the last axis: att (..., R, Tk) (R a multiple of Tq; row r reads mask row r % Tq),
    mask (Tq, Tk) additive (0 or -inf). Compiled, in place of a contiguous att; a masked position gets exactly 0."""
    if not _compiled(att, mask) or not att.flags.c_contiguous:
        return reference.masked_softmax(att, mask)
    training.masked_softmax(att.reshape(-1, att.shape[-1]), np.ascontiguousarray(mask))
    return att


def softmax_backward(datt: np.ndarray, att: np.ndarray) -> np.ndarray:
    """The gradient through a softmax over the last axis, in place of datt: (datt - sum(datt att)) att."""
    if not _compiled(datt, att) or not (datt.flags.c_contiguous and att.flags.c_contiguous):
        return reference.softmax_backward(datt, att)
    Tk = att.shape[-1]
    training.softmax_backward(datt.reshape(-1, Tk), att.reshape(-1, Tk))
    return datt


def logsumexp(z: np.ndarray) -> np.ndarray:
    """log sum exp of each row of z (N, V) -> (N,)."""
    if not _compiled(z):
        return reference.logsumexp(z)
    z = np.ascontiguousarray(z)
    lse = np.empty(z.shape[0], F32)
    training.logsumexp(z, lse)
    return lse


def cross_entropy_backward(z: np.ndarray, targets: np.ndarray, lse: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """d loss / d z for the loss sum(scale (lse - z[target])): (softmax(z) - onehot(targets)) scale, z (N, V),
    targets (N,), lse (N,) from logsumexp, scale (N,) each row's weight over the loss's denominator."""
    if not _compiled(z, lse):
        return reference.cross_entropy_backward(z, targets, lse, scale)
    z = np.ascontiguousarray(z)
    dz = np.empty_like(z)
    training.cross_entropy_backward(z, np.ascontiguousarray(targets, np.int64), lse, np.asarray(scale, F32), dz)
    return dz


def adamw(flat: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, decay: np.ndarray | None, lr: float,
          beta1: float, beta2: float, c1: float, c2: float, eps: float, weight_decay: float) -> None:
    """One AdamW step in place over flat parameters, their gradient and moments (one dtype, contiguous): one
    compiled pass (pocketgpt.kernels.training.adamw) for float32 and float64, the NumPy passes otherwise."""
    arrays = (flat, grad, m, v) + (() if decay is None else (decay,))
    if flat.dtype not in (np.float32, np.float64) or any(a.dtype != flat.dtype or not a.flags.c_contiguous
                                                          for a in arrays):
        reference.adamw(flat, grad, m, v, decay, lr, beta1, beta2, c1, c2, eps, weight_decay)
        return
    mask = np.empty(0, flat.dtype) if decay is None else decay
    training.adamw(flat, grad, m, v, mask, lr, beta1, beta2, c1, c2, eps, weight_decay)


def firsts(first, B: int) -> np.ndarray:
    """Each sequence's first new position (B,) from an int (the same for all) or an array."""
    return np.full(B, first, np.int64) if np.ndim(first) == 0 else np.asarray(first, np.int64)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, rows=None, first=0) -> np.ndarray:
    """Causal attention of new queries q (B, T, nh, hs) over a float cache k, v (cache rows, nkv, S, hs): sequence b
    reads cache row rows[b] (default b) and its query t sees positions 0 .. first[b] + t -> (B, T, nh, hs)."""
    B, T = q.shape[:2]
    rows = np.arange(B) if rows is None else np.asarray(rows, np.int64)
    first = firsts(first, B)
    if not _compiled(q, k, v):
        return reference.attention(q, k, v, rows, first)
    if T > ATTENTION_UP_TO:
        return _prompt_attention(q, k, v, rows, first)
    out = np.empty(q.shape, F32)
    ops.attention(np.ascontiguousarray(q), k, v, rows, first, out)
    return out


def _prompt_attention(q, k, v, rows, first) -> np.ndarray:
    """attention() of a long prompt, PROMPT_BLOCK queries at a time: a block's scores against the keys up to its
    last query only (the causal triangle beyond it is never computed), by BLAS, their softmax by the compiled
    masked softmax in place, then BLAS again for the values."""
    B, T, nh, hs = q.shape
    nkv = k.shape[1]
    g = nh // nkv
    out = np.empty(q.shape, F32)
    scale = np.float32(1.0 / np.sqrt(hs))
    for b in range(B):
        row, start = int(rows[b]), int(first[b])
        for t0 in range(0, T, PROMPT_BLOCK):
            n = min(PROMPT_BLOCK, T - t0)
            end = start + t0 + n
            queries = (q[b, t0:t0 + n].transpose(1, 0, 2) * scale).reshape(nkv, g * n, hs)  # a group's heads stacked
            att = queries @ k[row, :, :end].transpose(0, 2, 1)  # (nkv, g n, end)
            seen = np.arange(end)[None, :] <= start + t0 + np.arange(n)[:, None]
            training.masked_softmax(att.reshape(-1, end), np.where(seen, np.float32(0.0), np.float32(-np.inf)))
            out[b, t0:t0 + n] = (att @ v[row, :, :end]).reshape(nh, n, hs).transpose(1, 0, 2)
    return out


def attention_q4(q: np.ndarray, arrays: tuple[np.ndarray, ...], group: int, first=0) -> np.ndarray:
    """attention() over one layer of a 4-bit KV cache (pocketgpt.formats.kv4.LAYER_ARRAYS), read as stored."""
    B, T = q.shape[:2]
    first = firsts(first, B)
    if not _compiled(q):
        return reference.attention_q4(q, *arrays, group, first)
    if T > ATTENTION_UP_TO:  # a prompt: the cache expanded once, then block by block as over a float cache
        keys, values = expand(*arrays, group, int(first.max()) + T)
        return _prompt_attention(q, keys.astype(F32, copy=False), values.astype(F32, copy=False), np.arange(B), first)
    halves = tuple(a.view(np.uint16) if a.dtype == np.float16 else a for a in arrays)
    out = np.empty(q.shape, F32)
    ops.attention_q4(np.ascontiguousarray(q), *halves, group, first, out)
    return out
