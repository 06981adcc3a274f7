"""The inference block: one transformer block over new tokens, composed of the kernels' operations, or for up to
STEP_UP_TO tokens of one sequence over a float cache, the fused step (pocketgpt.kernels.step).

Both families run it: norm (RMSNorm or LayerNorm), fused QKV projection, rotary embedding (or none: learned
positions are added before the first block), grouped-query attention, output projection and residual, norm,
MLP (SwiGLU, GELU or ReLU) and residual; biases where the model has them.
Legend: B batch, T new tokens, Tq queries that go on (the last n_out), C channels, nh query heads, nkv key/value
heads, hs head size, S cache positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pocketgpt.formats import Packed
from pocketgpt.kernels import dispatch
from pocketgpt.kernels.layouts import layout
from pocketgpt.kernels.step import step_kernel

F32 = np.dtype(np.float32)
NONE = np.zeros(0, np.float32)  # the fused step's "no bias"
STEP_UP_TO = 32  # new tokens of one sequence the fused step takes (a decode step, a speculative block, a short
# prompt), each computed as its own decode step would be; a longer prompt is composed, its attention in BLAS blocks


@dataclass(frozen=True)
class BlockWeights:
    """One block's weights as the forward pass reads them, and the shapes its attention needs."""

    norm: str  # rmsnorm or layernorm
    eps: float
    activation: str  # swiglu, gelu or relu
    n_head: int
    n_kv: int
    head_size: int
    ln_1: tuple[np.ndarray, np.ndarray]  # gain, bias (ones and zeros where the model has none)
    ln_2: tuple[np.ndarray, np.ndarray]
    c_attn: np.ndarray | Packed  # (out, in) each
    c_proj: np.ndarray | Packed
    c_fc: np.ndarray | Packed
    mlp_proj: np.ndarray | Packed
    biases: tuple  # of the four linears, None where absent

    @property
    def matrices(self) -> tuple:
        return self.c_attn, self.c_proj, self.c_fc, self.mlp_proj


@dataclass(frozen=True)
class FloatKV:
    """Where a block's attention keeps its keys and values: one layer of a float cache, k and v (rows, nkv, S, hs).
    Sequence b of the batch is cache row rows[b] (None: row b) and its first new token is at position first[b]
    (an int: the same for all)."""

    k: np.ndarray
    v: np.ndarray
    rows: np.ndarray | None = None
    first: int | np.ndarray = 0


def _fusable(x: np.ndarray, w: BlockWeights, kv) -> bool:
    if x.shape[0] != 1 or x.shape[1] > STEP_UP_TO or x.dtype != F32 or not isinstance(kv, FloatKV) or \
            kv.k.dtype != F32:
        return False
    return all((isinstance(m, Packed) and not m.act_bits or isinstance(m, np.ndarray) and m.dtype == F32)
               and layout(m).fused for m in w.matrices)


def block(x: np.ndarray, w: BlockWeights, rope: tuple[np.ndarray, np.ndarray] | None, kv: FloatKV | Callable,
          n_out: int | None = None) -> np.ndarray:
    """Block over new tokens x (B, T, C) -> (B, T or n_out, C).

    rope: cos, sin of the new tokens' positions, (T, hs/2) or (B, T, hs/2), or None. kv: a FloatKV (the new keys
    and values are written into it and each query attends up to its own position), or attend(q, k, v), which
    stores k, v (B, T, nkv, hs) where it keeps them and returns the attention of q (B, Tq, nh, hs).
    """
    if _fusable(x, w, kv):
        out = _step(x, w, rope, kv)
        return out if n_out is None else out[:, x.shape[1] - n_out:]
    B, T, _ = x.shape
    nh, nkv, hs = w.n_head, w.n_kv, w.head_size
    qkv = dispatch.linear(_norm(x, w.ln_1, w), w.c_attn, w.biases[0])  # (B, T, (nh + 2 nkv) hs)
    q = qkv[..., :nh * hs].reshape(B, T, nh, hs)
    k = qkv[..., nh * hs:(nh + nkv) * hs].reshape(B, T, nkv, hs)
    v = qkv[..., (nh + nkv) * hs:].reshape(B, T, nkv, hs)
    if rope is not None:
        q, k = dispatch.rope(q, *rope), dispatch.rope(k, *rope)
    if n_out is not None:  # from here on (B, n_out, ...)
        q, x = q[:, T - n_out:], x[:, T - n_out:]
    y = _attend(q, k, v, kv) if isinstance(kv, FloatKV) else kv(q, k, v)  # (B, Tq, nh, hs)
    x = x + dispatch.linear(y.reshape(B, y.shape[1], -1), w.c_proj, w.biases[1])
    h = dispatch.linear(_norm(x, w.ln_2, w), w.c_fc, w.biases[2])  # (B, Tq, F or 2F)
    h = {"swiglu": dispatch.swiglu, "gelu": dispatch.gelu, "relu": _relu}[w.activation](h)  # (B, Tq, F)
    return x + dispatch.linear(h, w.mlp_proj, w.biases[3])


def _relu(h):
    return np.maximum(h, 0)


def _norm(x, gain_bias, w: BlockWeights):
    if w.norm == "rmsnorm":
        return dispatch.rmsnorm(x, gain_bias[0], w.eps)
    return dispatch.layernorm(x, gain_bias[0], gain_bias[1], w.eps)


def _attend(q, k, v, kv: FloatKV):
    """Write the new keys and values (B, T, nkv, hs) into the cache, then attend from the queries (B, Tq, ...)."""
    B, T = k.shape[:2]
    first = dispatch.firsts(kv.first, B)
    rows = np.arange(B) if kv.rows is None else np.asarray(kv.rows, np.int64)
    if T == 1:
        kv.k[rows, :, first] = k[:, 0]  # (B, nkv, hs) at each sequence's own position
        kv.v[rows, :, first] = v[:, 0]
    else:
        for b in range(B):
            kv.k[rows[b], :, first[b]:first[b] + T] = k[b].transpose(1, 0, 2)
            kv.v[rows[b], :, first[b]:first[b] + T] = v[b].transpose(1, 0, 2)
    return dispatch.attention(q, kv.k, kv.v, rows, first + (T - q.shape[1]))


def _step(x, w: BlockWeights, rope, kv: FloatKV) -> np.ndarray:
    lays = [layout(m) for m in w.matrices]
    step = step_kernel(tuple(lay.key for lay in lays), w.norm, w.activation, rope is not None)
    row = 0 if kv.rows is None else int(np.asarray(kv.rows).reshape(-1)[0])
    pos = int(np.asarray(kv.first).reshape(-1)[0])
    T = x.shape[1]
    if rope is not None:
        cos, sin = (np.ascontiguousarray(a.reshape(T, -1)) for a in rope)  # (T, hs/2) of this sequence's tokens
    else:
        cos = sin = NONE.reshape(1, 0).repeat(T, axis=0)
    out = np.ascontiguousarray(x.reshape(T, -1), dtype=F32).copy()
    biases = tuple(NONE if b is None else b for b in w.biases)
    step(out, *(lay.parts for lay in lays), biases, w.ln_1, w.ln_2, w.eps, cos, sin, kv.k[row], kv.v[row], pos,
         w.n_head)
    return out.reshape(x.shape)
