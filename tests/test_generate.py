"""Sampling: greedy equals the argmax of an uncached forward; filters restrict the support; seeds repeat."""

from __future__ import annotations

import numpy as np
import pytest

from pocketgpt.config import PRESETS
from pocketgpt.errors import InputError, SettingsError
from pocketgpt.generate import Sampling, draw, generate, probs_from_logits
from pocketgpt.model import GPT

GREEDY = Sampling(temperature=0)


@pytest.fixture
def model():
    return GPT(PRESETS["shakespeare-cpu"].replace(vocab_size=13, block_size=10, n_layer=2), seed=4)


def test_greedy_generation_equals_argmax_of_uncached_forward(model):
    prompt = [1, 2, 3]
    got = list(generate(model, prompt, max_new_tokens=7, sampling=GREEDY))
    seq = list(prompt)
    for _ in range(7):
        logits, _, _ = model.forward(np.array([seq]))
        seq.append(int(np.argmax(logits[0, -1])))
    assert got == seq[3:]


def test_generation_stops_at_the_context_unless_sliding(model):
    assert len(list(generate(model, [1], max_new_tokens=50, sampling=GREEDY))) == 10
    sliding = list(generate(model, [1], max_new_tokens=30, sampling=GREEDY, sliding=True))
    assert len(sliding) == 30
    seq = [1, *sliding]
    for t in range(10, 30):  # each token after the context filled is the argmax over the last 10 tokens
        logits, _, _ = model.forward(np.array([seq[t - 9:t + 1]]))
        assert seq[t + 1] == int(np.argmax(logits[0, -1]))


def test_stop_token_ends_generation_and_is_not_yielded(model):
    first = next(generate(model, [1], max_new_tokens=5, sampling=GREEDY))
    assert list(generate(model, [1], max_new_tokens=5, sampling=GREEDY, stop_tokens={first})) == []


def test_same_seed_same_tokens(model):
    a = list(generate(model, [0], max_new_tokens=8, sampling=Sampling(seed=5)))
    assert a == list(generate(model, [0], max_new_tokens=8, sampling=Sampling(seed=5)))


def test_top_k_and_top_p_filters():
    logits = np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]))
    assert np.count_nonzero(probs_from_logits(logits, Sampling(1.0, top_k=2))) == 2
    p = probs_from_logits(logits, Sampling(1.0, top_p=0.7))  # 0.5 + 0.2 reaches 0.7
    np.testing.assert_allclose(p, [0.5 / 0.7, 0.2 / 0.7, 0, 0, 0])
    np.testing.assert_allclose(probs_from_logits(logits, Sampling(1.0)), np.exp(logits))
    assert probs_from_logits(logits, GREEDY).tolist() == [1, 0, 0, 0, 0]


def test_draw_follows_the_distribution():
    probs = np.array([0.1, 0.6, 0.3])
    rng = np.random.default_rng(0)
    counts = np.bincount([draw(probs, rng) for _ in range(20000)], minlength=3) / 20000
    np.testing.assert_allclose(counts, probs, atol=0.015)  # ~4 standard errors at n=20000


def test_sampling_settings_are_validated_once_with_their_field_names():
    for kwargs, field in (({"temperature": -1}, "temperature"), ({"temperature": 2.5}, "temperature"),
                          ({"top_k": 0}, "top_k"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                          ({"seed": 2**64}, "seed"), ({"stop": ("a",) * 5}, "stop"), ({"stop": ("x" * 300,)}, "stop")):
        with pytest.raises(SettingsError) as e:
            Sampling(**kwargs)
        assert e.value.fields == [field]
    assert Sampling().temperature == 0.8 and Sampling(stop="ab").stop == ("ab",)
    assert Sampling(seed=-1).rng().random() != Sampling(seed=-1).rng().random()  # -1: fresh randomness
    assert Sampling(seed=-5).rng().random() == Sampling(seed=-5).rng().random()  # any other 64-bit seed repeats
    assert Sampling(seed=-2).rng().random() == Sampling(seed=2**64 - 2).rng().random()  # the same 64 bits


def test_bad_arguments(model):
    with pytest.raises(InputError, match="context"):
        next(generate(model, list(range(11)), max_new_tokens=3))
    with pytest.raises(SettingsError, match="max_new_tokens"):
        next(generate(model, [1], max_new_tokens=0))
