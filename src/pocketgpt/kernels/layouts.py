"""A weight matrix as compiled kernels read it: its layout's arrays, row decoder and matrix-vector body (fused for
the hot layouts). Built once per matrix and kept on it; nothing here copies a matrix to float.

With integer dot products on (int8_dots: the default on a machine with AVX2), every integer format whose rows cut
into blocks of 32 runs interleaved sixteen rows to a group (pocketgpt.formats.interleaved), which all products
read whatever the number of tokens: llama.cpp's Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and MXFP4 as they are held
(pocketgpt.formats.ggml, no copy), and repacked once: the K-quants (Q4_K and Q5_K as the Q4_1 and Q5_1 blocks that
compute their weights in the same float32 arithmetic, Q6_K as 8-bit codes with a scale per 16:
pocketgpt.formats.kquants) and pocketgpt's 2-, 3-, 4- and 8-bit groups. Otherwise, and for the formats that do not
fit (float weights, groups of 16), the float
kernels read each row's parts: llama.cpp's blocks split (GGMLBlocks.split(), a copy; Q5_0 as the Q8_0 blocks of the
same weights), the K-quants as those other blocks (Q6_K as 8-bit groups of 16), their codes repacked once beside
the stored blocks, which saving needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pocketgpt.formats import GGMLBlocks, GroupQuantized, HalfFloats, Packed, kquants
from pocketgpt.formats.ggml import HELD, SPECS
from pocketgpt.formats.groups import unpack_bits
from pocketgpt.formats.interleaved import ZERO, pack, pack_nibbles, spec
from pocketgpt.kernels import decoders, interleaved, products

_int8 = interleaved.ENABLED  # whether integer formats run interleaved, with activations rounded to 8 bits


def int8_dots() -> bool:
    """Whether products with integer formats round the activations to 8 bits per block of 32 and take integer dot
    products (pocketgpt.kernels.interleaved): by default where the machine has AVX2, unless POCKETGPT_INT8_DOT=0."""
    return _int8


def set_int8_dots(on: bool) -> None:
    """Turn integer dot products on or off from the next product on (off: the float kernels, which take activations
    as they are, as the reference computes them)."""
    global _int8
    if on and not interleaved.HOST_AVX2:
        raise ValueError("integer dot products need AVX2, which this machine lacks")
    _int8 = bool(on)


@dataclass(frozen=True)
class Layout:
    name: str  # a key of decoders.KINDS
    parts: tuple  # the arrays every kernel of this layout takes, in the decoder's order
    group: int = 0  # weights per group (pocketgpt's int4 and int8 layouts), the spec of an interleaved one, else 0

    @property
    def kind(self) -> int:
        return decoders.KINDS[self.name]

    @property
    def key(self) -> tuple[int, int]:
        return self.kind, self.group

    @property
    def fused(self) -> bool:
        """Whether a fused matvec kernel reads this layout (products.FUSED or the interleaved one), rather than its
        row decoder."""
        return self.key in products.FUSED or self.interleaved

    @property
    def interleaved(self) -> bool:
        """Whether the rows are interleaved for integer dot products: every product rounds its tokens to 8 bits."""
        return self.kind == decoders.INTERLEAVED

    @property
    def product(self) -> Callable:
        """product(parts, x, y) of an interleaved layout: y (B, R) = x (B, n) W^T for any number of tokens, rounded
        to 8 bits first (compiled once per spec)."""
        return _compiled(("interleaved", self.group), lambda: interleaved.linear_for(self.group))

    @property
    def matvec(self) -> Callable:
        """matvec(parts, x, y) of a layout with float kernels: the fused kernel, or one through the row decoder
        (compiled once per kind)."""
        if self.key in products.FUSED:
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


def _interleaved(w) -> Layout | None:
    """The interleaved layout of an integer matrix whose rows cut into blocks of 32, or None: llama.cpp's common
    blocks as they are held (pocketgpt.formats.ggml), the others repacked."""
    if isinstance(w, GGMLBlocks):
        if w.kind in HELD:
            return Layout("interleaved", w.tiles, SPECS[w.kind])
        if w.kind == "q4_k":
            nibbles, d, m = kquants.as_q4_1(w.tiles[0], w.shape[0])
            parts = pack_nibbles(nibbles, d, spec(4), m)
        elif w.kind == "q5_k":
            nibbles, d, m, high = kquants.as_q5_1(w.tiles[0], w.shape[0])
            parts = pack(kquants.unpack_codes(nibbles, high).astype(np.uint8), d, spec(4, top=True), m)
        elif w.kind == "q6_k":  # 8-bit codes u - 32 with a scale per 16 (pocketgpt.formats.kquants.as_int8_groups)
            u, s, _ = kquants.as_int8_groups(w.tiles[0], w.shape[0])
            parts = pack(u, s, spec(8, offset=32, halves=True))
        else:
            return None
        return Layout("interleaved", parts, int(parts[3][0]))
    if isinstance(w, GroupQuantized) and not w.act_bits and w.group_size % 32 == 0:
        out, n = w.shape
        u = unpack_bits(w.packed, w.bits, n)
        per = w.group_size // 32  # blocks of 32 per group
        d = np.repeat(w.scales.astype(np.float32), per, axis=1)
        bits, top = (2, True) if w.bits == 3 else (w.bits, False)
        if w.zeros is None:
            parts = pack(u, d, spec(bits, top, offset=2 ** (w.bits - 1)))
        else:
            parts = pack(u, d, spec(bits, top, offset=ZERO), np.repeat(w.zeros, per, axis=1))
        return Layout("interleaved", parts, int(parts[3][0]))
    return None


def _build(w) -> Layout:
    if isinstance(w, np.ndarray):
        return Layout("f32", (w,))
    if isinstance(w, HalfFloats):
        return Layout(w.kind, (w.bits,))
    if isinstance(w, GGMLBlocks):
        rows = w.shape[0]
        if w.kind == "q4_k":  # as the fused layouts whose arithmetic is theirs (pocketgpt.formats.kquants)
            return Layout("q4_1", kquants.as_q4_1(w.tiles[0], rows))
        if w.kind == "q5_k":
            return Layout("q5_1", kquants.as_q5_1(w.tiles[0], rows))
        if w.kind == "q6_k":
            return Layout("int8", (*kquants.as_int8_groups(w.tiles[0], rows), np.array([8], np.int64)), 16)
        if w.kind in HELD:  # their split form (Q5_0: the Q8_0 blocks of the same weights)
            return Layout("q8_0" if w.kind == "q5_0" else w.kind, tuple(a for a in w.split() if a is not None))
        return Layout(w.kind, w.tiles)
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
    (built on first use and kept on the matrix): interleaved where int8_dots() is on and the format fits."""
    if isinstance(w, np.ndarray):
        return _build(w)
    if _int8:
        found = w.__dict__.get("_interleaved", False)
        if found is False:
            found = w.__dict__["_interleaved"] = _interleaved(w)
        if found is not None:
            return found
    found = w.__dict__.get("_layout")
    if found is None:
        found = w.__dict__["_layout"] = _build(w)
    return found
