"""A weight matrix as compiled kernels read it: its layout's arrays, row decoder and matrix-vector body (fused for
the hot layouts). Built once per matrix and kept on it; nothing here copies a matrix to float. The K-quants are
read as the layouts of other blocks that compute the same weights in the same float32 arithmetic (Q4_K as Q4_1,
Q5_K as Q5_1, Q6_K as 8-bit groups of 16; pocketgpt.formats.kquants), their codes repacked once beside the stored
blocks, which saving needs; Q5_0 is held as Q8_0 blocks already (pocketgpt.formats.ggml) and read as those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pocketgpt.formats import GGMLBlocks, GroupQuantized, HalfFloats, Packed, kquants
from pocketgpt.kernels import decoders, products


@dataclass(frozen=True)
class Layout:
    name: str  # a key of decoders.KINDS
    parts: tuple  # the arrays every kernel of this layout takes, in the decoder's order
    group: int = 0  # weights per group (pocketgpt's int4 and int8 layouts; 0 for the others)

    @property
    def kind(self) -> int:
        return decoders.KINDS[self.name]

    @property
    def key(self) -> tuple[int, int]:
        return self.kind, self.group

    @property
    def fused(self) -> bool:
        """Whether a fused matvec kernel reads this layout (products.FUSED), rather than its row decoder."""
        return self.key in products.FUSED

    @property
    def int8(self) -> bool:
        """Whether products of a few tokens with this matrix round them to 8 bits (products.int8_dots)."""
        return products.int8_dots() and self.kind in products.BLOCK_TOKENS

    @property
    def matvec(self) -> Callable:
        """matvec(parts, x, y): the fused kernel (integer dots where int8), or one through the row decoder (compiled
        once per kind)."""
        if self.int8:
            return products.INT_FUSED[self.kind]
        if self.fused:
            return products.FUSED[self.key]
        return _compiled(("matvec", self.kind), lambda: products.decoded_matvec(self.kind))

    @property
    def split_rows(self) -> Callable | None:
        """For a hot layout (one with a fused matvec) other than llama.cpp's blocks (products.block_tokens): its kernel
        for a few tokens in split order (products.split_rows, products.to_split_order); None for the others (they
        use row_kernels)."""
        if not self.fused or self.kind in products.BLOCK_TOKENS:
            return None
        return _compiled(("split", *self.key), lambda: products.split_rows(*self.key))

    @property
    def split_tile(self) -> Callable | None:
        """For a hot layout: its kernel that decodes a tile of rows in split order (products.split_tile); None for the
        others (their tiles are decoded in place by row_kernels' gather)."""
        if not self.fused:
            return None
        return _compiled(("tile", *self.key), lambda: products.split_tile(*self.key))

    @property
    def row_kernels(self) -> tuple[Callable, Callable]:
        """(rows, gather) of the layout's decoder (pocketgpt.kernels.products.row_kernels), compiled once."""
        return _compiled(("rows", self.kind), lambda: products.row_kernels(self.kind))


_KERNELS: dict = {}


def _compiled(key, make: Callable):
    """The kernel made once per key (numba compiles it on first call, or loads it from its disk cache)."""
    if key not in _KERNELS:
        _KERNELS[key] = make()
    return _KERNELS[key]


def _build(w) -> Layout:
    if isinstance(w, np.ndarray):
        return Layout("f32", (w,))
    if isinstance(w, HalfFloats):
        return Layout(w.kind, (w.bits,))
    if isinstance(w, GGMLBlocks):
        rows = w.shape[0]
        if w.kind == "q4_k":  # as the fused layouts whose arithmetic is theirs (pocketgpt.formats.kquants)
            return Layout("q4_1", kquants.as_q4_1(w.codes, rows))
        if w.kind == "q5_k":
            return Layout("q5_1", kquants.as_q5_1(w.codes, rows))
        if w.kind == "q6_k":
            return Layout("int8", (*kquants.as_int8_groups(w.codes, rows), np.array([8], np.int64)), 16)
        if w.kind == "q5_0":  # held as its Q8_0 blocks (pocketgpt.formats.ggml)
            return Layout("q8_0", (w.codes, w.scale))
        return Layout(w.kind, tuple(a for a in (w.codes, w.scale, w.minimum, w.high) if a is not None))
    if isinstance(w, GroupQuantized):
        out, n = w.shape
        groups = n // w.group_size
        scale = w.scales.astype(np.float32)
        zero = (np.full((out, groups), 2 ** (w.bits - 1), np.float32) if w.zeros is None
                else w.zeros.astype(np.float32))
        parts = (w.packed, scale, zero, np.array([w.bits], np.int64))
        return Layout(f"int{w.bits}", parts, w.group_size) if w.bits in (4, 8) else Layout("int", parts)
    raise TypeError(f"no kernel layout for {type(w).__name__}")


def layout(w: np.ndarray | Packed) -> Layout:
    """The layout of a float32 (R, n) array (built on each call: it is the array itself) or of a packed matrix
    (built on first use and kept on the matrix)."""
    if isinstance(w, np.ndarray):
        return _build(w)
    found = w.__dict__.get("_layout")
    if found is None:
        found = w.__dict__["_layout"] = _build(w)
    return found
