"""Batched decoding: per-slot caches agree with the plain forward, a batch yields what each sequence alone
yields, slots are reused and cancelled sequences leave; stop strings are cut out of streamed text."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from pocketgpt.config import PRESETS
from pocketgpt.errors import InputError, SettingsError
from pocketgpt.generate import Batcher, Request, Sampling, Sequence, TextStream, generate, generate_batch
from pocketgpt.model import GPT, SlotCache


@pytest.fixture
def model():
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=13, block_size=24, n_layer=2, n_embd=32)
    return GPT(config, dtype=np.float64, seed=4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decode_slots_matches_the_uncached_forward(model, family):
    """Three sequences of different lengths in slots 2, 0, 3 of a 4-slot cache, decoded together."""
    if family == "llama":  # rotary positions at each slot's own position, grouped-query attention
        model = GPT(PRESETS["smollm2-135m"].replace(vocab_size=13, block_size=24, n_layer=2, n_embd=32, n_head=4,
                                                    n_kv_head=2, ffn_size=40), dtype=np.float64, seed=4)
    rng = np.random.default_rng(0)
    seqs = {2: list(rng.integers(0, 13, 5)), 0: list(rng.integers(0, 13, 9)), 3: list(rng.integers(0, 13, 1))}
    cache = SlotCache(model.config, 4, np.float64)
    for slot, seq in seqs.items():
        view = cache.slot(slot)
        model.forward_cached(np.array([seq]), view)
        cache.lengths[slot] = view.length
    for step in range(3):
        new = {s: int(rng.integers(0, 13)) for s in seqs}
        logits = model.decode_slots(list(new.values()), list(new), cache)
        for row, (slot, token) in zip(logits, new.items()):
            seqs[slot].append(token)
            assert_close(row, model.forward(np.array([seqs[slot]]))[0][0, -1], 1e-12, f"slot {slot} step {step}")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_batch_yields_what_each_prompt_yields_alone(model, temperature):
    prompts = [[1, 2, 3], [4] * 11, [5, 6], [7], [8, 9, 10, 11]]
    seeds = [11, 12, 13, 14, 15]
    alone = [list(generate(model, p, max_new_tokens=12, sampling=Sampling(temperature, top_k=8, seed=s)))
             for p, s in zip(prompts, seeds)]
    for slots in (5, 2):  # with 2 slots, three prompts wait for a free slot
        got = generate_batch(model, prompts, max_new_tokens=12, sampling=Sampling(temperature, top_k=8), seeds=seeds,
                             slots=slots)
        assert got == alone


def test_sequences_stop_at_the_context_and_the_stop_token(model):
    block, greedy = model.config.block_size, Sampling(temperature=0)
    long = generate_batch(model, [[1] * (block - 2)], max_new_tokens=50, sampling=greedy)[0]
    assert long == list(generate(model, [1] * (block - 2), max_new_tokens=50, sampling=greedy))
    assert len(long) == 3  # two positions left in the cache, and one token sampled from the last logits
    first = generate_batch(model, [[1, 2]], max_new_tokens=5, sampling=greedy)[0][0]
    assert generate_batch(model, [[1, 2]], max_new_tokens=5, sampling=greedy, stop_tokens={first}) == [[]]


def test_cancelled_sequence_frees_its_slot(model):
    batcher = Batcher(model, slots=1)
    seen, greedy = [], Sampling(temperature=0)
    first = Sequence(Request((1, 2), 20, greedy), on_token=seen.append)
    second = Sequence(Request((3,), 4, greedy))
    batcher.submit(first)
    batcher.submit(second)
    batcher.step()
    batcher.step()
    assert len(seen) == 3 and second.slot is None  # prefill + decode, decode; second waits for the slot
    batcher.cancel(first)
    batcher.run()
    assert first.finish_reason == "cancelled" and len(first.tokens) == 3
    assert second.finish_reason == "length" and len(second.tokens) == 4


def test_bad_requests_are_refused_before_they_run(model):
    batcher = Batcher(model, slots=1)
    with pytest.raises(InputError, match="context holds 24"):
        batcher.submit(Sequence(Request((1,) * 25, 5)))
    assert not batcher.busy
    for make, field in ((lambda: Request((), 5), "prompt"), (lambda: Request((1,), 0), "max_new_tokens"),
                        (lambda: Request((1,), 5, Sampling(temperature=-1)), "temperature"),
                        (lambda: Request((1,), 5, Sampling(top_p=0)), "top_p")):
        with pytest.raises(SettingsError) as e:
            make()
        assert e.value.fields == [field]


def test_text_stream_cuts_at_a_stop_string_split_over_tokens():
    chars = "abc\n "
    stream = TextStream(lambda ids: "".join(chars[i] for i in ids), stops=["\n\n", "cab"])
    pieces = [stream.push(i) for i in (0, 1, 3, 0, 4, 2, 0, 1, 1)]  # "ab\na ca" then "b": the stop "cab"
    assert pieces == ["a", "b", "", "\na", " ", "", "", "", ""]  # "\n" and "c", "ca" held back
    assert "".join(pieces) + stream.flush() == "ab\na " and stream.stopped
    plain = TextStream(lambda ids: "".join(chars[i] for i in ids), stops=["\n\n"])
    assert "".join(plain.push(i) for i in (0, 3)) + plain.flush() == "a\n"
