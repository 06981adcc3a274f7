"""Prefix caching: restored blocks give the logits a full prefill gives, a block is found only after the tokens it
was computed after, the end of a chain is evicted first within the budget, and a batch with the cache yields
what it yields without."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from pocketgpt.config import PRESETS
from pocketgpt.generate import Batcher, PrefixCache, Request, Sampling, Sequence, generate_batch
from pocketgpt.model import GPT

BLOCK = 4


@pytest.fixture
def model():
    config = PRESETS["smollm2-135m"].replace(vocab_size=13, block_size=40, n_layer=2, n_embd=32, n_head=4,
                                             n_kv_head=2, ffn_size=40)
    return GPT(config, dtype=np.float64, seed=4)


def logits_after(model, prompt, prefix: PrefixCache | None):
    """Last-position logits of a prompt prefilled into a fresh cache, from restored blocks where there are some."""
    cache = model.new_cache(1)
    start = prefix.restore(prompt, cache) if prefix is not None else 0
    logits = model.forward_cached(np.array([prompt[start:]]), cache, outputs=1)[0, -1]
    if prefix is not None:
        prefix.store(prompt, cache)
    return logits, start


def test_restored_blocks_give_the_logits_of_a_full_prefill(model):
    rng = np.random.default_rng(0)
    system = list(rng.integers(0, 13, 3 * BLOCK + 1))
    prefix = PrefixCache(1 << 20, BLOCK)
    logits_after(model, system + [1, 2, 3, 0], prefix)  # four blocks stored, the fourth ending in 1, 2, 3
    for tail, reused in (([3], 3), ([4, 5, 6, 7, 8, 9], 3), ([1, 2, 3, 4, 5], 4)):
        prompt = system + tail
        got, start = logits_after(model, prompt, prefix)
        assert start == reused * BLOCK
        # float64 throughout: the restored entries were computed by a longer prefill, so only rounding differs
        assert_close(got, logits_after(model, prompt, None)[0], 1e-12, f"tail {tail}")


def test_at_least_the_last_token_is_prefilled(model):
    prefix = PrefixCache(1 << 20, BLOCK)
    prompt = list(range(2 * BLOCK))
    logits_after(model, prompt, prefix)
    assert len(prefix.blocks) == 2
    assert logits_after(model, prompt, prefix)[1] == BLOCK  # the second block holds the last token: prefilled again


def test_a_block_is_found_only_after_the_same_tokens(model):
    prefix = PrefixCache(1 << 20, BLOCK)
    shared = [5] * BLOCK
    logits_after(model, [1] * BLOCK + shared + [2], prefix)
    assert logits_after(model, [3] * BLOCK + shared + [2], prefix)[1] == 0  # same tokens, different past
    assert logits_after(model, [1] * BLOCK + shared + [7], prefix)[1] == 2 * BLOCK


def test_the_end_of_a_chain_is_evicted_first_within_the_budget(model):
    one = PrefixCache(1 << 20, BLOCK)
    logits_after(model, list(range(BLOCK + 1)), one)
    size = one.nbytes  # one block's keys and values
    prefix = PrefixCache(3 * size, BLOCK)
    first = [1] * (2 * BLOCK) + [0]
    logits_after(model, first, prefix)
    logits_after(model, [2] * (2 * BLOCK) + [0], prefix)  # two more blocks: one of the first chain must go
    assert prefix.nbytes <= 3 * size and len(prefix.blocks) == 3
    assert logits_after(model, first, prefix)[1] == BLOCK  # its first block stayed, its second went


def test_a_batch_with_the_cache_yields_what_it_yields_without(model):
    rng = np.random.default_rng(1)
    system = list(rng.integers(0, 13, 9))
    prompts = [system + list(rng.integers(0, 13, n)) for n in (1, 4, 7, 2, 5)]
    seeds = [3, 4, 5, 6, 7]
    for temperature in (0.0, 1.0):
        sampling = Sampling(temperature, top_k=8)
        alone = generate_batch(model, prompts, max_new_tokens=10, sampling=sampling, seeds=seeds, slots=2)
        batcher = Batcher(model, slots=2, prefix=PrefixCache(1 << 20, BLOCK))
        seqs = [Sequence(Request(tuple(p), 10, Sampling(temperature, top_k=8, seed=s))) for p, s in zip(prompts, seeds)]
        for seq in seqs:
            batcher.submit(seq)
        batcher.run()
        assert [seq.tokens for seq in seqs] == alone
        assert batcher.prefix.hits >= 2 * (len(prompts) - 2)  # all but the first two share the system's two blocks


def test_a_reply_is_kept_for_the_next_turn(model):
    batcher = Batcher(model, slots=1, prefix=PrefixCache(1 << 20, BLOCK))
    first = Sequence(Request((1, 2, 3), 12, Sampling(temperature=0)))
    batcher.submit(first)
    batcher.run()
    turn = [1, 2, 3] + first.tokens + [4]  # what a chat resends: the prompt, the reply, a new message
    cache = model.new_cache(1)
    assert batcher.prefix.restore(turn, cache) == (3 + len(first.tokens) - 1) // BLOCK * BLOCK
