"""llama.cpp's blocks: Q8_0, Q4_0 and Q4_1 bit-identical to the `gguf` package's quantizer; every format's
dequantization (the K-quants included) bit-identical to the gguf package's; exact round trips; error bounds."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from pocketgpt.formats.ggml import BLOCK_BYTES, BLOCK_WEIGHTS, DEQUANTIZE, QUANTIZE, GGMLBlocks

TYPES = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0, "q4_1": GGMLQuantizationType.Q4_1}
ALL_TYPES = {**TYPES, "mxfp4": GGMLQuantizationType.MXFP4, "q4_k": GGMLQuantizationType.Q4_K,
             "q5_k": GGMLQuantizationType.Q5_K, "q6_k": GGMLQuantizationType.Q6_K, "q5_0": GGMLQuantizationType.Q5_0,
             "q5_1": GGMLQuantizationType.Q5_1}
HALVES = {"q8_0": [0], "q4_0": [0], "q4_1": [0, 2], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208], "mxfp4": [],
          "q5_0": [0], "q5_1": [0, 2]}


def hard_cases() -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    w[0] = 0.0  # all-zero blocks
    w[1] = np.round(w[1] * 8) / 8  # many values at exact halves of a step
    w[2, :32] = np.linspace(-1, 1, 32)  # the extreme value both negative and positive
    w[3] *= 1e-30  # tiny scales (float16 underflow)
    w[4] *= 1e4  # large scales
    w[5, 7] = 50.0  # one outlier per block
    return w


@pytest.mark.parametrize("name", list(TYPES))
def test_bit_identical_to_gguf_quantizer(name):
    rng = np.random.default_rng(1)
    for w in (hard_cases(), (rng.standard_normal((32, 256)) * rng.uniform(0.01, 3)).astype(np.float32)):
        ours = QUANTIZE[name](w)
        np.testing.assert_array_equal(ours, quantize(w, TYPES[name]))
        assert ours.shape == (w.shape[0], w.shape[1] // 32 * BLOCK_BYTES[name])


@pytest.mark.parametrize("name", list(TYPES))
def test_dequantize_then_quantize_is_exact(name):
    blocks = QUANTIZE[name](hard_cases())
    again = QUANTIZE[name](DEQUANTIZE[name](blocks, 64))
    np.testing.assert_array_equal(DEQUANTIZE[name](again, 64), DEQUANTIZE[name](blocks, 64))


@pytest.mark.parametrize("name,levels", [("q8_0", 127), ("q4_0", 8), ("q4_1", 7.5)])
def test_round_to_nearest_error_is_at_most_half_a_step(name, levels):
    w = np.random.default_rng(2).standard_normal((16, 128)).astype(np.float32)
    blocks = w.reshape(-1, 32)
    back = DEQUANTIZE[name](QUANTIZE[name](w), 128).reshape(-1, 32)
    step = np.abs(blocks).max(axis=1, keepdims=True) / levels  # |d| of each block
    if name == "q4_1":  # 15 steps from the block's minimum to its maximum
        step = (blocks.max(axis=1, keepdims=True) - blocks.min(axis=1, keepdims=True)) / 15
    err = np.abs(back - blocks)
    slack = step * levels * 2.0**-11 + 1e-7  # d is stored as float16 (relative error 2^-11)
    if name == "q4_1":  # d times codes up to 15, and the minimum, each rounded to float16
        slack = (15 * step + np.abs(blocks.min(axis=1, keepdims=True))) * 2.0**-11 + 1e-7
    inside = np.ones_like(blocks, bool)
    if name == "q4_0":  # levels -8..7 with d = m / -8: values past 7.5 steps opposite to m clip to 7
        m = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
        inside = blocks / (m / -8) <= 7.5
        assert np.all(err <= step + slack)
    assert np.all(err[inside] <= (step * 0.5 + slack).repeat(32, axis=1)[inside])


@pytest.mark.parametrize("name", list(ALL_TYPES))
def test_dequantization_is_bit_identical_to_gguf(name):
    """Random bytes are valid blocks (once their float16 fields hold finite values): every bit pattern of the
    codes, scales and mins is read as ggml reads it."""
    rng = np.random.default_rng(3)
    rows, per_row = 6, 2
    blocks = rng.integers(0, 256, (rows, per_row, BLOCK_BYTES[name]), dtype=np.uint8)
    for offset in HALVES[name]:  # finite float16 scales of a plausible size
        blocks[..., offset:offset + 2] = rng.normal(0, 0.05, (rows, per_row)).astype(np.float16).view(np.uint8) \
            .reshape(rows, per_row, 2)
    if name == "mxfp4":
        blocks[..., 0] = rng.integers(110, 140, (rows, per_row))  # scales 2^-17 .. 2^12
    blocks = blocks.reshape(rows, -1)
    n = per_row * BLOCK_WEIGHTS[name]
    ours = DEQUANTIZE[name](blocks, n)
    theirs = dequantize(blocks, ALL_TYPES[name])
    assert ours.shape == theirs.shape == (rows, n) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)
    held = GGMLBlocks.from_blocks(name, blocks, (rows, n))  # interleaved (or as stored) in memory
    np.testing.assert_array_equal(held.blocks, blocks)  # and rebuilt byte for byte
    np.testing.assert_array_equal(held.dequantize(), theirs)


@pytest.mark.parametrize("name", list(ALL_TYPES))
def test_rows_taken_and_stacked_keep_the_stored_blocks(name):
    """take() and stack_rows() of matrices held in memory (interleaved sixteen rows to a group: whole groups are
    stacked as held, ragged ones through the split form) give the blocks that the stored bytes' rows give."""
    from pocketgpt.formats import stack_rows

    rng = np.random.default_rng(4)
    per_row = 2
    n = per_row * BLOCK_WEIGHTS[name]
    stored = []
    for rows in (32, 16, 5):
        blocks = rng.integers(0, 256, (rows, per_row, BLOCK_BYTES[name]), dtype=np.uint8)
        for offset in HALVES[name]:
            blocks[..., offset:offset + 2] = rng.normal(0, 0.05, (rows, per_row)).astype(np.float16) \
                .view(np.uint8).reshape(rows, per_row, 2)
        stored.append(blocks.reshape(rows, -1))
    held = [GGMLBlocks.from_blocks(name, b, (len(b), n)) for b in stored]
    for parts in (held[:2], held, held[::-1]):  # whole groups; a ragged last part; a ragged first part
        np.testing.assert_array_equal(stack_rows(parts).blocks, np.concatenate([p.blocks for p in parts]))
    order = rng.permutation(32)[:20]
    np.testing.assert_array_equal(held[0].take(order).blocks, stored[0][order])


def test_rows_must_split_into_blocks():
    with pytest.raises(ValueError, match="blocks of 32"):
        QUANTIZE["q8_0"](np.zeros((2, 40), np.float32))
