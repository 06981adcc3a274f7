"""A 4-bit KV cache in the manner of KIVI: keys quantized per channel, values per token, recent tokens float.
Keys have outlier channels, so each channel gets its own range over a group of `group` consecutive tokens;
values are quantized per token (over its head's channels). Both are asymmetric 4-bit (float16 scale,
uint8 zero point, codes packed two per byte along the channels). The tokens of the group still being
filled stay in float16 until the group is complete.

Per layer, storage for a full context of S tokens with head size hs (nkv heads, batch B):
  keys    codes (B, nkv, S, hs/2) uint8 + per (group, channel) float16 scale and uint8 zero
  values  codes (B, nkv, S, hs/2) uint8 + per token float16 scale and uint8 zero
  float16 (B, nkv, group, hs) each for keys and values (the group being filled)
As arrays (LAYER_ARRAYS, in this order), for one layer with n_groups = ceil(S / group):
  k_codes (B, nkv, n_groups * group, hs/2) uint8     channel 2i in the low nibble of byte i
  k_scale, k_zero (B, nkv, n_groups, 1, hs) float16, uint8: key channel c of position p is
                  (code - zero[p // group, c]) * scale[p // group, c]
  v_codes (B, nkv, n_groups * group, hs/2) uint8
  v_scale, v_zero (B, nkv, n_groups * group, 1) float16, uint8: value channel c of position p is
                  (code - zero[p]) * scale[p]
  k_float, v_float (B, nkv, group, hs) float16: positions complete_groups * group onwards
"""

from __future__ import annotations

import numpy as np

from pocketgpt.formats.groups import float16_up, pack_bits, unpack_bits

BITS = 4
LEVELS = 2**BITS - 1


def quantize(x: np.ndarray, axis: int):
    """Asymmetric 4-bit codes of x with one range per slice along `axis` (the axis the range spans)."""
    lo = np.minimum(x.min(axis=axis, keepdims=True), 0)
    hi = np.maximum(x.max(axis=axis, keepdims=True), 0)
    scale = float16_up((hi - lo) / LEVELS)
    safe = np.where(scale == 0, 1, scale).astype(np.float32)
    zero = np.clip(np.round(-lo / safe), 0, LEVELS).astype(np.uint8)
    codes = np.clip(np.round(x / safe) + zero, 0, LEVELS).astype(np.uint8)
    return codes, scale, zero


def dequantize(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    return (codes.astype(np.float32) - zero) * scale.astype(np.float32)


def pack(codes: np.ndarray) -> np.ndarray:
    """(..., hs) codes -> (..., hs / 2) bytes."""
    return pack_bits(codes.reshape(-1, codes.shape[-1]), BITS).reshape(*codes.shape[:-1], -1)


def unpack(packed: np.ndarray, hs: int) -> np.ndarray:
    return unpack_bits(packed.reshape(-1, packed.shape[-1]), BITS, hs).reshape(*packed.shape[:-1], hs)


LAYER_ARRAYS = ("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero", "k_float", "v_float")


def expand(k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, k_float, v_float, group: int, end: int):
    """Keys and values (B, nkv, end, hs) float32 of positions 0 .. end - 1 of one layer's arrays."""
    n = end // group  # complete groups
    B, nkv, _, half = k_codes.shape
    hs = 2 * half
    codes = unpack(k_codes[:, :, :n * group], hs).reshape(B, nkv, n, group, hs)
    keys = dequantize(codes, k_scale[:, :, :n], k_zero[:, :, :n]).reshape(B, nkv, n * group, hs)
    values = dequantize(unpack(v_codes[:, :, :n * group], hs), v_scale[:, :, :n * group], v_zero[:, :, :n * group])
    keys = np.concatenate([keys, k_float[:, :, :end - n * group]], axis=2)
    values = np.concatenate([values, v_float[:, :, :end - n * group]], axis=2)
    return keys.astype(np.float32, copy=False), values.astype(np.float32, copy=False)
