"""pocketgpt's integer group format: 2, 3, 4 or 8 bits, symmetric or asymmetric, bit-packed.

A weight matrix W (out, in) is cut along `in` into groups of `group_size` columns; each (row, group)
has its own float16 scale s (and, when asymmetric, an integer zero point z):
  symmetric   q = clip(round(w / s), -2^(b-1), 2^(b-1) - 1) stored as q + 2^(b-1),  s = max|w| / (2^(b-1) - 1)
  asymmetric  q = clip(round(w / s) + z, 0, 2^b - 1),  s = (max - min) / (2^b - 1),  z = round(-min / s)
  dequantize  w ~ s * (q_stored - 2^(b-1))  or  s * (q - z)
Rounding is to nearest, ties to even (NumPy's). A symmetric group's scale uses the 2^(b-1) - 1 positive
levels so that +max and -max are both representable. Scales are rounded up to float16, so every weight,
the group's extremes included, lies within half a step of its code.

Packing (`pack_bits`): the unsigned b-bit codes of each row, in order, form a little-endian bit stream:
code i occupies bits [i*b, (i+1)*b) counting from bit 0 of byte 0. For b = 4 that is two codes per byte,
the first in the low nibble; for b = 8 one code per byte; b = 3 packs eight codes into three bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketgpt.errors import InputError
from pocketgpt.formats.packed import Packed

BITS = (2, 3, 4, 8)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """(rows, n) unsigned codes < 2^bits -> (rows, ceil(n * bits / 8)) uint8."""
    codes = np.asarray(codes, dtype=np.uint8)
    planes = (codes[..., None] >> np.arange(bits, dtype=np.uint8)) & 1  # (rows, n, bits), bit 0 first
    return np.packbits(planes.reshape(codes.shape[0], -1), axis=1, bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of pack_bits: (rows, nbytes) uint8 -> (rows, n) uint8 codes."""
    if 8 % bits == 0:  # whole codes per byte: shift them out directly (the fast path for 2, 4, 8 bits)
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        codes = (packed[..., None] >> shifts) & np.uint8(2**bits - 1)  # (rows, nbytes, 8 / bits)
        return codes.reshape(packed.shape[0], packed.shape[1] * (8 // bits))[:, :n]
    planes = np.unpackbits(packed, axis=1, count=n * bits, bitorder="little").reshape(packed.shape[0], n, bits)
    return (planes << np.arange(bits, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)


@dataclass
class GroupQuantized(Packed):
    """A quantized (out, in) matrix: packed codes, per-group scales and (asymmetric) zero points."""

    packed: np.ndarray  # (out, ceil(in * bits / 8)) uint8
    scales: np.ndarray  # (out, in // group_size) float16
    zeros: np.ndarray | None  # (out, in // group_size) uint8, asymmetric only
    shape: tuple[int, int]
    bits: int
    group_size: int
    act_bits: int = 0  # 8 for SmoothQuant's W8A8: inputs rounded to int8 per token

    format = "int"

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    def parts(self) -> dict[str, np.ndarray]:
        parts = {"qweight": self.packed, "scales": self.scales}
        if self.zeros is not None:
            parts["zeros"] = self.zeros
        return parts

    def meta(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric,
                "act_bits": self.act_bits}

    @classmethod
    def expected_parts(cls, shape, meta):
        out, n = shape
        bits, group_size = meta.get("bits"), meta.get("group_size")
        check_format(bits, group_size, n)
        groups = n // group_size
        parts = {"qweight": ((out, -(-n * bits // 8)), np.dtype(np.uint8)),
                 "scales": ((out, groups), np.dtype(np.float16))}
        if not meta.get("symmetric", True):
            parts["zeros"] = ((out, groups), np.dtype(np.uint8))
        return parts

    @classmethod
    def from_parts(cls, parts, shape, meta):
        return cls(parts["qweight"], parts["scales"], parts.get("zeros"), tuple(shape), int(meta["bits"]),
                   int(meta["group_size"]), int(meta.get("act_bits", 0)))

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        out, n = self.shape
        codes = unpack_bits(self.packed, self.bits, n).reshape(out, -1, self.group_size)
        offset = 2 ** (self.bits - 1) if self.zeros is None else self.zeros[..., None]
        scales = self.scales[..., None].astype(np.float32)
        w = np.subtract(codes, offset, dtype=np.float32)  # one pass: codes to float, centred
        w *= scales
        return w.reshape(out, n).astype(dtype, copy=False)


def check_format(bits: int, group_size: int, n_in: int) -> None:
    if bits not in BITS:
        raise InputError(f"bits must be one of {', '.join(map(str, BITS))} (got {bits})")
    if not isinstance(group_size, int) or group_size < 1 or n_in % group_size:
        raise InputError(f"group size {group_size} does not divide the {n_in} input columns")


def float16_up(x: np.ndarray) -> np.ndarray:
    """x rounded up to float16, so that a scale never shrinks the range it must cover."""
    h = x.astype(np.float16)
    return np.where(h.astype(np.float32) < x, np.nextafter(h, np.float16(np.inf)), h)


def group_params(w: np.ndarray, bits: int, group_size: int, symmetric: bool, clip=1.0):
    """Float16 scales and zero points (None if symmetric) of each (row, group) of w (out, in).

    clip (a number or an (out, G) array) shrinks each group's range first; values beyond it saturate.
    """
    g = np.asarray(w, np.float32).reshape(w.shape[0], -1, group_size)
    if symmetric:
        return float16_up(np.abs(g).max(axis=2) * clip / (2 ** (bits - 1) - 1)), None
    lo, hi = np.minimum(g.min(axis=2), 0) * clip, np.maximum(g.max(axis=2), 0) * clip  # the range holds 0
    scales = float16_up((hi - lo) / (2**bits - 1))
    safe = np.where(scales == 0, 1, scales).astype(np.float32)
    zeros = np.clip(np.round(-lo / safe), 0, 2**bits - 1).astype(np.uint8)
    return scales, zeros


def quantize_codes(w: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int) -> np.ndarray:
    """Unsigned codes (out, in) of w under given per-group scales (out, G) and zero points."""
    out, n = w.shape
    g = np.asarray(w, np.float32).reshape(out, scales.shape[1], -1)
    s = scales.astype(np.float32)[..., None]
    safe = np.where(s == 0, 1, s)
    if zeros is None:
        half = 2 ** (bits - 1)
        q = np.clip(np.round(g / safe), -half, half - 1) + half
    else:
        q = np.clip(np.round(g / safe) + zeros[..., None], 0, 2**bits - 1)
    return np.where(s == 0, 0 if zeros is not None else 2 ** (bits - 1), q).reshape(out, n).astype(np.uint8)


def quantize_groups(w: np.ndarray, bits: int = 4, group_size: int = 64, symmetric: bool = True,
                    clip=1.0) -> GroupQuantized:
    """Round-to-nearest group quantization of an (out, in) matrix (optionally with clipped ranges)."""
    w = np.asarray(w, np.float32)
    check_format(bits, group_size, w.shape[1])
    scales, zeros = group_params(w, bits, group_size, symmetric, clip)
    codes = quantize_codes(w, scales, zeros, bits)
    return GroupQuantized(pack_bits(codes, bits), scales, zeros, tuple(w.shape), bits, group_size)


def quantize_per_token(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """Dynamic symmetric per-token quantization of activations (..., C), returned dequantized."""
    levels = 2 ** (bits - 1) - 1
    scale = np.abs(x).max(axis=-1, keepdims=True) / levels
    safe = np.where(scale == 0, 1, scale)
    return np.clip(np.round(x / safe), -levels, levels) * safe


def largest_group(widths: list[int], at_most: int = 128) -> int:
    """The largest power of two up to at_most that divides every width (1 if none larger does)."""
    group = at_most
    while group > 1 and any(w % group for w in widths):
        group //= 2
    return group
