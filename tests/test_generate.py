"""Sampling: greedy equals the argmax of an uncached forward; filters restrict the support; seeds repeat."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pocketgpt.config import PRESETS
from pocketgpt.generate import draw, generate, probs_from_logits
from pocketgpt.model import GPT


@pytest.fixture
def model():
    return GPT(PRESETS["shakespeare-cpu"].replace(vocab_size=13, block_size=10, n_layer=2), seed=4)


def test_greedy_generation_equals_argmax_of_uncached_forward(model):
    prompt = [1, 2, 3]
    got = list(generate(model, prompt, max_new_tokens=7, temperature=0))
    seq = list(prompt)
    for _ in range(7):
        logits, _, _ = model.forward(np.array([seq]))
        seq.append(int(np.argmax(logits[0, -1])))
    assert got == seq[3:]


def test_generation_stops_at_the_context_unless_sliding(model):
    assert len(list(generate(model, [1], max_new_tokens=50, temperature=0))) == 10
    sliding = list(generate(model, [1], max_new_tokens=30, temperature=0, sliding=True))
    assert len(sliding) == 30
    seq = [1, *sliding]
    for t in range(10, 30):  # each token after the context filled is the argmax over the last 10 tokens
        logits, _, _ = model.forward(np.array([seq[t - 9:t + 1]]))
        assert seq[t + 1] == int(np.argmax(logits[0, -1]))


def test_stop_token_ends_generation_and_is_not_yielded(model):
    first = next(generate(model, [1], max_new_tokens=5, temperature=0))
    assert list(generate(model, [1], max_new_tokens=5, temperature=0, stop_token=first)) == []


def test_same_seed_same_tokens(model):
    a = list(generate(model, [0], max_new_tokens=8, seed=5))
    assert a == list(generate(model, [0], max_new_tokens=8, seed=5))


def test_top_k_and_top_p_filters():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    assert np.count_nonzero(probs_from_logits(logits, top_k=2)) == 2
    p = probs_from_logits(logits, top_p=0.7)  # 0.5 + 0.2 reaches 0.7
    np.testing.assert_allclose(p, [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0])
    np.testing.assert_allclose(probs_from_logits(logits, temperature=1.0), np.exp(logits))
    assert probs_from_logits(logits, temperature=0).tolist() == [1, 0, 0, 0, 0]


def test_draw_follows_the_distribution():
    probs = np.array([0.1, 0.6, 0.3])
    rng = np.random.default_rng(0)
    counts = np.bincount([draw(probs, rng) for _ in range(20000)], minlength=3) / 20000
    np.testing.assert_allclose(counts, probs, atol=0.015)  # ~4 standard errors at n=20000
    py = random.Random(0)
    assert draw(probs, py) == random.Random(0).choices(range(3), weights=probs.tolist())[0]


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="temperature"):
        next(generate(model, [1], max_new_tokens=3, temperature=-1))
    with pytest.raises(ValueError, match="context"):
        next(generate(model, list(range(11)), max_new_tokens=3))
