"""16-bit float weights: float16 (IEEE half) and bfloat16, stored as their raw 16 bits.

A matrix of either is (out, in) uint16, the bit pattern of each weight. bfloat16 is the upper half of a float32
(1 sign, 8 exponent, 7 mantissa bits); rounding to it is to nearest, ties to even, as PyTorch and llama.cpp do.
float16 rounding is NumPy's (nearest, ties to even). Both expand to float32 exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketgpt.formats.packed import Packed

KINDS = ("f16", "bf16")


def to_bits(w: np.ndarray, kind: str) -> np.ndarray:
    """float weights -> their 16 bits (uint16) in `kind`."""
    w = np.asarray(w, np.float32)
    if kind == "f16":
        return w.astype(np.float16).view(np.uint16)
    u = w.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even on the dropped half


def from_bits(bits: np.ndarray, kind: str) -> np.ndarray:
    if kind == "f16":
        return bits.view(np.float16).astype(np.float32)
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass
class HalfFloats(Packed):
    """An (out, in) matrix of float16 or bfloat16 weights."""

    kind: str
    bits: np.ndarray  # (out, in) uint16
    shape: tuple[int, int]

    @property
    def format(self) -> str:
        return self.kind

    def parts(self) -> dict[str, np.ndarray]:
        return {"weight": self.bits}

    def _rebuild_meta(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def expected_parts(cls, shape, meta):
        return {"weight": (tuple(shape), np.dtype(np.uint16))}

    @classmethod
    def from_parts(cls, parts, shape, meta):
        return cls(meta["kind"], parts["weight"], tuple(shape))

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        return from_bits(self.bits, self.kind).astype(dtype, copy=False)


def quantize_floats(w: np.ndarray, kind: str) -> HalfFloats:
    w = np.asarray(w, np.float32)
    return HalfFloats(kind, to_bits(w, kind), tuple(w.shape))
