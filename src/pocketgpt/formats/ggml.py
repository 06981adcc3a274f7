"""llama.cpp's block formats (ggml) as `GGMLBlocks` matrices: Q8_0, Q4_0 and Q4_1, quantized bit-identically to
ggml's reference quantizer; MXFP4 (pocketgpt.formats.mxfp4); the K-quants Q4_K, Q5_K, Q6_K and the 5-bit
Q5_0 and Q5_1 (pocketgpt.formats.kquants, dequantized only).

Each cuts every row into blocks (32 weights; 256 for the K-quants) with their own scales; a checkpoint stores a
matrix as its rows of blocks, (out, in / block * block bytes) uint8, exactly as a GGUF file holds it (in memory
the common blocks are held interleaved for the kernels: `GGMLBlocks`).

Q8_0, 34 bytes per block:
  bytes 0-1   d = max|w| / 127, float16 little-endian
  bytes 2-33  q[0..31] as int8, q = round(w / d) with halves rounded away from zero; w ~ d * q
Q4_0, 18 bytes per block:
  bytes 0-1   d = m / -8, float16, where m is the block's weight of largest magnitude (sign kept)
  bytes 2-17  byte j = u[j] | u[j + 16] << 4, u = min(15, trunc(w / d + 8.5)); w ~ d * (u - 8)
Q4_1, 20 bytes per block:
  bytes 0-1   d = (max - min) / 15, float16;  bytes 2-3  m = min, float16
  bytes 4-19  byte j = u[j] | u[j + 16] << 4, u = min(15, trunc((w - min) / d + 0.5)); w ~ d * u + m
All arithmetic is float32 in the order ggml uses, so the bytes equal the `gguf` package's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketgpt.errors import InputError
from pocketgpt.formats import kquants, mxfp4
from pocketgpt.formats.interleaved import LANES, pack, pack_nibbles, spec, unpack, unpack_nibbles
from pocketgpt.formats.packed import Packed

QK = 32  # weights per block
BLOCK_BYTES = {"q8_0": 2 + QK, "q4_0": 2 + QK // 2, "q4_1": 4 + QK // 2, "mxfp4": mxfp4.BLOCK_BYTES,
               **kquants.BLOCK_BYTES}
BLOCK_WEIGHTS = {kind: kquants.BLOCK_WEIGHTS.get(kind, QK) for kind in BLOCK_BYTES}


def check_row(n: int, kind: str = "q8_0") -> None:
    if n % BLOCK_WEIGHTS[kind]:
        raise InputError(f"rows of {n} values do not split into {kind} blocks of {BLOCK_WEIGHTS[kind]}")


def _blocks(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    check_row(w.shape[-1])
    return w.reshape(-1, QK)  # (n_blocks, 32)


def _inverse(d: np.ndarray) -> np.ndarray:
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    return inv


def _round_half_away(x: np.ndarray) -> np.ndarray:
    a = np.abs(x)
    whole = np.floor(a)
    return np.sign(x) * (whole + (a - whole >= 0.5))  # not floor(a + 0.5): that sum can round up in float32


def quantize_q8_0(w: np.ndarray) -> np.ndarray:
    """(..., n) float -> (..., n // 32 * 34) uint8 blocks."""
    b = _blocks(w)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)  # (n_blocks, 1)
    q = _round_half_away(b * _inverse(d)).astype(np.int8)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=1)
    return out.reshape(*np.shape(w)[:-1], -1)


def dequantize_q8_0(blocks: np.ndarray, n: int) -> np.ndarray:
    """(..., n // 32 * 34) uint8 -> (..., n) float32."""
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q8_0"])
    d = b[:, :2].copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)
    q = b[:, 2:].view(np.int8).astype(np.float32)
    return (d * q).reshape(*blocks.shape[:-1], n)


def quantize_q4_0(w: np.ndarray) -> np.ndarray:
    """(..., n) float -> (..., n // 32 * 18) uint8 blocks."""
    b = _blocks(w)
    m = np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1)  # signed largest magnitude
    d = m / np.float32(-8)
    u = np.trunc(b * _inverse(d) + np.float32(8.5)).astype(np.uint8).clip(0, 15)  # (n_blocks, 32)
    packed = u[:, :QK // 2] | (u[:, QK // 2:] << np.uint8(4))
    out = np.concatenate([d.astype(np.float16).view(np.uint8), packed], axis=1)
    return out.reshape(*np.shape(w)[:-1], -1)


def dequantize_q4_0(blocks: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q4_0"])
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    u = np.concatenate([b[:, 2:] & np.uint8(0x0F), b[:, 2:] >> np.uint8(4)], axis=1)
    return (d * (u.astype(np.float32) - 8)).reshape(*blocks.shape[:-1], n)


def quantize_q4_1(w: np.ndarray) -> np.ndarray:
    """(..., n) float -> (..., n // 32 * 20) uint8 blocks."""
    b = _blocks(w)
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    d = (hi - lo) / np.float32(15)
    u = np.minimum(np.trunc((b - lo) * _inverse(d) + np.float32(0.5)), 15).astype(np.uint8)
    packed = u[:, :QK // 2] | (u[:, QK // 2:] << np.uint8(4))
    out = np.concatenate([d.astype(np.float16).view(np.uint8), lo.astype(np.float16).view(np.uint8), packed], axis=1)
    return out.reshape(*np.shape(w)[:-1], -1)


def dequantize_q4_1(blocks: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q4_1"])
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    u = np.concatenate([b[:, 4:] & np.uint8(0x0F), b[:, 4:] >> np.uint8(4)], axis=1)
    return (d * u.astype(np.float32) + m).reshape(*blocks.shape[:-1], n)


QUANTIZE = {"q8_0": quantize_q8_0, "q4_0": quantize_q4_0, "q4_1": quantize_q4_1, "mxfp4": mxfp4.quantize_mxfp4}
DEQUANTIZE = {"q8_0": dequantize_q8_0, "q4_0": dequantize_q4_0, "q4_1": dequantize_q4_1,
              "mxfp4": mxfp4.dequantize_mxfp4, **kquants.DEQUANTIZE}


HELD = ("q8_0", "q4_0", "q4_1", "mxfp4", "q5_0", "q5_1")  # kinds held interleaved in memory (below)
HEAD = {"q8_0": 2, "q4_0": 2, "q4_1": 4, "mxfp4": 1, "q5_0": 6, "q5_1": 8}  # bytes of a block before its codes
SPECS = {"q4_0": spec(4, offset=8), "q4_1": spec(4), "q8_0": spec(8, offset=128), "q5_0": spec(4, top=True, offset=16),
         "q5_1": spec(4, top=True), "mxfp4": spec(4, table=True, offset=12)}  # their interleaved layouts


@dataclass
class GGMLBlocks(Packed):
    """An (out, in) matrix of ggml blocks of one kind.

    In memory, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and MXFP4 are held as `tiles`, rows interleaved sixteen to a group
    (pocketgpt.formats.interleaved, SPECS), the one form the integer dot-product kernels read: no other copy of the
    matrix is kept. Q8_0's int8 codes are held as q + 128, MXFP4's scale halved (its codes index 2 v + 12). The
    K-quants are held as stored, in `tiles` (a one-element tuple). `split()` gives the per-row form the float kernels
    read and `blocks` the stored bytes, both rebuilt exactly (the scales are float16 values either way).
    """

    kind: str
    tiles: tuple
    shape: tuple[int, int]

    @property
    def format(self) -> str:
        return self.kind

    @classmethod
    def from_split(cls, kind: str, codes: np.ndarray, scale: np.ndarray, minimum: np.ndarray | None,
                   shape: tuple[int, int], high: np.ndarray | None = None) -> GGMLBlocks:
        """The matrix from the split form (see split())."""
        code = SPECS[kind]
        if kind in ("q4_0", "q4_1"):
            tiles = pack_nibbles(codes, scale, code, minimum)
        elif kind == "mxfp4":
            tiles = pack_nibbles(codes, scale * np.float32(0.5), code)
        elif kind in ("q8_0", "q5_0"):
            tiles = pack((codes.astype(np.int16) + SYMMETRIC.get(kind, 128)).astype(np.uint8), scale, code)
        else:  # q5_1
            tiles = pack(kquants.unpack_codes(codes, high).astype(np.uint8), scale, code, minimum)
        return cls(kind, tiles, tuple(shape))

    def split(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The per-row form the float kernels read, (codes, scale, minimum, high): `codes` every block's code bytes
        in order ((out, in) int8 for Q8_0, and for Q5_0 the int8 codes u - 16 of the Q8_0 blocks of the same
        weights; (out, in / 2) uint8 for the 4-bit kinds and Q5_1, byte j of a block holding the low four bits of
        weights j and j + 16), `scale` (out, in / 32) float32 (d; for MXFP4 2^(e - 127)), for Q4_1 and Q5_1
        `minimum` (out, in / 32) float32, and for Q5_1 `high` (out, in / 32) uint32, bit j the fifth bit of
        weight j (else None)."""
        if self.kind in ("q4_0", "q4_1", "mxfp4"):
            _, d, m = unpack(self.tiles)
            return unpack_nibbles(self.tiles), d * np.float32(2.0) if self.kind == "mxfp4" else d, m, None
        u, d, m = unpack(self.tiles)
        if self.kind in ("q8_0", "q5_0"):
            return (u.astype(np.int16) - SYMMETRIC.get(self.kind, 128)).astype(np.int8), d, None, None
        nibbles, high = kquants.pack_codes(u, fifth=True)  # q5_1
        return nibbles, d, m, high

    @classmethod
    def from_blocks(cls, kind: str, blocks: np.ndarray, shape: tuple[int, int]) -> GGMLBlocks:
        """The matrix from its stored blocks (out, in / BLOCK_WEIGHTS * BLOCK_BYTES) uint8."""
        out, n = shape
        if kind not in HELD:
            return cls(kind, (np.ascontiguousarray(blocks),), tuple(shape))
        b = np.asarray(blocks, np.uint8).reshape(out, n // QK, BLOCK_BYTES[kind])
        if kind == "mxfp4":
            scale = np.ldexp(np.float32(1), b[..., 0].astype(np.int32) - 127)
        else:
            scale = b[..., :2].copy().view(np.float16)[..., 0].astype(np.float32)
        offset = kind in ("q4_1", "q5_1")
        minimum = b[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32) if offset else None
        high = b[..., HEAD[kind] - 4:HEAD[kind]].copy().view("<u4")[..., 0].astype(np.uint32) \
            if kind in ("q5_0", "q5_1") else None
        codes = np.ascontiguousarray(b[..., HEAD[kind]:].reshape(out, -1))
        if kind == "q5_0":
            codes = (kquants.unpack_codes(codes, high) - 16).astype(np.int8)
        return cls.from_split(kind, codes.view(np.int8) if kind == "q8_0" else codes, scale, minimum, shape, high)

    @property
    def blocks(self) -> np.ndarray:
        """The blocks as a GGUF file stores them, (out, in / BLOCK_WEIGHTS * BLOCK_BYTES) uint8."""
        if self.kind not in HELD:
            return self.tiles[0]
        out, n = self.shape
        codes, scale, minimum, high = self.split()
        if self.kind == "mxfp4":
            _, e = np.frexp(scale)  # 2^(e - 127) = 0.5 * 2^(e - 126)
            head = [np.where(np.isinf(scale), 255, e + 126).astype(np.uint8)[..., None]]
        else:
            head = [scale.astype(np.float16)[..., None].view(np.uint8)]
            if minimum is not None:
                head.append(minimum.astype(np.float16)[..., None].view(np.uint8))
        if self.kind == "q5_0":
            codes, high = kquants.pack_codes(codes.astype(np.int16) + 16, fifth=True)
        if high is not None:
            head.append(high.astype("<u4")[..., None].view(np.uint8))
        codes = codes.view(np.uint8).reshape(out, n // QK, -1)
        return np.concatenate([*head, codes], axis=2).reshape(out, -1)

    def parts(self) -> dict[str, np.ndarray]:
        return {"blocks": self.blocks}

    def _rebuild_meta(self) -> dict:
        return {"kind": self.kind}

    def take(self, rows) -> GGMLBlocks:
        if self.kind not in HELD:
            return super().take(rows)
        codes, scale, minimum, high = (None if a is None else a[rows] for a in self.split())
        return GGMLBlocks.from_split(self.kind, codes, scale, minimum, (codes.shape[0], self.shape[1]), high)

    @classmethod
    def stack(cls, matrices: list[GGMLBlocks]) -> GGMLBlocks:
        """Whole groups of 16 rows held alike are stacked as they are held; otherwise through the split form."""
        first = matrices[0]
        shape = (sum(m.shape[0] for m in matrices), first.shape[1])
        if first.kind not in HELD:
            return super().stack(matrices)
        held = [m.tiles for m in matrices]
        if all(m.shape[0] % LANES == 0 for m in matrices[:-1]) and \
                all(t[i].dtype == held[0][i].dtype for t in held for i in range(3)):
            constant = held[0][2].shape == (1, 1, 1)  # a constant offset's unread array
            tiles = (np.concatenate([t[0] for t in held]), np.concatenate([t[1] for t in held]),
                     held[0][2] if constant else np.concatenate([t[2] for t in held]),
                     np.array([SPECS[first.kind], shape[0]], np.int64))
            return cls(first.kind, tiles, shape)
        splits = [m.split() for m in matrices]
        codes, scale, minimum, high = (None if parts[0] is None else np.concatenate(parts)
                                       for parts in zip(*splits))
        return cls.from_split(first.kind, codes, scale, minimum, shape, high)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] // BLOCK_WEIGHTS[self.kind] * BLOCK_BYTES[self.kind]

    @classmethod
    def expected_parts(cls, shape, meta):
        out, n = shape
        kind = meta["kind"]
        check_row(n, kind)
        return {"blocks": ((out, n // BLOCK_WEIGHTS[kind] * BLOCK_BYTES[kind]), np.dtype(np.uint8))}

    @classmethod
    def from_parts(cls, parts, shape, meta):
        return cls.from_blocks(meta["kind"], parts["blocks"], tuple(shape))

    def dequantize(self, dtype=np.float32) -> np.ndarray:
        return DEQUANTIZE[self.kind](self.blocks, self.shape[1]).astype(dtype, copy=False)


def quantize_blocks(w: np.ndarray, kind: str) -> GGMLBlocks:
    """An (out, in) float matrix as ggml blocks of `kind`."""
    w = np.asarray(w, np.float32)
    return GGMLBlocks.from_blocks(kind, QUANTIZE[kind](w), tuple(w.shape))


SYMMETRIC = {"q4_0": 8, "q5_0": 16}  # the blocks whose weights are d (u - offset), and their offsets


def as_q8_0(w: GGMLBlocks) -> GGMLBlocks:
    """Q4_0 or Q5_0 blocks as Q8_0 blocks of the same weights, exactly: the same d, and u - offset as the int8
    code (d q is then the very product those formats compute). So a matrix whose parts mix these with Q8_0 (a
    Q4_K_M file's attn_v beside its attn_q and attn_k) stays packed in one format."""
    if w.kind == "q8_0":
        return w
    codes, scale, _, _ = w.split()
    if w.kind == "q4_0":
        codes = (kquants.unpack_codes(codes) - SYMMETRIC["q4_0"]).astype(np.int8)
    return GGMLBlocks.from_split("q8_0", codes, scale, None, w.shape)
