"""Q8_0 and Q4_0 blocks: bit-identical to the `gguf` package's quantizer; exact round trips; error bounds."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from pocketgpt.formats.ggml import BLOCK_BYTES, DEQUANTIZE, QUANTIZE

TYPES = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}


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


@pytest.mark.parametrize("name,levels", [("q8_0", 127), ("q4_0", 8)])
def test_round_to_nearest_error_is_at_most_half_a_step(name, levels):
    w = np.random.default_rng(2).standard_normal((16, 128)).astype(np.float32)
    blocks = w.reshape(-1, 32)
    back = DEQUANTIZE[name](QUANTIZE[name](w), 128).reshape(-1, 32)
    step = np.abs(blocks).max(axis=1, keepdims=True) / levels  # |d| of each block
    err = np.abs(back - blocks)
    slack = step * levels * 2.0**-11 + 1e-7  # d is stored as float16 (relative error 2^-11)
    inside = np.ones_like(blocks, bool)
    if name == "q4_0":  # levels -8..7 with d = m / -8: values past 7.5 steps opposite to m clip to 7
        m = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
        inside = blocks / (m / -8) <= 7.5
        assert np.all(err <= step + slack)
    assert np.all(err[inside] <= (step * 0.5 + slack).repeat(32, axis=1)[inside])


def test_rows_must_split_into_blocks():
    with pytest.raises(ValueError, match="blocks of 32"):
        QUANTIZE["q8_0"](np.zeros((2, 40), np.float32))
