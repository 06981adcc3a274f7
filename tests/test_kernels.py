"""The compiled kernels against their NumPy references (pocketgpt.kernels.reference, run in float64 where that
makes the reference independent of the kernels' float32 rounding): every layout's row decoder bit-identical to
dequantize(), every product, norm, activation and attention within a written-down float tolerance, on ragged
shapes, with one and with two threads; the fused decode step against the composed block; and a decode step of a
packed model that never reaches a reference.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close

from pocketgpt import kernels
from pocketgpt.config import PRESETS
from pocketgpt.formats import GGMLBlocks, Packed
from pocketgpt.formats.floats import quantize_floats
from pocketgpt.formats.ggml import BLOCK_BYTES, BLOCK_WEIGHTS, quantize_blocks
from pocketgpt.formats.groups import quantize_groups
from pocketgpt.kernels import dispatch, interleaved, layouts, ops, products, reference
from pocketgpt.model import GPT, packed_copy
from pocketgpt.model.kvcache import KVCache, QuantizedKVCache

# float32 sums of n products in any order differ from the exact sum by at most about n * 2^-24 times the sum of
# |products|; the kernels' blocked sums do far better, and 1e-5 of sum |x_j w_j| holds with room at n = 512.
PRODUCT_RTOL = 1e-5
OPS_RTOL = 2e-6  # norms, rotary embedding, activations: a few float32 roundings
EXP_RTOL = 5e-7  # the kernels' exp (a degree-6 polynomial after range reduction): about 4 float32 ulp
ATTENTION_RTOL = 1e-5  # a softmax-weighted sum over at most a few hundred positions
R, N_IN, N_KQ = 37, 256, 512  # a ragged row count; widths of whole blocks (K-quants: 256 weights a block)
HALVES = {"q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208], "q5_0": [0], "q5_1": [0, 2]}  # their float16 fields


def _kquant(kind: str, rng) -> GGMLBlocks:
    """Random K-quant or 5-bit blocks (pocketgpt reads them, it does not write them): any bytes, finite float16
    scales."""
    per_row = N_KQ // BLOCK_WEIGHTS[kind]
    blocks = rng.integers(0, 256, (R, per_row, BLOCK_BYTES[kind]), dtype=np.uint8)
    for offset in HALVES[kind]:
        blocks[..., offset:offset + 2] = rng.normal(0, 0.05, (R, per_row)).astype(np.float16).view(np.uint8) \
            .reshape(R, per_row, 2)
    return GGMLBlocks.from_blocks(kind, blocks.reshape(R, -1), (R, N_KQ))


def matrices() -> dict[str, np.ndarray | Packed]:
    """One (R, n) matrix of every layout the kernels read."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((R, N_IN)).astype(np.float32)
    out: dict = {"f32": w, "f16": quantize_floats(w, "f16"), "bf16": quantize_floats(w, "bf16")}
    out |= {kind: quantize_blocks(w, kind) for kind in ("q8_0", "q4_0", "q4_1", "mxfp4")}
    out |= {kind: _kquant(kind, rng) for kind in HALVES}
    for bits in (2, 3, 4, 8):
        for group in (32, 64, 128):
            for symmetric in (True, False):
                out[f"int{bits}-g{group}-{'sym' if symmetric else 'asym'}"] = quantize_groups(w, bits, group,
                                                                                            symmetric)
    return out


MATRICES = matrices()


def dense(w) -> np.ndarray:
    return w if isinstance(w, np.ndarray) else w.dequantize()


@pytest.mark.parametrize("name", list(MATRICES))
def test_every_layout_decodes_rows_bit_identical_to_dequantize(name):
    w = MATRICES[name]
    idx = np.array([[5, 0], [R - 1, 5], [17, 3]])  # any order, repeats, any shape
    got = kernels.embedding(w, idx)
    assert got.shape == (3, 2, w.shape[1]) and got.dtype == np.float32
    np.testing.assert_array_equal(got, dense(w)[idx])


def _product_bound(x, w) -> np.ndarray:
    return np.abs(x.astype(np.float64)) @ np.abs(dense(w).astype(np.float64)).T


@pytest.mark.parametrize("name", list(MATRICES))
@pytest.mark.parametrize("tokens", [1, 2, 3, 7, 40])  # matvec; groups of 4, 2, 1 or rows; tiles and BLAS
def test_products_from_packed_weights_equal_the_reference(name, tokens):
    w = MATRICES[name]
    rng = np.random.default_rng(tokens)
    x = rng.standard_normal((tokens, w.shape[1])).astype(np.float32)
    b = rng.standard_normal(w.shape[0]).astype(np.float32)
    rounded = kernels.rounds_activations(w)  # integer formats held interleaved meet int8 activations
    if rounded:
        codes, scales = reference.int8_activations(x)
        x = (codes.reshape(tokens, -1, 32) * scales[..., None].astype(np.float64)).reshape(x.shape)
    expected = reference.linear(x.astype(np.float64), w, b)  # dequantized to float64 by the reference
    x = x.astype(np.float32)  # exactly representable: codes times a float32 scale
    by_threads = {}
    for n in (1, 2):
        kernels.set_threads(n)
        try:
            by_threads[n] = kernels.linear(x, w, b)
        finally:
            kernels.set_threads(kernels.machine_threads())
        assert by_threads[n].shape == (tokens, w.shape[0]) and by_threads[n].dtype == np.float32
        err = np.abs(by_threads[n] - expected)
        assert np.all(err <= PRODUCT_RTOL * _product_bound(x, w) + 1e-6), (name, tokens, n, err.max())
    if rounded or tokens <= kernels.ROWS_UP_TO:  # each output one thread's sum, in one order whatever the count
        np.testing.assert_array_equal(by_threads[1], by_threads[2])


def test_activations_are_rounded_to_8_bits_as_the_reference_rounds_them():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 256)) * rng.uniform(0.01, 100, (5, 1))).astype(np.float32)
    x[2, 32:64] = 0.0  # a block of zeros: scale 0, codes 0
    x[3, 5] = 1e4  # one outlier owns its block's scale
    codes, scales, sums, halves = interleaved.quantized(x)
    ref_codes, ref_scales = reference.int8_activations(x)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(scales, ref_scales)
    np.testing.assert_array_equal(sums, ref_scales * codes.reshape(5, -1, 32).sum(-1).astype(np.float32))
    np.testing.assert_array_equal(halves, ref_scales.repeat(2, axis=1) * codes.reshape(5, -1, 16).sum(-1)
                                  .astype(np.float32))
    assert np.abs(codes).max() == 127 and not codes[2, 32:64].any()
    err = np.abs(codes.reshape(5, -1, 32) * scales[..., None] - x.reshape(5, -1, 32))
    assert np.all(err <= scales[..., None] * 0.5 * (1 + 1e-6))  # at most half a step of each block


INTERLEAVED = ["q4_0", "q4_1", "q8_0", "mxfp4", "q4_k", "q5_k", "q6_k", "q5_0", "q5_1", "int2-g32-asym",
               "int3-g64-sym", "int4-g128-asym", "int8-g32-sym"]


@pytest.mark.parametrize("kind", INTERLEAVED)
def test_integer_formats_run_interleaved_with_integer_dot_products(kind, int8_activations):
    w = MATRICES[kind]
    assert kernels.layout(w).interleaved and kernels.rounds_activations(w)


@pytest.mark.parametrize("kind", INTERLEAVED)
def test_integer_dot_products_do_not_depend_on_how_many_tokens_share_a_pass(kind, int8_activations):
    """A speculative verification of k tokens must give each token the logits a decode step gives it: passes of 4, 2
    and 1 tokens, and a prompt longer than one sweep of the groups, against the single-token kernel."""
    w = MATRICES[kind]
    x = np.random.default_rng(4).standard_normal((interleaved.SWEEP + 7, w.shape[1])).astype(np.float32)
    alone = np.stack([kernels.linear(x[t], w) for t in range(len(x))])  # the matvec kernel
    for tokens in (7, 3, len(x)):
        np.testing.assert_array_equal(kernels.linear(x[:tokens], w), alone[:tokens])


@pytest.mark.parametrize("kind", ["q4_0", "q4_1", "q8_0"])
def test_the_float_kernels_of_llama_cpp_blocks_equal_the_reference_without_integer_dots(kind, float_activations):
    """Where integer dot products do not run (turned off, no AVX2, or POCKETGPT_INT8_DOT=0), the float kernels take
    the activations as they are: the matvec, the groups of four and two tokens, and the fused decode step's."""
    w = MATRICES[kind]
    for tokens in (1, 3, 7):
        assert not kernels.rounds_activations(w)
        x = np.random.default_rng(tokens).standard_normal((tokens, N_IN)).astype(np.float32)
        err = np.abs(kernels.linear(x, w) - reference.linear(x.astype(np.float64), w))
        assert np.all(err <= PRODUCT_RTOL * _product_bound(x, w) + 1e-6), (kind, tokens, err.max())


def test_a_product_keeps_leading_axes_and_float64_runs_the_reference():
    w = MATRICES["q4_0"]
    x = np.random.default_rng(1).standard_normal((2, 3, N_IN))
    got = kernels.linear(x, w)
    assert got.shape == (2, 3, R) and got.dtype == np.float64
    np.testing.assert_allclose(got, x @ w.dequantize(np.float64).T, rtol=1e-12, atol=1e-12)


def test_the_kernels_exp_is_accurate_over_the_float32_range():
    x = np.concatenate([np.linspace(-87, 88, 100_001), [0.0, -1e-8, 1e-8, -200.0, 200.0]]).astype(np.float32)
    got = ops.exp(x)
    expected = np.exp(np.clip(x.astype(np.float64), -87, 88))  # clamped where e^x leaves the normal range
    assert np.all(np.abs(got - expected) <= EXP_RTOL * expected)


def _close(got, expected, rtol, what):
    assert got.dtype == np.float32 and got.shape == expected.shape, what
    assert_close(got, expected, rtol, what)


def test_norms_rotary_embedding_and_activations_equal_the_reference():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 77)).astype(np.float32) * 3
    w, b = (rng.standard_normal(77).astype(np.float32) for _ in range(2))
    wide = lambda a: a.astype(np.float64)  # noqa: E731
    _close(kernels.rmsnorm(x, w, 1e-5), reference.rmsnorm(wide(x), wide(w), 1e-5), OPS_RTOL, "rmsnorm")
    _close(kernels.layernorm(x, w, b, 1e-5), reference.layernorm(wide(x), wide(w), wide(b), 1e-5), OPS_RTOL,
           "layernorm")
    _close(kernels.rmsnorm(x, None, 1e-6), reference.rmsnorm(wide(x), 1.0, 1e-6), OPS_RTOL, "rmsnorm, no gain")
    h = rng.standard_normal((2, 3, 2 * 45)).astype(np.float32) * 4  # [gate | up], an odd width F
    _close(kernels.swiglu(h), reference.swiglu(wide(h)), OPS_RTOL, "swiglu")
    _close(kernels.gelu(x), reference.gelu(wide(x)), OPS_RTOL, "gelu")
    q = rng.standard_normal((2, 4, 3, 16)).astype(np.float32)  # (B, T, heads, hs)
    angles = rng.uniform(0, 50, (4, 8))
    per_sequence = angles[None] + np.array([0.0, 1.0])[:, None, None]  # (B, T, hs/2)
    for cos, sin in ((np.cos(angles), np.sin(angles)), (np.cos(per_sequence), np.sin(per_sequence))):
        c, s = cos.astype(np.float32), sin.astype(np.float32)
        expected = reference.rope(wide(q), c[None] if c.ndim == 2 else c, s[None] if s.ndim == 2 else s)
        _close(kernels.rope(q, c, s), expected, OPS_RTOL, "rope")


@pytest.mark.parametrize("T", [1, 3, kernels.ATTENTION_UP_TO + 1, 2 * dispatch.PROMPT_BLOCK + 5])
def test_attention_over_a_slot_cache_equals_the_reference(T):
    """Grouped-query attention (6 query heads over 2 key/value heads), sequences in permuted cache rows, each at
    its own position; with one and with two threads. A prompt of more than ATTENTION_UP_TO tokens goes block by
    block of queries (the last block ragged)."""
    rng = np.random.default_rng(T)
    B, nh, nkv, hs, S = 3, 6, 2, 32, 40 + T
    q = rng.standard_normal((B, T, nh, hs)).astype(np.float32)
    k, v = (rng.standard_normal((5, nkv, S, hs)).astype(np.float32) for _ in range(2))
    rows, first = np.array([4, 0, 2]), np.array([0, 17, 40])
    expected = reference.attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), rows, first)
    for n in (1, 2):
        kernels.set_threads(n)
        try:
            _close(kernels.attention(q, k, v, rows, first), expected, ATTENTION_RTOL, f"attention, {n} threads")
        finally:
            kernels.set_threads(kernels.machine_threads())


@pytest.mark.parametrize("T", [1, 5, dispatch.PROMPT_BLOCK + 3])
def test_attention_over_the_4_bit_cache_reads_it_as_stored(T):
    """The compiled kernel reads codes, scales and the float tail in place; the reference expands them first
    (pocketgpt.formats.kv4.expand), as a prompt longer than ATTENTION_UP_TO does. The positions span complete
    groups and a partial one."""
    config = PRESETS["smollm2-135m"].replace(n_layer=1, n_embd=96, n_head=6, n_kv_head=2, block_size=30 + T)
    rng = np.random.default_rng(T)
    cache = QuantizedKVCache(config, batch=2, group=8)
    start = max(30 - T, 11)
    for pos in (0, start):
        n = start if pos == 0 else T
        k, v = (rng.standard_normal((2, 2, n, 16)).astype(np.float32) for _ in range(2))
        cache.write(0, pos, k, v)
    q = rng.standard_normal((2, T, 6, 16)).astype(np.float32)
    arrays = cache.layer(0)
    expected = reference.attention_q4(q.astype(np.float64), *arrays, 8, np.full(2, start))
    _close(kernels.attention_q4(q, arrays, 8, start), expected, ATTENTION_RTOL, "attention_q4")


def _block_weights(config, fmt: str, rng) -> kernels.BlockWeights:
    model = GPT(config, seed=int(rng.integers(1000)))
    for p in model.params.values():  # norms and biases away from ones and zeros
        if p.ndim == 1:
            p += rng.normal(0, 0.3, p.shape).astype(p.dtype)
    if fmt != "f32":
        model = packed_copy(model, lambda w: quantize_blocks(w, fmt))
    return model.block_weights(0)


def rounding_reference(monkeypatch) -> None:
    """reference.linear rounding its input (its float32 value) to 8 bits per block as the integer-dot kernels do."""
    linear = reference.linear

    def rounded(x, w, b=None):
        codes, scales = reference.int8_activations(x.astype(np.float32))
        x = (codes.reshape(*x.shape[:-1], -1, 32) * scales[..., None].astype(x.dtype)).reshape(x.shape)
        return linear(x, w, b)

    monkeypatch.setattr(reference, "linear", rounded)


@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("family,fmt", [("llama", "q4_0"), ("llama", "q4_1"), ("llama", "q8_0"), ("llama", "f32"),
                                        ("gpt2", "q4_0"), ("gpt2", "f32")])
def test_the_fused_decode_step_equals_the_reference_block(family, fmt, int8, monkeypatch):
    """One token of one sequence in the fused step (all in one compiled call) against the composed block run in
    float64 (every operation its NumPy reference), over the same cache; where the kernels round activations to 8
    bits (kernels.rounds_activations), the reference rounds each product's float32 input the same way."""
    config = (PRESETS["smollm2-135m"].replace(n_layer=1, n_embd=128, n_head=4, n_kv_head=2, ffn_size=96,
                                              block_size=16, vocab_size=32) if family == "llama" else
              PRESETS["gpt2"].replace(n_layer=1, n_embd=64, n_head=2, block_size=16, vocab_size=32))
    rng = np.random.default_rng(len(family + fmt))
    w = _block_weights(config, fmt, rng)
    if int8 and not interleaved.HOST_AVX2:
        pytest.skip("the integer-dot kernels run on AVX2 only")
    monkeypatch.setattr(layouts, "_int8", int8)
    if kernels.rounds_activations(w.c_attn):
        rounding_reference(monkeypatch)
    pos, S, hs = 9, 16, config.head_size
    k, v = (rng.standard_normal((1, config.n_kv, S, hs)).astype(np.float32) for _ in range(2))
    x = rng.standard_normal((1, 1, config.n_embd)).astype(np.float32)
    rope = None
    if family == "llama":
        angles = pos * config.rope_theta ** (-np.arange(hs // 2) / (hs // 2))
        rope = (np.cos(angles)[None].astype(np.float32), np.sin(angles)[None].astype(np.float32))
    fused_kv = kernels.FloatKV(k.copy(), v.copy(), None, pos)
    assert kernels.blocks._fusable(x, w, fused_kv)
    got = kernels.block(x, w, rope, fused_kv)
    wide = kernels.BlockWeights(w.norm, w.eps, w.activation, w.n_head, w.n_kv, w.head_size,
                                *(tuple(a.astype(np.float64) for a in ln) for ln in (w.ln_1, w.ln_2)),
                                *(dense(m).astype(np.float64) for m in w.matrices),
                                tuple(None if b is None else b.astype(np.float64) for b in w.biases))
    wide_kv = kernels.FloatKV(k.astype(np.float64), v.astype(np.float64), None, pos)
    wide_rope = None if rope is None else tuple(a.astype(np.float64) for a in rope)
    expected = kernels.block(x.astype(np.float64), wide, wide_rope, wide_kv)
    _close(got, expected, PRODUCT_RTOL, "fused step")
    _close(fused_kv.k, wide_kv.k, 1e-6, "the new key in the cache")
    _close(fused_kv.v, wide_kv.v, 1e-6, "the new value in the cache")


@pytest.mark.parametrize("int8", [True, False])
@pytest.mark.parametrize("fmt", ["q4_1", "f32"])
def test_the_fused_step_of_a_few_tokens_gives_each_the_logits_of_its_own_decode_step(fmt, int8, monkeypatch):
    """A speculative block of T tokens verified in one fused step: each token's output and its keys and values are
    bit for bit those of T decode steps taken one after another, and the block equals the float64 reference block
    (with the same rounded activations where the kernels round them)."""
    if int8 and not interleaved.HOST_AVX2:
        pytest.skip("the integer-dot kernels run on AVX2 only")
    monkeypatch.setattr(layouts, "_int8", int8)
    config = PRESETS["smollm2-135m"].replace(n_layer=1, n_embd=128, n_head=4, n_kv_head=2, ffn_size=96,
                                             block_size=24, vocab_size=32)
    rng = np.random.default_rng(7)
    w = _block_weights(config, fmt, rng)
    pos, T, hs = 6, 5, config.head_size
    k, v = (rng.standard_normal((1, config.n_kv, config.block_size, hs)).astype(np.float32) for _ in range(2))
    x = rng.standard_normal((1, T, config.n_embd)).astype(np.float32)
    angles = (pos + np.arange(T))[:, None] * config.rope_theta ** (-np.arange(hs // 2) / (hs // 2))
    rope = (np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32))
    together = kernels.FloatKV(k.copy(), v.copy(), None, pos)
    assert kernels.blocks._fusable(x, w, together)
    got = kernels.block(x, w, rope, together)
    apart = kernels.FloatKV(k.copy(), v.copy(), None, pos)
    for t in range(T):
        apart = kernels.FloatKV(apart.k, apart.v, None, pos + t)
        one = kernels.block(x[:, t:t + 1], w, (rope[0][t:t + 1], rope[1][t:t + 1]), apart)
        np.testing.assert_array_equal(got[:, t], one[:, 0])
    np.testing.assert_array_equal(together.k, apart.k)
    np.testing.assert_array_equal(together.v, apart.v)
    if kernels.rounds_activations(w.c_attn):
        rounding_reference(monkeypatch)
    wide = kernels.BlockWeights(w.norm, w.eps, w.activation, w.n_head, w.n_kv, w.head_size,
                                *(tuple(a.astype(np.float64) for a in ln) for ln in (w.ln_1, w.ln_2)),
                                *(dense(m).astype(np.float64) for m in w.matrices), (None,) * 4)
    wide_kv = kernels.FloatKV(k.astype(np.float64), v.astype(np.float64), None, pos)
    expected = kernels.block(x.astype(np.float64), wide, tuple(a.astype(np.float64) for a in rope), wide_kv)
    _close(got, expected, PRODUCT_RTOL, "fused step of a few tokens")


@pytest.mark.parametrize("fmt", ["f32", "q4_0", "q4_1", "q8_0", "int4"])
def test_a_decode_step_runs_compiled_kernels_only(fmt, monkeypatch):
    """Model code calls one function per operation and the kernels layer decides: for float32 activations, a
    prompt and decode steps never reach a NumPy reference (one that did would raise here)."""
    config = PRESETS["smollm2-135m"].replace(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_size=64,
                                             block_size=32, vocab_size=64)
    model = GPT(config, seed=3)
    if fmt == "int4":
        model = packed_copy(model, lambda w: quantize_groups(w, 4, 32))
    elif fmt != "f32":
        model = packed_copy(model, lambda w: quantize_blocks(w, fmt))
    full = model.forward(np.arange(12)[None])[0][0]  # the whole sequence at once (a prompt)
    for name in ("linear", "rmsnorm", "layernorm", "rope", "swiglu", "gelu", "attention", "attention_q4"):
        monkeypatch.setattr(reference, name, _refuse(name))
    cache = KVCache(config, batch=1, dtype=np.float32)
    logits = [model.forward_cached(np.arange(8)[None], cache)[0, -1]]
    logits += [model.forward_cached(np.array([[t]]), cache)[0, -1] for t in range(8, 12)]
    _close(np.array(logits), full[7:12].astype(np.float32), PRODUCT_RTOL, "cached steps against the full pass")


def _refuse(name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"reference.{name} ran")
    return refuse


def test_two_processes_saving_variants_of_one_kernel_at_once_keep_both(tmp_path, monkeypatch):
    """numba's disk cache numbers a kernel's variants in an index that each save reads, extends and writes back; two
    saves at once (two servers compiling on a cold cache) must not both take number 1, or a later process runs one
    variant's code on the other's arguments. Two savers with their own index objects, each pausing between reading
    the index and writing it back (as a slow process would), must leave both entries, each with its own data."""
    from numba.core import caching

    load_index = caching.IndexDataCacheFile._load_index

    def slow_load_index(self):
        overloads = load_index(self)
        time.sleep(0.2)
        return overloads

    monkeypatch.setattr(caching.IndexDataCacheFile, "_load_index", slow_load_index)
    savers = [caching.IndexDataCacheFile(str(tmp_path), "kernel", "stamp") for _ in range(2)]
    threads = [threading.Thread(target=saver.save, args=(key, data))
               for saver, key, data in zip(savers, ("variant a", "variant b"), (b"code of a", b"code of b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = caching.IndexDataCacheFile(str(tmp_path), "kernel", "stamp")
    assert reader.load("variant a") == b"code of a" and reader.load("variant b") == b"code of b"


AVX2_PRODUCTS = """
import numpy as np
from pocketgpt.kernels import interleaved
interleaved.HOST_VNNI = False  # before any kernel compiles (the test gives this process its own cache)
from pocketgpt import kernels
from pocketgpt.formats.ggml import quantize_blocks
from pocketgpt.formats.groups import quantize_groups
from pocketgpt.kernels import reference
from test_kernels import MATRICES
rng = np.random.default_rng(5)
w = rng.standard_normal((37, 256)).astype(np.float32)
for m in (quantize_blocks(w, "q8_0"), quantize_blocks(w, "q4_1"), quantize_blocks(w, "mxfp4"),
          quantize_groups(w, 8, 64, False), quantize_groups(w, 3, 32, True), MATRICES["q6_k"]):
    assert kernels.layout(m).interleaved
    x = rng.standard_normal((6, m.shape[1])).astype(np.float32)
    codes, scales = reference.int8_activations(x)
    xr = (codes.reshape(6, -1, 32) * scales[..., None].astype(np.float64)).reshape(x.shape)
    err = np.abs(kernels.linear(x, m) - xr @ m.dequantize(np.float64).T)
    assert np.all(err <= 1e-5 * (np.abs(xr) @ np.abs(m.dequantize(np.float64)).T) + 1e-6), err.max()
print("ok")
"""


@pytest.mark.skipif(not interleaved.HOST_AVX2, reason="the integer-dot kernels run on AVX2 only")
def test_the_interleaved_products_without_vnni_equal_the_reference(tmp_path):
    """Where the machine has AVX2 but not AVX-512 VNNI, each block's integer sums are vpmaddubsw pairs (8-bit codes
    split in two nibbles, whose products would overflow its 16-bit sums): the same products, checked here on any
    machine in a process made to take that path."""
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).parent)}
    run = subprocess.run([sys.executable, "-c", AVX2_PRODUCTS], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


CACHED_CALLER = """
import numpy as np
from numba import njit, prange

@njit(cache=True, parallel=True)
def total(a):
    s = 0.0
    for i in prange(a.size):
        s += a[i]
    return s

@njit(cache=True)
def caller(a):
    return total(a) + 1.0
"""


def test_a_cached_kernel_calling_a_parallel_kernel_loaded_from_the_cache_runs_in_the_next_process(tmp_path):
    """numba does not pass a cached parallel kernel's start-up on to a caller compiled later in the same process;
    without the threading layer started at import (pocketgpt.kernels), a third process that loads that caller first
    crashed. Three processes on one empty cache: the parallel kernel compiled; the caller compiled with the kernel
    loaded from the cache; the caller loaded from the cache."""
    import subprocess
    import sys

    (tmp_path / "cached_caller.py").write_text(CACHED_CALLER)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(tmp_path)}
    for call in ("total", "caller", "caller"):
        run = subprocess.run([sys.executable, "-c", "import pocketgpt.kernels, numpy, cached_caller; "
                              f"print(cached_caller.{call}(numpy.ones(100)))"], env=env, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, (call, run.returncode, run.stderr[-2000:])
        assert float(run.stdout) == (100.0 if call == "total" else 101.0)


def test_every_compiled_kernel_states_its_fastmath_and_error_model():
    """numba compiles a kernel that leaves fastmath or error_model unset with its caller's, when a caller compiles it,
    and caches that variant under the key it would have had alone: a kernel that must stay exact (the integer dots,
    whose results must not depend on the token count) would later run, from the cache, with fastmath. So every
    kernel of the package sets both."""
    from numba.core.registry import CPUDispatcher

    from pocketgpt.kernels import decoders, dispatch, step, training

    found = 0
    for module in (decoders, dispatch, interleaved, ops, products, step, training):
        for name, obj in vars(module).items():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == module.__name__:
                found += 1
                inline = obj.targetoptions.get("inline", "never") == "always"  # compiled as part of its caller
                assert inline or {"fastmath", "error_model"} <= obj.targetoptions.keys(), f"{module.__name__}.{name}"
    assert found > 40
