"""Integer weight rows interleaved sixteen to a group: the in-memory layout that integer dot-product kernels read
(pocketgpt.kernels.interleaved), with its packing and unpacking. llama.cpp's common blocks are held in it
(pocketgpt.formats.ggml), and pocketgpt's groups and the K-quants are repacked into it for the kernels. It is never
written to a file: checkpoints and GGUF files hold each format's own stored blocks.

For a matrix of R rows and n = 32 b columns, u the unsigned code of a weight:
  codes  (G, b, 64 Q) uint8, G = ceil(R / 16) groups (the last padded with zero rows); group g's block k is Q
         "quads" of 64 bytes, and bytes 4 i .. 4 i + 3 of a quad belong to row 16 g + i (lane i). For codes of
         8 bits Q = 8: byte c of quad v holds code 4 v + c of the row's block;
         4 bits, Q = 4: byte c of quad j holds code 4 j + c in its low nibble, 16 + 4 j + c in its high one (the
                 nibbles of llama.cpp's Q4_0, Q4_1, Q5_0 and Q5_1 bytes j and j + 16 as they are stored);
         2 bits, Q = 2: bits 2 p, 2 p + 1 of byte c of quad j hold code 8 p + 4 j + c;
         a top bit (3- and 5-bit codes: 2 or 4 bits below it), Q + 1: bit v of byte c of the last quad is the top
         bit of code 4 v + c.
         Unpacked, each layout gives the same eight vectors: vector v holds codes 4 v .. 4 v + 3 of every lane's
         row, which the kernels meet with a token's activation codes 4 v .. 4 v + 3.
  scale  (G, b, 16) the block scales d of the 16 rows: float16 bits (uint16) where every scale is a float16
         (llama.cpp's blocks, pocketgpt's groups), float32 otherwise (the K-quants' products of two scales). With
         halves (Q6_K), a scale for each half block of 16 codes: (G, 2 b, 16), entry 2 k + h for half h of block k.
  offset one of: MINIMUM, (G, b, 16) like scale, w = d u + m (Q4_1, Q5_1, Q4_K, Q5_K); ZERO, (G, b, 16) uint8
         zero points, w = d (u - z) (pocketgpt's asymmetric groups); or a constant o, w = d (u - o) (Q4_0 8, Q5_0
         16, Q8_0 128 with its int8 codes held as q + 128, symmetric groups 2^(bits - 1), MXFP4 12, Q6_K 32), the
         array then an unread (1, 1, 1) float32.
  spec   int64 (2,): the layout's code (spec()) and R.
MXFP4's nibbles index MXFP4_TABLE, 2 v + 12 for its FP4 values v, with d half its power of two.
"""

from __future__ import annotations

import numpy as np

LANES = 16  # rows of a group: one 512-bit vector of 32-bit lanes
MINIMUM, ZERO = -1, -2  # offset kinds besides a constant o >= 0
MXFP4_TABLE = np.array([12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0], np.uint8)  # 2 v + 12


def spec(bits: int, top: bool = False, table: bool = False, offset: int = MINIMUM, halves: bool = False) -> int:
    """A layout in one integer: code bits below the top bit (2, 4 or 8), whether a top bit follows, whether codes
    index MXFP4's table, the offset (MINIMUM, ZERO, or the constant o), and whether each half block has its own
    scale."""
    if bits not in (2, 4, 8) or (top and bits == 8) or (table and (bits != 4 or top)) or offset < ZERO or \
            (halves and offset != max(offset, 0)):
        raise ValueError(f"no interleaved layout of {bits} bits (top bit {top}, table {table}, offset {offset}, "
                         f"halves {halves})")
    return bits | top << 4 | table << 5 | halves << 6 | (offset - ZERO) << 8


def fields(code: int) -> tuple[int, bool, bool, int, bool]:
    """spec() undone: (bits, top, table, offset, halves)."""
    return code & 15, bool(code >> 4 & 1), bool(code >> 5 & 1), (code >> 8) + ZERO, bool(code >> 6 & 1)


def quads(code: int) -> int:
    """Quads of 64 bytes per block of a group."""
    bits, top = fields(code)[:2]
    return {8: 8, 4: 4, 2: 2}[bits] + top


def _groups(a: np.ndarray) -> np.ndarray:
    """(R, ...) -> (G * 16, ...), zero rows appended."""
    pad = -a.shape[0] % LANES
    return a if pad == 0 else np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])


def _lanes(a: np.ndarray) -> np.ndarray:
    """Per-block values (R, b) -> (G, b, 16)."""
    g = _groups(a)
    return np.ascontiguousarray(g.reshape(-1, LANES, g.shape[1]).transpose(0, 2, 1))


def _rows(a: np.ndarray, R: int) -> np.ndarray:
    """(G, b, 16) -> the per-block values (R, b)."""
    return np.ascontiguousarray(a.transpose(0, 2, 1).reshape(-1, a.shape[1])[:R])


def _scales(s: np.ndarray) -> np.ndarray:
    """Per-block scales (R, b) -> (G, b, 16): float16 bits where every value is a float16, else float32."""
    s = np.asarray(s, np.float32)
    with np.errstate(over="ignore"):  # a scale beyond float16's range becomes inf, and the check below fails
        half = s.astype(np.float16)
    return _lanes(half.view(np.uint16) if np.array_equal(half.astype(np.float32), s) else s)


def _floats(a: np.ndarray, R: int) -> np.ndarray:
    """_scales() undone: (R, b) float32."""
    rows = _rows(a, R)
    return rows.view(np.float16).astype(np.float32) if rows.dtype == np.uint16 else rows


def _quads(planes: np.ndarray) -> np.ndarray:
    """Bytes (G * 16, b, Q, 4) of each row -> codes (G, b, 64 Q): quad j of a block holds the 16 rows' bytes j."""
    _, b, Q, _ = planes.shape
    return np.ascontiguousarray(planes.reshape(-1, LANES, b, Q, 4).transpose(0, 2, 3, 1, 4)).reshape(-1, b, 64 * Q)


def _planes(codes: np.ndarray, R: int) -> np.ndarray:
    """_quads() undone: codes (G, b, 64 Q) -> each row's bytes (R, b, Q, 4)."""
    G, b, width = codes.shape
    Q = width // 64
    return codes.reshape(G, b, Q, LANES, 4).transpose(0, 3, 1, 2, 4).reshape(G * LANES, b, Q, 4)[:R]


def pack(u: np.ndarray, d: np.ndarray, code: int, m: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Codes u (R, n) uint8 in the weights' order, block scales d (R, b) (with halves (R, 2 b)) and, by the offset
    of `code`, minima m (MINIMUM) or zero points m (ZERO) (R, b) -> the layout's arrays (codes, scale, offset,
    spec)."""
    bits, top, _, offset, _ = fields(code)
    R, n = u.shape
    b = n // 32
    blocks = _groups(np.asarray(u, np.uint8)).reshape(-1, b, 32)  # (G 16, b, 32)
    if bits == 8:
        planes = blocks.reshape(-1, b, 8, 4)
    elif bits == 4:
        low = blocks & 15
        planes = (low[..., :16] | low[..., 16:] << 4).reshape(-1, b, 4, 4)
    else:  # 2: code 8 p + 4 j + c at bits 2 p of byte c of quad j
        low = (blocks & 3).reshape(-1, b, 4, 2, 4)  # (.., p, j, c)
        planes = (low << (2 * np.arange(4, dtype=np.uint8))[:, None, None]).sum(axis=2, dtype=np.uint8)
    if top:  # bit v of byte c: the top bit of code 4 v + c
        high = ((blocks >> bits) & 1).reshape(-1, b, 8, 4)
        word = (high << np.arange(8, dtype=np.uint8)[:, None]).sum(axis=2, dtype=np.uint8)[:, :, None]
        planes = np.concatenate([planes, word], axis=2)
    return _quads(planes), _scales(d), _offsets(m, offset), np.array([code, R], np.int64)


def pack_nibbles(nibbles: np.ndarray, d: np.ndarray, code: int, m: np.ndarray | None = None) -> tuple:
    """pack() of 4-bit codes held as llama.cpp stores them (R, n / 2), byte j of a block holding codes j and j + 16:
    its quads are those bytes as they are."""
    R, b = nibbles.shape[0], nibbles.shape[1] // 16
    held = _quads(_groups(np.asarray(nibbles, np.uint8)).reshape(-1, b, 4, 4))
    return held, _scales(d), _offsets(m, fields(code)[3]), np.array([code, R], np.int64)


def _offsets(m: np.ndarray | None, offset: int) -> np.ndarray:
    if offset == MINIMUM:
        return _scales(m)
    if offset == ZERO:
        return _lanes(np.asarray(m, np.uint8))
    return np.zeros((1, 1, 1), np.float32)


def unpack(parts: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """pack() undone: (codes u (R, n) uint8, scales d (R, b) (halves: (R, 2 b)) float32, minima (R, b) float32 or
    zero points (R, b) uint8 or None)."""
    codes, scale, extra, (code, R) = parts
    bits, top, _, offset, _ = fields(int(code))
    planes = _planes(codes, int(R))  # (R, b, Q, 4)
    b = planes.shape[1]
    if bits == 8:
        u = planes[:, :, :8].reshape(R, b, 32)
    elif bits == 4:
        nib = planes[:, :, :4].reshape(R, b, 16)
        u = np.concatenate([nib & 15, nib >> 4], axis=2)
    else:
        two = planes[:, :, :2]  # (R, b, j, c)
        u = np.stack([(two >> (2 * p)) & 3 for p in range(4)], axis=2).reshape(R, b, 32)
    if top:
        word = planes[:, :, -1]  # (R, b, c)
        u = u | (np.stack([(word >> v) & 1 for v in range(8)], axis=2).reshape(R, b, 32) << bits)
    m = _floats(extra, int(R)) if offset == MINIMUM else _rows(extra, int(R)) if offset == ZERO else None
    return np.ascontiguousarray(u.reshape(R, -1)), _floats(scale, int(R)), m


def unpack_nibbles(parts: tuple) -> np.ndarray:
    """pack_nibbles() undone: the stored nibble bytes (R, n / 2) of a 4-bit layout without a top bit."""
    codes, R = parts[0], int(parts[3][1])
    planes = _planes(codes, R)
    return np.ascontiguousarray(planes.reshape(R, -1))
