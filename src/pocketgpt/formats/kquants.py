"""llama.cpp's K-quants Q4_K, Q5_K and Q6_K: what most downloaded GGUF files hold, and the 5-bit blocks Q5_0
and Q5_1 that those files use for rows K-quants cannot cut (a width that is not a multiple of 256, such as
SmolLM2's 576: its Q4_K_M file is mostly Q5_0). Dequantization only (llama.cpp's quantizer makes them); every
value equals ggml's own dequantization bit for bit.

A super-block is QK_K = 256 weights in 8 sub-blocks of 32 (Q4_K, Q5_K) or 16 of 16 (Q6_K). All fields are
little-endian; d and dmin are float16.

Q4_K, 144 bytes: d (2) | dmin (2) | scales (12) | qs (128)
  the 12 scale bytes hold 8 six-bit scales sc[j] and 8 six-bit mins m[j]: for j < 4, sc = b[j] & 63 and
  m = b[j + 4] & 63; for j >= 4, sc = (b[j + 4] & 15) | (b[j - 4] >> 6) << 4 and m = (b[j + 4] >> 4) | (b[j] >> 6) << 4.
  Sub-blocks 2i and 2i + 1 take the low and the high nibbles of qs[32 i .. 32 i + 31]:
  w = d * sc[j] * q - dmin * m[j].
Q5_K, 176 bytes: d (2) | dmin (2) | scales (12) | qh (32) | qs (128)
  as Q4_K, with a fifth bit: sub-block j adds 16 to q where bit j of qh[l] (l = the weight's place in its
  sub-block) is set.
Q6_K, 210 bytes: ql (128) | qh (64) | scales (16, int8) | d (2)
  each half of 128 weights uses 64 bytes of ql and 32 of qh: for l < 32 the four weights l, l + 32, l + 64,
  l + 96 take the low nibble of ql[l], of ql[l + 32], the high nibble of ql[l], of ql[l + 32], and the two-bit
  fields 0, 2, 4, 6 of qh[l] as their top bits; q - 32 times d times the int8 scale of its group of 16.

Q5_0 and Q5_1 blocks hold 32 weights:
Q5_0, 22 bytes: d (2) | qh (4, a little-endian uint32) | qs (16)
  weight j < 16 is the low nibble of qs[j] with bit j of qh as its fifth bit, weight j + 16 the high nibble of
  qs[j] with bit j + 16; w = d * (q - 16).
Q5_1, 24 bytes: d (2) | m (2) | qh (4) | qs (16); the codes as Q5_0, w = d * q + m.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
BLOCK_BYTES = {"q4_k": 144, "q5_k": 176, "q6_k": 210, "q5_0": 22, "q5_1": 24}
BLOCK_WEIGHTS = {"q4_k": QK_K, "q5_k": QK_K, "q6_k": QK_K, "q5_0": 32, "q5_1": 32}


def _half(b: np.ndarray) -> np.ndarray:
    """Two bytes per row (n, 2) -> float32 (n, 1)."""
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _scales_mins(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) packed bytes -> six-bit scales and mins, (n, 8) each, as float32."""
    s = s.astype(np.uint8)
    sc = np.empty((len(s), 8), np.uint8)
    m = np.empty((len(s), 8), np.uint8)
    sc[:, :4], m[:, :4] = s[:, :4] & 63, s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)
    m[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc.astype(np.float32), m.astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, 128) bytes -> (n, 8, 32) codes: sub-block 2i the low nibbles of bytes 32i.., 2i + 1 the high ones."""
    q = qs.reshape(-1, 4, 32)
    return np.stack([q & 15, q >> 4], axis=2).reshape(-1, 8, 32)


def dequantize_q4_k(blocks: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q4_k"])
    d, dmin = _half(b[:, 0:2]), _half(b[:, 2:4])
    sc, m = _scales_mins(b[:, 4:16])
    q = _nibbles(b[:, 16:144]).astype(np.float32)
    w = (d * sc)[..., None] * q - (dmin * m)[..., None]
    return w.reshape(*np.shape(blocks)[:-1], n)


def dequantize_q5_k(blocks: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q5_k"])
    d, dmin = _half(b[:, 0:2]), _half(b[:, 2:4])
    sc, m = _scales_mins(b[:, 4:16])
    qh = b[:, 16:48]  # (n, 32): bit j of qh[l] is the fifth bit of weight l of sub-block j
    high = (qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1  # (n, 8, 32)
    q = (_nibbles(b[:, 48:176]) + 16 * high).astype(np.float32)
    w = (d * sc)[..., None] * q - (dmin * m)[..., None]
    return w.reshape(*np.shape(blocks)[:-1], n)


def dequantize_q6_k(blocks: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q6_k"])
    ql, qh = b[:, 0:128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
    scales = b[:, 192:208].view(np.int8).astype(np.float32).reshape(-1, 2, 8)
    d = _half(b[:, 208:210])[:, :, None]  # (n, 1, 1)
    low = np.stack([ql[..., :32] & 15, ql[..., 32:] & 15, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=2)
    top = np.stack([(qh >> shift) & 3 for shift in (0, 2, 4, 6)], axis=2)  # (n, 2, 4, 32)
    q = ((low | (top << 4)).astype(np.int16) - 32).astype(np.float32)  # (n, 2 halves, 4 quarters, 32)
    s = scales.reshape(-1, 2, 4, 2)  # group g = 2 * quarter + l // 16
    w = d[..., None] * s.repeat(16, axis=3) * q
    return w.reshape(*np.shape(blocks)[:-1], n)


# ----------------------------------------------------------------------------- the K-quants as 32- and 16-weight blocks
# Each K-quant is, weight for weight and with the same float32 arithmetic, a format of smaller blocks that the
# compiled kernels run fused: Q4_K and Q5_K are Q4_1 and Q5_1 blocks of 32 (w = d u + m with d = d * sc and
# m = -(dmin * m) of each sub-block: ggml's own d1 * q - m1), Q6_K is 8-bit groups of 16 (w = s (u - 32) with
# s = d * scale). These return those blocks' split parts (pocketgpt.formats.ggml.GGMLBlocks), rows (R, ...).


def _q4_k_fields(b: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Super-blocks (R * s, bytes) of Q4_K or Q5_K -> codes u (R, n) in weight order without the fifth bit, and the
    scales d (R, n/32) and offsets m (R, n/32) of their sub-blocks."""
    d, dmin = _half(b[:, 0:2]), _half(b[:, 2:4])
    sc, m = _scales_mins(b[:, 4:16])
    u = _nibbles(b[:, -128:])  # (R s, 8, 32)
    return u.reshape(rows, -1), (d * sc).reshape(rows, -1), (-(dmin * m)).reshape(rows, -1)


def pack_codes(u: np.ndarray, fifth: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes (R, n) in the weights' order -> the code bytes of blocks of 32 (R, n/2), byte j holding the low four
    bits of weights j and j + 16 (Q4_0, Q4_1, Q5_0, Q5_1), and with `fifth` each block's word of fifth bits
    (R, n/32) uint32, bit j that of weight j (else None)."""
    rows = u.shape[0]
    blocks = np.asarray(u).astype(np.uint32).reshape(rows, -1, 2, 16)
    nibbles = ((blocks[:, :, 0] & 15) | ((blocks[:, :, 1] & 15) << 4)).astype(np.uint8).reshape(rows, -1)
    if not fifth:
        return nibbles, None
    bits = (blocks.reshape(rows, -1, 32) >> 4) & 1
    return nibbles, (bits << np.arange(32, dtype=np.uint32)).sum(axis=2, dtype=np.uint32)


def unpack_codes(nibbles: np.ndarray, high: np.ndarray | None = None) -> np.ndarray:
    """pack_codes undone: code bytes (R, n/2) and words of fifth bits (R, n/32) or None -> codes (R, n) int16."""
    rows, half = nibbles.shape
    u = np.empty((rows, half // 16, 2, 16), np.int16)
    blocks = nibbles.reshape(rows, half // 16, 16)
    u[:, :, 0], u[:, :, 1] = blocks & 15, blocks >> 4
    u = u.reshape(rows, -1)
    if high is not None:
        u += 16 * ((high[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1).reshape(rows, -1).astype(np.int16)
    return u


def as_q4_1(blocks: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K rows (R, bytes) -> Q4_1 parts (codes, d, m)."""
    u, d, m = _q4_k_fields(np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q4_k"]), rows)
    return pack_codes(u)[0], d, m


def as_q5_1(blocks: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Q5_K rows (R, bytes) -> Q5_1 parts (codes, d, m, high): high bit i of a block's word is weight i's fifth."""
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q5_k"])
    u, d, m = _q4_k_fields(b, rows)
    fifth = ((b[:, 16:48][:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1).reshape(rows, -1)
    nibbles, high = pack_codes(u + 16 * fifth, fifth=True)
    return nibbles, d, m, high


def as_int8_groups(blocks: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q6_K rows (R, bytes) -> 8-bit groups of 16: codes u (R, n) uint8 (0..63), scales s and zero points 32,
    (R, n/16) float32 each."""
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q6_k"])
    ql, qh = b[:, 0:128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
    low = np.stack([ql[..., :32] & 15, ql[..., 32:] & 15, ql[..., :32] >> 4, ql[..., 32:] >> 4], axis=2)
    top = np.stack([(qh >> shift) & 3 for shift in (0, 2, 4, 6)], axis=2)
    u = (low | (top << 4)).reshape(rows, -1)
    s = (_half(b[:, 208:210]) * b[:, 192:208].view(np.int8).astype(np.float32)).reshape(rows, -1)
    return np.ascontiguousarray(u), s, np.full(s.shape, 32, np.float32)


def _five_bits(b: np.ndarray) -> np.ndarray:
    """(n, 20) bytes qh (4) | qs (16) of Q5_0 or Q5_1 blocks -> codes 0..31, (n, 32) float32."""
    return unpack_codes(b[:, 4:20], b[:, 0:4].copy().view("<u4")).astype(np.float32)


def dequantize_q5_0(blocks: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q5_0"])
    w = _half(b[:, 0:2]) * (_five_bits(b[:, 2:22]) - np.float32(16.0))
    return w.reshape(*np.shape(blocks)[:-1], n)


def dequantize_q5_1(blocks: np.ndarray, n: int) -> np.ndarray:
    b = np.asarray(blocks, np.uint8).reshape(-1, BLOCK_BYTES["q5_1"])
    w = _half(b[:, 0:2]) * _five_bits(b[:, 4:24]) + _half(b[:, 2:4])
    return w.reshape(*np.shape(blocks)[:-1], n)


DEQUANTIZE = {"q4_k": dequantize_q4_k, "q5_k": dequantize_q5_k, "q6_k": dequantize_q6_k, "q5_0": dequantize_q5_0,
              "q5_1": dequantize_q5_1}
