"""A weight matrix as compiled kernels read it: its layout's arrays, row decoder and (for the hot layouts) a fused
matrix-vector kernel. Built once per matrix and kept on it; nothing here copies a matrix to float.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pocketgpt.formats import GGMLBlocks, GroupQuantized, HalfFloats, Packed
from pocketgpt.kernels import decoders, products


@dataclass(frozen=True)
class Layout:
    name: str
    parts: tuple  # the arrays every kernel of this layout takes, in the decoder's order
    decode: Callable  # decoders.<name>
    matvec: Callable | None  # fused kernel matvec(*parts, x, y), or None: decode a row, then dot


_ROW_KERNELS: dict[Callable, tuple[Callable, Callable]] = {}
_INT_MATVEC: dict[tuple[int, int], Callable | None] = {}
GGML_MATVEC = {"q8_0": products.matvec_q8_0, "q4_0": products.matvec_q4_0, "q4_1": products.matvec_q4_1}


def row_kernels(layout: Layout) -> tuple[Callable, Callable]:
    """(rows, gather) of the layout's decoder (pocketgpt.kernels.products.row_kernels), compiled once."""
    if layout.decode not in _ROW_KERNELS:
        _ROW_KERNELS[layout.decode] = products.row_kernels(layout.decode)
    return _ROW_KERNELS[layout.decode]


def _int_matvec(bits: int, group: int) -> Callable | None:
    if (bits, group) not in _INT_MATVEC:
        _INT_MATVEC[bits, group] = products.int_matvec(bits, group)
    return _INT_MATVEC[bits, group]


def _build(w) -> Layout:
    if isinstance(w, np.ndarray):
        return Layout("f32", (w,), decoders.f32, products.matvec_f32)
    if isinstance(w, HalfFloats):
        return Layout(w.kind, (w.bits,), getattr(decoders, w.kind), None)
    if isinstance(w, GGMLBlocks):
        parts = tuple(a for a in (w.codes, w.scale, w.minimum) if a is not None)
        return Layout(w.kind, parts, getattr(decoders, w.kind), GGML_MATVEC.get(w.kind))
    if isinstance(w, GroupQuantized):
        out, n = w.shape
        groups = n // w.group_size
        scale = w.scales.astype(np.float32)
        zero = (np.full((out, groups), 2 ** (w.bits - 1), np.float32) if w.zeros is None
                else w.zeros.astype(np.float32))
        return Layout(f"int{w.bits}", (w.packed, scale, zero, np.array([w.bits], np.int64)), decoders.int_codes,
                      _int_matvec(w.bits, w.group_size))
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
