"""MXFP4 (OCP Microscaling): blocks of 32 FP4 E2M1 values sharing one E8M0 power-of-two scale.

Per block of 32 weights x (17 bytes, 4.25 bits per weight):
  byte 0       E8M0 scale code e: the scale is 2^(e - 127), with e - 127 = floor(log2(max|x|)) - 2
               (2 is E2M1's largest exponent, so the block's largest value lands in [4, 8) before rounding)
  bytes 1-16   byte j = c[j] | c[j + 16] << 4 (ggml's layout), c the FP4 E2M1 codes of x / scale:
               bit 3 sign, bits 1-2 exponent, bit 0 mantissa; magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6,
               rounded to nearest with ties to the even code and saturating at 6.
This is ggml's MXFP4 block (its table holds the E2M1 values doubled and its scale is halved to match);
pocketgpt.formats.ggml runs matrices of these blocks.
"""

from __future__ import annotations

import numpy as np

from pocketgpt.errors import InputError

QK = 32
BLOCK_BYTES = 1 + QK // 2
FP4_VALUES = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
E2M1_EMAX = 2


def fp4_codes(v: np.ndarray) -> np.ndarray:
    """FP4 E2M1 codes of float32 values: round to nearest, ties to even, saturating."""
    a = np.abs(v)
    # thresholds between neighbours; at a tie the even code wins, hence > on one side and >= on the other
    mag = ((a > 0.25).astype(np.uint8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) + (a >= 3.5)
           + (a > 5)).astype(np.uint8)
    return mag | (np.signbit(v).astype(np.uint8) << 3)


def quantize_mxfp4(w: np.ndarray) -> np.ndarray:
    """(..., n) float -> (..., n // 32 * 17) uint8 blocks."""
    w = np.asarray(w, np.float32)
    if w.shape[-1] % QK:
        raise InputError(f"rows of {w.shape[-1]} values do not split into blocks of {QK}")
    b = w.reshape(-1, QK)
    absmax = np.abs(b).max(axis=1)
    _, e = np.frexp(absmax)  # absmax = m * 2^e, m in [0.5, 1): floor(log2(absmax)) = e - 1
    shared = np.where(absmax > 0, e - 1 - E2M1_EMAX, -127).clip(-127, 127)
    codes = fp4_codes(b / np.ldexp(np.float32(1), shared)[:, None])
    packed = codes[:, :QK // 2] | (codes[:, QK // 2:] << np.uint8(4))
    out = np.concatenate([(shared + 127).astype(np.uint8)[:, None], packed], axis=1)
    return out.reshape(*w.shape[:-1], -1)


def dequantize_mxfp4(blocks: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES)
    scale = np.ldexp(np.float32(1), b[:, 0].astype(np.int32) - 127)[:, None]
    codes = np.concatenate([b[:, 1:] & np.uint8(0x0F), b[:, 1:] >> np.uint8(4)], axis=1)
    return (FP4_VALUES[codes] * scale).reshape(*blocks.shape[:-1], n)
