"""llama.cpp's Q8_0 and Q4_0 blocks: quantize and dequantize, bit-identical to ggml's reference quantizer.

Both cut each row into blocks of 32 weights and give each block one float16 scale d.

Q8_0, 34 bytes per block:
  bytes 0-1   d = max|w| / 127, float16 little-endian
  bytes 2-33  q[0..31] as int8, q = round(w / d) with halves rounded away from zero; w ~ d * q
Q4_0, 18 bytes per block:
  bytes 0-1   d = m / -8, float16, where m is the block's weight of largest magnitude (sign kept)
  bytes 2-17  byte j = u[j] | u[j + 16] << 4, u = min(15, trunc(w / d + 8.5)); w ~ d * (u - 8)
All arithmetic is float32 in the order ggml uses, so the bytes equal the `gguf` package's.
"""

from __future__ import annotations

import numpy as np

QK = 32  # weights per block
BLOCK_BYTES = {"q8_0": 2 + QK, "q4_0": 2 + QK // 2}


def _blocks(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float32)
    if w.shape[-1] % QK:
        raise ValueError(f"rows of {w.shape[-1]} values do not split into blocks of {QK}")
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


QUANTIZE = {"q8_0": quantize_q8_0, "q4_0": quantize_q4_0}
DEQUANTIZE = {"q8_0": dequantize_q8_0, "q4_0": dequantize_q4_0}
