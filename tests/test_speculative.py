"""Speculative decoding: token-identical to greedy decoding for every kind of draft, and, when sampling, the
target's own distribution over the first two tokens (checked against the exact distribution)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from conftest import Served

from pocketgpt.cli import main
from pocketgpt.config import PRESETS
from pocketgpt.generate import Sampling, SpecStats, generate, make_draft, speculative_generate
from pocketgpt.generate.speculative import (
    EXPLORE_EVERY,
    MAX_ADAPTIVE_K,
    DraftLength,
    VerifyCosts,
    first_layers,
    quantized_copy,
)
from pocketgpt.model import GPT
from pocketgpt.train import load_checkpoint

GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def target():
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=5, block_size=32, n_layer=2, n_embd=32, init_std=0.5)
    return GPT(config, dtype=np.float64, seed=1)


def drafts(target):
    config = target.config
    return {
        "smaller model": make_draft("model", model=GPT(config.replace(n_layer=1, n_embd=16), dtype=np.float64, seed=2)),
        "random weights": make_draft("model", model=GPT(config, dtype=np.float64, seed=3)),
        "quantized self": make_draft("quantized", target, bits=4, group_size=32),
        "first layer": make_draft("layers", target, layers=1),
        "n-gram": make_draft("ngram"),
        "short-context model": make_draft("model", model=GPT(config.replace(block_size=8), dtype=np.float64, seed=2)),
    }


# Verification costs by tokens fed (index 0 unused): free (every draft pays) and steep (a 2-token pass costs 2.2
# steps, as the packed kernels measure on SmolLM2, so drafting pays only when nearly every draft is accepted).
FLAT = np.r_[0.0, np.ones(MAX_ADAPTIVE_K + 1)]
STEEP = np.r_[0.0, 1.0, 2.2 + 0.45 * np.arange(MAX_ADAPTIVE_K)]


@pytest.mark.parametrize("kind", ["smaller model", "random weights", "quantized self", "first layer", "n-gram",
                                  "short-context model"])
@pytest.mark.parametrize("adaptive", [None, FLAT, STEEP], ids=["fixed k", "adaptive, free", "adaptive, steep"])
def test_greedy_output_is_token_identical(target, kind, adaptive, monkeypatch):
    if adaptive is not None:  # the verification costs the draft length is chosen from, instead of timed ones
        monkeypatch.setitem(VerifyCosts._of, target, VerifyCosts(adaptive))
    draft = drafts(target)[kind]
    prompt = [0, 1, 2, 0, 1]
    plain = list(generate(target, prompt, max_new_tokens=40, sampling=GREEDY))
    stats = SpecStats()
    got = list(speculative_generate(target, prompt, max_new_tokens=40, draft=draft, k=3,
                                    adaptive=adaptive is not None, sampling=GREEDY, stats=stats))
    assert got == plain
    assert stats.tokens == len(got) and stats.target_forwards == stats.rounds + 1 <= len(got)  # the prefill: one
    assert 0 <= stats.acceptance_rate <= 1 and stats.draft_seconds >= 0 and stats.verify_seconds > 0
    if adaptive is None:
        assert len(stats.per_position) == 3
    elif adaptive is FLAT and kind == "short-context model":  # as far as its 8 positions allow after the first
        assert len(stats.per_position) == 8 - (len(prompt) + 1) + 1  # token, which the prompt's prefill gives
    elif adaptive is FLAT and kind != "n-gram":  # free verification: model drafts go as far as the context allows
        assert len(stats.per_position) > 3


def test_draft_length_weighs_acceptance_against_verification_cost():
    """E(k) / T(k) by hand: with a_i = 1/2 (the prior), E(k) = 2 - 2^-k, so under STEEP costs no k > 0 beats a
    plain step (E(1) / 2.2 < 1), and under FLAT ones the longest draft wins; after rounds where every draft
    was kept, drafting 16 tokens gives 17 tokens for 8.95 steps, the best under STEEP."""
    steep = DraftLength(VerifyCosts(STEEP))
    assert steep.choose(16) == 0 and steep.probes()
    assert DraftLength(VerifyCosts(FLAT)).choose(5) == 5
    for _ in range(30):
        steep.learn([1.0] * 16, 16, 0.0, 17, STEEP[17])
    assert steep.acceptance().min() > 0.9 and steep.choose(16) == 16 and steep.choose(3) == 3
    for _ in range(60):  # then none kept: back to plain steps, still asking the (free) draft for one token
        steep.learn([0.0], 1, 0.0, 2, STEEP[2])
    assert steep.acceptance()[0] < 0.1 and steep.choose(16) == 0 and steep.probes()
    steep.draft_seconds = 0.12  # a draft dearer than a tenth of a step per token is not asked for nothing,
    assert not steep.probes()  # but tried once every EXPLORE_EVERY rounds
    assert [steep.choose(16) for _ in range(2 * EXPLORE_EVERY)].count(1) == 2
    steep.draft_seconds = 0.3  # three times as dear: a third as often
    assert [steep.choose(16) for _ in range(6 * EXPLORE_EVERY)].count(1) == 2
    steep.draft_seconds = 0.6  # over ((k + 1) - 2.2 - 0.45 (k - 1)) / k for every k: it could never pay
    assert [steep.choose(16) for _ in range(6 * EXPLORE_EVERY)].count(1) == 0
    with pytest.raises(Exception, match="seconds"):
        VerifyCosts(np.ones(3))
    costs = VerifyCosts(STEEP)  # passes of 3 tokens measured at twice their timed cost: every longer pass follows
    for _ in range(100):
        costs.observe(3, 2 * STEEP[3])
    assert np.allclose(costs.seconds[2:], 2 * STEEP[2:], rtol=1e-3) and costs.seconds[1] == STEEP[1]


@pytest.mark.parametrize("kind", ["smaller model", "quantized self", "first layer", "n-gram"])
def test_any_length_equals_plain_decoding_sliding_past_the_context(target, kind):
    """Past the context (32 tokens here) plain decoding slides its window; speculative decoding must give the
    same tokens for as long as asked, not stop at the context."""
    prompt = [0, 1, 2, 0, 1]
    plain = list(generate(target, prompt, max_new_tokens=70, sampling=GREEDY, sliding=True))
    got = list(speculative_generate(target, prompt, max_new_tokens=70, draft=drafts(target)[kind], k=3,
                                    sampling=GREEDY, sliding=True))
    assert len(plain) == 70 and got == plain
    long_prompt = list(np.random.default_rng(0).integers(0, 5, 40))  # longer than the context from the start
    assert list(speculative_generate(target, long_prompt, max_new_tokens=10, draft=drafts(target)[kind],
                                     sampling=GREEDY, sliding=True)) == \
        list(generate(target, long_prompt, max_new_tokens=10, sampling=GREEDY, sliding=True))


def test_the_layer_draft_is_the_targets_early_exit(target):
    """The first-n-layers draft computes what the target's own blocks compute before its last ones are run: its
    logits equal the target's head applied to the stream after block n (the target's training forward as the
    independent reference), and its packed matrices are the target's own objects."""
    idx = np.array([[0, 1, 2, 3, 4, 0, 1]])
    draft = first_layers(target, 1)
    x = target.embed(idx)
    x = target.block_with_inputs(x, 0)[0]
    np.testing.assert_allclose(draft.forward(idx)[0], target._head(x), rtol=0, atol=1e-12)
    packed = quantized_copy(target, 4, 32)
    assert first_layers(packed, 1).packed["h.0.mlp.c_fc.weight"] is packed.packed["h.0.mlp.c_fc.weight"]
    with pytest.raises(ValueError, match="keeps 1..1 of the target's 2 layers"):
        make_draft("layers", target, layers=2)


def test_the_layer_draft_reads_the_targets_cache_instead_of_prefilling(target, monkeypatch):
    """The draft's layers are the target's, so the keys and values of the context are already in the target's
    cache: each proposal feeds the draft only the context's last token and its own drafts, never the prompt."""
    prompt = [0, 1, 2, 0, 1, 2, 0, 1]
    plain = list(generate(target, prompt, max_new_tokens=16, sampling=GREEDY))
    for kind, fed_prompt in (("layers", False), ("model", True)):
        draft = (make_draft("layers", target, layers=1) if kind == "layers"
                 else make_draft("model", model=first_layers(target, 1)))
        fed, real = [], draft.model.forward_cached
        monkeypatch.setattr(draft.model, "forward_cached",
                            lambda idx, cache, outputs=None, real=real, fed=fed: fed.append(np.shape(idx)[1]) or
                            real(idx, cache, outputs))
        assert list(speculative_generate(target, prompt, max_new_tokens=16, draft=draft, k=3,
                                         sampling=GREEDY)) == plain
        assert max(fed) == len(prompt) + 1 if fed_prompt else set(fed) == {1}  # + the prefill's first token


def test_the_n_gram_index_finds_what_a_scan_of_the_context_finds():
    """The session's index against a plain scan (the latest earlier occurrence of the last n tokens, n from 4
    down), as the context grows one token at a time and when a new context is passed."""

    def scan(context, k, max_n=4):
        for n in range(min(max_n, len(context) - 1), 0, -1):
            for start in range(len(context) - n - 1, -1, -1):
                if context[start:start + n] == context[-n:]:
                    return context[start + n:start + n + k]
        return []

    rng = np.random.default_rng(0)
    session = make_draft("ngram").session()
    for vocab in (2, 5, 50):
        context = []
        for _ in range(200):
            context.append(int(rng.integers(vocab)))
            k = int(rng.integers(1, 6))
            assert session.propose(context, k, GREEDY, None)[0] == scan(context, k)
        fresh = list(context[:57])
        assert session.propose(fresh, 3, GREEDY, None)[0] == scan(fresh, 3)


def test_max_tokens_and_stop_token(target):
    plain = list(generate(target, [0, 1], max_new_tokens=7, sampling=GREEDY))
    draft = drafts(target)["random weights"]
    assert list(speculative_generate(target, [0, 1], max_new_tokens=7, draft=draft, sampling=GREEDY)) == plain
    stop = plain[4]
    cut = plain[:plain.index(stop)]
    assert list(speculative_generate(target, [0, 1], max_new_tokens=7, draft=draft, sampling=GREEDY,
                                     stop_tokens={stop})) == cut


def exact_two_token_distribution(model, prompt) -> np.ndarray:
    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    V = model.config.vocab_size
    p1 = softmax(model.forward(np.array([prompt]))[0][0, -1])
    return np.array([p1[a] * softmax(model.forward(np.array([prompt + [a]]))[0][0, -1])[b]
                     for a, b in itertools.product(range(V), repeat=2)])


@pytest.mark.parametrize("kind", ["smaller model", "first layer", "n-gram"])
def test_sampling_keeps_the_targets_distribution(target, kind):
    """N runs (two drafts, then the third token); the empirical joint distribution of the first two tokens over
    the V^2 outcomes must be within eps of the exact one in total variation. By the Bretagnolle-Huber-Carol
    inequality P(TV >= eps) <= 2^K exp(-2 N eps^2) for K outcomes, so eps below makes a false failure less
    likely than 1e-6. The draft's own distribution is far further away, so accepting drafts without the rule
    would fail."""
    draft = drafts(target)[kind]
    prompt, V, N = [0, 1, 2, 0, 1], target.config.vocab_size, 3000
    exact = exact_two_token_distribution(target, prompt)
    counts = np.zeros(V * V)
    rng = np.random.default_rng(0)
    for _ in range(N):
        a, b, _ = speculative_generate(target, prompt, max_new_tokens=3, draft=draft, k=2, sampling=Sampling(1.0),
                                       rng=rng)
        counts[a * V + b] += 1
    eps = math.sqrt((V * V * math.log(2) + math.log(1e6)) / (2 * N))
    tv = 0.5 * np.abs(counts / N - exact).sum()
    assert tv < eps, (tv, eps)
    if kind == "smaller model":
        assert 0.5 * np.abs(exact_two_token_distribution(draft.model, prompt) - exact).sum() > 2 * eps


def test_sample_gives_plain_decodings_text_with_every_draft_flag(tmp_path, capsys):
    """`pocketgpt sample` at temperature 0 writes the same text with each draft flag as without one, past the
    context (64 characters) too; a layer draft of a one-layer model is a one-line error."""
    out = tmp_path / "m"
    assert main(["train", "--preset", "shakespeare-cpu", "--data", "shakespeare", "--n-layer", "2", "--steps", "60",
                 "--samples", "0", "--out", str(out)]) == 0
    base = ["sample", str(out), "--prompt", "ROMEO:", "--temperature", "0", "--count", "1", "--max-tokens", "100",
            "--json"]
    capsys.readouterr()
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out.splitlines()[-1])["samples"]
    assert len(plain[0]) == 100 and len(set(plain[0])) >= 5  # past the context, and not one repeated character
    from pocketgpt.serve.draft import DraftService, create_draft_app

    served = Served(app=create_draft_app(DraftService(load_checkpoint(out).model(), "m")))  # the model as its draft
    try:
        for flags in (["--draft-quantized"], ["--draft-layers", "1"], ["--draft-ngram"], ["--draft", str(out)],
                      ["--draft-url", served.url]):
            assert main(base + flags) == 0, flags
            result = json.loads(capsys.readouterr().out.splitlines()[-1])
            assert result["samples"] == plain and result["speculative"]["rounds"] > 0, flags
    finally:
        served.close()
    assert result["speculative"]["acceptance_rate"] == 1.0  # the remote draft is the target itself
    assert main(base + ["--draft-layers", "2"]) == 2
    err = capsys.readouterr().err
    assert "keeps 1..1 of the target's 2 layers" in err and len(err.strip().splitlines()) == 1


def test_every_verified_token_gets_the_logits_plain_decoding_gives_it_bit_for_bit(int8_activations, monkeypatch):
    """On the path SmolLM2 takes (float32 weights packed in Q4_0, integer dot products with activations rounded to
    8 bits, where a difference in a token's last bits can move a code and tip a near tie), with a prompt long enough
    that its prefill computes attention in BLAS blocks, adaptive rounds and rounds of MAX_ADAPTIVE_K drafts: the
    target's logits for every context both runs compute are bit for bit the same, so greedy output is
    token-identical whatever the ties."""
    from pocketgpt.formats.ggml import quantize_blocks
    from pocketgpt.model import packed_copy

    config = PRESETS["smollm2-135m"].replace(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, ffn_size=96,
                                             block_size=256, vocab_size=48, init_std=0.3)
    target = packed_copy(GPT(config, seed=5), lambda w: quantize_blocks(w, "q4_0"))
    monkeypatch.setitem(VerifyCosts._of, target, VerifyCosts(FLAT))  # free verification: rounds of 16 drafts
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in np.tile(rng.integers(0, 48, 30), 5)]  # repeats: n-gram lookup drafts long runs
    seen: dict[str, dict[tuple, np.ndarray]] = {}  # by the tokens a row of logits follows
    held: dict[str, list[int]] = {}  # the tokens in the target's cache
    forward = GPT.forward_cached

    def recorded(model, idx, cache, *args, **kwargs):
        start = cache.length
        logits = forward(model, idx, cache, *args, **kwargs)
        if model is target:
            held[run] = held[run][:start] + [int(t) for t in idx[0]]
            first = start + idx.shape[1] - logits.shape[1]
            for i, row in enumerate(logits[0]):
                seen[run][tuple(held[run][:first + i + 1])] = row.copy()
        return logits

    monkeypatch.setattr(GPT, "forward_cached", recorded)
    outputs, stats = {}, {"n-gram": SpecStats(), "layers": SpecStats()}
    for run, draft in (("plain", None), ("n-gram", make_draft("ngram")), ("layers", make_draft("layers", target))):
        seen[run], held[run] = {}, []
        outputs[run] = list(generate(target, prompt, max_new_tokens=60, sampling=GREEDY) if draft is None else
                            speculative_generate(target, prompt, max_new_tokens=60, draft=draft,
                                                 k=MAX_ADAPTIVE_K, adaptive=run == "n-gram", sampling=GREEDY,
                                                 stats=stats[run]))
    assert len(stats["layers"].position_drafted) == MAX_ADAPTIVE_K  # rounds of the longest blocks were verified
    for run in ("n-gram", "layers"):
        assert outputs[run] == outputs["plain"]
        shared = seen[run].keys() & seen["plain"].keys()
        assert len(shared) >= 60
        for context in sorted(shared, key=len):
            np.testing.assert_array_equal(seen[run][context], seen["plain"][context], err_msg=f"{run}, {len(context)}")
