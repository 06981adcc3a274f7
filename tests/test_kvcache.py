"""The 4-bit KV cache: same interface as the float cache, close logits, a quarter of the bytes."""

from __future__ import annotations

import numpy as np
import pytest

from pocketgpt.config import PRESETS
from pocketgpt.model import GPT, KVCache, QuantizedKVCache


def decode(model, tokens, cache, prefill):
    out = [model.forward_cached(tokens[:, :prefill], cache)]
    out += [model.forward_cached(tokens[:, t:t + 1], cache) for t in range(prefill, tokens.shape[1])]
    return np.concatenate(out, axis=1)


def test_quantized_cache_reads_back_within_half_a_step_and_float_for_the_open_group():
    config = PRESETS["shakespeare-cpu"].replace(n_layer=1, n_head=2, n_embd=32, block_size=40)
    cache = QuantizedKVCache(config, batch=2, group=8)
    rng = np.random.default_rng(0)
    k, v = rng.standard_normal((2, 2, 21, 16)).astype(np.float32), rng.standard_normal((2, 2, 21, 16))
    k[..., 3] *= 20  # an outlier channel: per-channel key ranges keep the other channels precise
    cache.write(0, 0, k[:, :, :5], v[:, :, :5])
    cache.write(0, 5, k[:, :, 5:21], v[:, :, 5:21])  # completes groups 0 and 1, leaves 5 tokens open
    keys, values = cache.read(0, 21)
    assert keys.shape == (2, 2, 21, 16)
    np.testing.assert_allclose(keys[:, :, 16:], k[:, :, 16:], rtol=1e-3)  # the open group: float16
    groups = k[:, :, :16].reshape(2, 2, 2, 8, 16)  # per channel, per group of 8 tokens; the range holds 0
    step = ((np.maximum(groups.max(axis=3), 0) - np.minimum(groups.min(axis=3), 0)) / 15).repeat(8, axis=2)
    assert np.all(np.abs(keys[:, :, :16] - k[:, :, :16]) <= 0.5 * step * 1.01 + 1e-6)
    assert np.abs(keys[..., :16, :3] - k[..., :16, :3]).max() < 0.2  # normal channels unharmed by channel 3
    assert np.abs(values[:, :, :16] - v[:, :, :16]).max() < 0.5 * np.abs(v).max() / 15 * 2.2


@pytest.mark.parametrize("preset", ["shakespeare-cpu", "smollm2-135m"])
def test_decoding_with_the_quantized_cache_stays_close_to_the_float_cache(preset):
    config = PRESETS[preset].replace(vocab_size=30, n_layer=2, block_size=32, n_embd=128, n_head=4,
                                     n_kv_head=2 if PRESETS[preset].n_kv_head else 0, ffn_size=0)
    model = GPT(config, seed=0)
    tokens = np.random.default_rng(1).integers(0, 30, (3, 32))
    exact = decode(model, tokens, KVCache(config, 3, np.float32), prefill=11)
    approx = decode(model, tokens, QuantizedKVCache(config, 3), prefill=11)
    p = np.exp(exact - exact.max(-1, keepdims=True))
    q = np.exp(approx - approx.max(-1, keepdims=True))
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    assert np.abs(p - q).sum(-1).max() < 0.05  # total variation of every next-token distribution


def test_the_cache_holds_key_value_heads_only():
    """SmolLM2 has 9 query heads sharing 3 key/value heads: its cache is a third of a multi-head one's."""
    config = PRESETS["smollm2-135m"].replace(block_size=64)
    grouped, full = KVCache(config, 1, np.float32), KVCache(config.replace(n_kv_head=0), 1, np.float32)
    assert grouped.k.shape == (30, 1, 3, 64, 64) and 3 * grouped.nbytes == full.nbytes
    assert 3 * QuantizedKVCache(config, 1).nbytes == QuantizedKVCache(config.replace(n_kv_head=0), 1).nbytes


def test_quantized_cache_takes_under_030_of_the_float_bytes():
    config = PRESETS["shakespeare-cpu"]
    assert QuantizedKVCache(config, 4).nbytes <= 0.3 * KVCache(config, 4, np.float32).nbytes


def test_rewriting_from_position_zero_starts_over():
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=30, n_layer=1, block_size=16)
    model = GPT(config, seed=0)
    tokens = np.random.default_rng(2).integers(0, 30, (1, 16))
    cache = QuantizedKVCache(config, 1)
    first = decode(model, tokens, cache, prefill=16)
    cache.length = 0  # what generate() does when it slides the context
    np.testing.assert_array_equal(decode(model, tokens, cache, prefill=16), first)


def test_sample_command_with_the_4_bit_cache(tmp_path, capsys):
    from pocketgpt.cli import main
    from pocketgpt.train import Checkpoint, load_dataset, save_checkpoint

    ds = load_dataset("shakespeare")
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=65, n_layer=1, block_size=32)
    save_checkpoint(tmp_path / "m", Checkpoint(config, GPT(config, seed=0).params, ds.tokenizer, "float32", ds.spec()))
    assert main(["sample", str(tmp_path / "m"), "--kv-cache", "q4", "--prompt", "KING", "--max-tokens", "40",
                 "--count", "1", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("KING") and len(out) > 40  # runs past the context (sliding) with the 4-bit cache
