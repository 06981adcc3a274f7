"""Integer group formats and MXFP4: exact packing, half-step rounding, MXFP4 against ml_dtypes."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from pocketgpt.formats.groups import pack_bits, quantize_groups, unpack_bits
from pocketgpt.formats.mxfp4 import BLOCK_BYTES, dequantize_mxfp4, fp4_codes, quantize_mxfp4

rng = np.random.default_rng(0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack_is_exact(bits):
    codes = rng.integers(0, 2**bits, (7, 96)).astype(np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.shape == (7, 96 * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, 96), codes)


def test_four_bit_codes_are_nibbles_low_first():
    assert pack_bits(np.array([[0x1, 0x2, 0xF, 0x0]], np.uint8), 4).tolist() == [[0x21, 0x0F]]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_round_to_nearest_error_is_at_most_half_a_step(bits, symmetric, group_size):
    w = rng.standard_normal((6, 256)).astype(np.float32) * 0.1
    w[0, :group_size] = 0.0  # a zero group
    q = quantize_groups(w, bits, group_size, symmetric)
    step = q.scales.astype(np.float32).repeat(group_size, axis=1)
    err = np.abs(q.dequantize() - w)
    assert np.all(err <= 0.5 * step * (1 + 1e-6) + 1e-12)
    assert not q.dequantize()[0, :group_size].any()
    assert q.nbytes == 6 * 256 * bits // 8 + 6 * 256 // group_size * (2 if symmetric else 3)


def test_four_bit_group_32_is_under_016_of_float32_bytes():
    q = quantize_groups(rng.standard_normal((128, 512)).astype(np.float32), 4, 32, symmetric=True)
    assert q.nbytes / (128 * 512 * 4) <= 0.16


def test_bad_formats():
    with pytest.raises(ValueError, match="bits must be"):
        quantize_groups(np.zeros((2, 64)), bits=5)
    with pytest.raises(ValueError, match="does not divide"):
        quantize_groups(np.zeros((2, 48)), group_size=32)


def test_fp4_codes_match_ml_dtypes_on_every_rounding_case():
    v = np.concatenate([np.linspace(-7, 7, 2801, dtype=np.float32),
                        np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0, 100, -100, -0.0], np.float32)])
    np.testing.assert_array_equal(fp4_codes(v), v.astype(ml_dtypes.float4_e2m1fn).view(np.uint8))


def test_mxfp4_matches_ml_dtypes_scales_and_elements():
    w = (rng.standard_normal((8, 128)) * np.exp(rng.uniform(-20, 20, (8, 1)))).astype(np.float32)
    w[0, :32] = 0.0
    blocks = quantize_mxfp4(w).reshape(-1, BLOCK_BYTES)
    b = w.reshape(-1, 32)
    scale = np.ldexp(np.float32(1), blocks[:, 0].astype(np.int32) - 127)
    nonzero = np.abs(b).max(axis=1) > 0
    ratio = np.abs(b).max(axis=1)[nonzero] / scale[nonzero]
    assert np.all((ratio >= 4) & (ratio < 8))  # largest element lands in [4, 8) before rounding
    np.testing.assert_array_equal(blocks[:, 0], scale.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8))
    expected = (b / scale[:, None]).astype(ml_dtypes.float4_e2m1fn).astype(np.float32) * scale[:, None]
    np.testing.assert_array_equal(dequantize_mxfp4(quantize_mxfp4(w), 128).reshape(-1, 32), expected)


@pytest.mark.parametrize("bits,top,table,offset,halves", [
    (8, False, False, 128, False), (8, False, False, -1, False), (8, False, False, 32, True),
    (4, False, False, 8, False), (4, False, False, -1, False), (4, False, False, -2, False),
    (4, True, False, 16, False), (4, True, False, -1, False), (4, False, True, 12, False),
    (2, False, False, -2, False), (2, True, False, 4, False), (2, True, False, -2, False)])
def test_rows_interleaved_for_the_integer_kernels_unpack_to_what_was_packed(bits, top, table, offset, halves):
    """pack() then unpack() gives back the codes, scales (float16 or float32) and minima or zero points exactly, for
    every kind of interleaved layout, on a ragged number of rows (the last group padded)."""
    from pocketgpt.formats.interleaved import MINIMUM, ZERO, pack, spec, unpack

    rng = np.random.default_rng(bits + 4 * top + 8 * (offset + 2))
    R, n = 37, 96
    u = rng.integers(0, 2 ** (bits + top) if not table else 16, (R, n)).astype(np.uint8)
    d = rng.uniform(0.01, 1, (R, n // (16 if halves else 32))).astype(np.float32)
    if offset == ZERO:
        m = rng.integers(0, 2 ** (bits + top), (R, n // 32)).astype(np.uint8)
    elif offset == MINIMUM:
        m = rng.normal(0, 1, (R, n // 32)).astype(np.float16).astype(np.float32)  # held as float16
    else:
        m = None
    parts = pack(u, d, spec(bits, top, table, offset, halves), m)
    assert parts[0].shape[0] == 3 and parts[1].dtype == np.float32  # 48 rows held; these d are not float16 values
    got_u, got_d, got_m = unpack(parts)
    np.testing.assert_array_equal(got_u, u)
    np.testing.assert_array_equal(got_d, d)
    if m is None:
        assert got_m is None
    else:
        assert parts[2].dtype == (np.uint8 if offset == ZERO else np.uint16)
        np.testing.assert_array_equal(got_m, m)
