"""Speculative decoding: a cheap draft proposes k tokens, the target checks them all in one forward pass.

The acceptance rule leaves the target's distribution unchanged (Leviathan et al. 2023; Chen et al. 2023):
draft token x_i, drawn from the draft's q_i, is accepted with probability min(1, p_i(x_i) / q_i(x_i)); at the
first rejection one token is drawn from normalize(max(0, p_i - q_i)) and the remaining drafts are dropped;
when all k are accepted, a bonus token is drawn from p_{k+1}. p and q are the distributions after the same
temperature, top-k and top-p, so at temperature 0 both are one-hot and the output is the target's greedy
output. An n-gram draft (prompt lookup) has no distribution: its q is one-hot on the proposed token.

Caches: the prompt is prefilled and its first new token drawn exactly as plain decoding does it (a token's keys
and values may differ in their last bits with the number of tokens a pass takes, so both paths take the same
passes); from then on the target's cache holds every token of the context but the last, and a round feeds that
last token and the k drafts in one pass that computes each token as a decode step would (k + 1 at most
kernels.STEP_UP_TO), then rolls the cache back to the accepted length (positions past it are overwritten
later). A model draft's cache likewise keeps only tokens that were accepted. Once the context fills the
target's window, drafting stops: with sliding=True decoding goes on exactly as plain decoding does (each
step re-reads the last block_size tokens), so the output is plain decoding's for any length.

Drafts come from `make_draft(kind, ...)`: "model" (a smaller GPT of the same tokenizer), "quantized" (the
target's own low-bit copy, round to nearest), "layers" (the target's first blocks and its head: layer
skipping), "ngram" (lookup in the context, no model), "remote" (a draft in another process, asked over
HTTP). A draft is a description; `session(target_cache)` gives each sequence its own state (a layer-skipping
draft's is the target's own cache for its layers: the target has already computed every key and value the draft
needs for the context, and overwrites what the draft writes past it when it verifies).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from pocketgpt.errors import InputError, check_settings
from pocketgpt.formats.groups import largest_group, quantize_groups
from pocketgpt.generate.batching import Scheduler
from pocketgpt.generate.decode import continue_decoding, decode
from pocketgpt.generate.remote import RemoteDraft
from pocketgpt.generate.request import Request, Sequence, check_context, emit_all
from pocketgpt.generate.sampling import Sampling, draw, next_token, probs_from_logits
from pocketgpt.model import GPT, KVCache, linear_names, packed_copy, param_shapes

KINDS = ("model", "quantized", "layers", "ngram", "remote")
MAX_ADAPTIVE_K = 16  # drafts a round: with the token before them, a pass the fused step takes (kernels.STEP_UP_TO)
PROBE_SHARE = 0.1  # a draft that costs under this share of a target step is still asked when k = 0 (see DraftLength)
EXPLORE_EVERY = 8  # otherwise, every so many rounds of k = 0 (times its cost in probes) one draft is tried


@dataclass
class SpecStats:
    """What a speculative run did: rounds, drafted and accepted tokens, target forward passes, and the time
    spent drafting and verifying."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0
    target_forwards: int = 0  # the prompt's prefill (which gives the first token, as in plain decoding) and rounds
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    position_drafted: list[int] = field(default_factory=list)  # [i]: rounds that drafted an i+1-th token
    position_accepted: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.drafted, 1)

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / max(self.target_forwards, 1)

    @property
    def per_position(self) -> list[float]:
        return [a / d for a, d in zip(self.position_accepted, self.position_drafted)]

    def to_dict(self) -> dict:
        return {"rounds": self.rounds, "drafted": self.drafted, "accepted": self.accepted, "tokens": self.tokens,
                "target_forwards": self.target_forwards, "acceptance_rate": self.acceptance_rate,
                "tokens_per_forward": self.tokens_per_forward, "per_position_acceptance": self.per_position,
                "draft_seconds": self.draft_seconds, "verify_seconds": self.verify_seconds}

    def summary(self) -> str:
        """One line for a person: acceptance, tokens per target forward, acceptance by position, time split."""
        per_position = " ".join(f"{a:.2f}" for a in self.per_position)
        return (f"acceptance {self.acceptance_rate:.2f}, {self.tokens_per_forward:.2f} tokens per target forward, "
                f"per position [{per_position}], {self.draft_seconds:.2f} s drafting and {self.verify_seconds:.2f} s "
                "verifying")

    def add(self, other: SpecStats) -> None:
        """Count another run's statistics into these."""
        for name in ("rounds", "drafted", "accepted", "tokens", "target_forwards", "draft_seconds", "verify_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for mine, theirs in ((self.position_drafted, other.position_drafted),
                             (self.position_accepted, other.position_accepted)):
            mine.extend([0] * (len(theirs) - len(mine)))
            for i, v in enumerate(theirs):
                mine[i] += v

    def record(self, drafted: int, accepted: int) -> None:
        """One round's verification pass."""
        self.rounds += 1
        self.target_forwards += 1
        self.drafted += drafted
        self.accepted += accepted
        while len(self.position_drafted) < drafted:
            self.position_drafted.append(0)
            self.position_accepted.append(0)
        for i in range(drafted):
            self.position_drafted[i] += 1
            self.position_accepted[i] += i < accepted


# ----------------------------------------------------------------------------- how many tokens to draft


class VerifyCosts:
    """Seconds for `model` to take n = 1 .. MAX_ADAPTIVE_K + 1 new tokens in one cached forward pass: timed once on
    a scratch cache (the least of `repeats`, made non-decreasing in n), then scaled by what rounds measure: one
    factor for single tokens and one for every longer pass (a moving average of measured over timed seconds), so
    that what a pass costs in place (a longer context, colder caches, another process on a core) reaches the
    sizes a sequence has not tried yet. One per model (`of`), shared by its sequences."""

    def __init__(self, seconds):
        self.timed = np.asarray(seconds, np.float64).copy()  # [n]: n = 0 .. MAX_ADAPTIVE_K + 1 ([0] unused)
        check_settings([(self.timed.shape == (MAX_ADAPTIVE_K + 2,) and bool(np.all(self.timed[1:] > 0)),
                         "seconds", f"must be {MAX_ADAPTIVE_K + 2} times, all but the first positive")])
        self.scale = np.ones(2)  # [0]: one token, [1]: more

    @property
    def seconds(self) -> np.ndarray:
        return self.timed * np.r_[1.0, self.scale[0], np.full(MAX_ADAPTIVE_K, self.scale[1])]

    @classmethod
    def measure(cls, model: GPT, repeats: int = 3, prefix: int = 8) -> VerifyCosts:
        seconds = np.zeros(MAX_ADAPTIVE_K + 2)
        size = min(model.config.block_size, prefix + MAX_ADAPTIVE_K + 1)
        prefix = max(0, min(prefix, size - MAX_ADAPTIVE_K - 1))
        ids = np.arange(size) % model.config.vocab_size
        cache = model.new_cache(1, size=size)
        if prefix > 0:
            model.forward_cached(ids[None, :prefix], cache, outputs=1)
        for n in range(1, min(MAX_ADAPTIVE_K + 1, size - prefix) + 1):
            best = float("inf")
            for _ in range(repeats):
                cache.length = prefix
                t = time.perf_counter()
                model.forward_cached(ids[None, prefix:prefix + n], cache)
                best = min(best, time.perf_counter() - t)
            seconds[n] = best
        last = seconds[1:].nonzero()[0][-1] + 1  # a context shorter than MAX_ADAPTIVE_K + 1: never needed beyond it
        seconds[last + 1:] = seconds[last]
        return cls(np.maximum.accumulate(seconds))

    def observe(self, n: int, seconds: float, weight: float = 0.1) -> None:
        i = int(n > 1)
        ratio = min(max(seconds / self.timed[n], 0.25), 4.0)  # one pass another process stalled counts for little
        self.scale[i] += weight * (ratio - self.scale[i])

    _of: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, model: GPT) -> VerifyCosts:
        if model not in cls._of:
            cls._of[model] = cls.measure(model)
        return cls._of[model]


class DraftLength:
    """Each round's number of drafts k for one sequence, chosen to maximise expected tokens per second:
    E(k) / T(k), where E(k) = 1 + a_1 + a_1 a_2 + ... + a_1 ... a_k with a_i the acceptance of the i-th draft
    given the ones before it, and T(k) the target's measured cost of a k + 1 token forward (VerifyCosts) plus k
    times the draft's measured cost per token. a_i is counted over recent rounds (the counts fade by `decay` per
    round), with a prior worth two rounds: 1/2 for a_1, a_(i-1) for the others, so that a position seldom reached
    is taken to behave as the one before it. k = 0 is a plain decoding step; then a draft cheaper than PROBE_SHARE
    of a step is still asked for one token, and whether the target kept it feeds a_1, so that a stretch where the
    draft starts agreeing (a passage being quoted) is noticed; a dearer draft is tried with k = 1 every
    EXPLORE_EVERY rounds of k = 0 times its cost in probes, and one too dear to pay at these verification costs
    even if every draft were kept not at all."""

    def __init__(self, costs: VerifyCosts, draft_seconds: float = 0.0, decay: float = 0.95):
        self.costs, self.decay = costs, decay
        self.tried = np.zeros(MAX_ADAPTIVE_K)
        self.kept = np.zeros(MAX_ADAPTIVE_K)
        self.draft_seconds = draft_seconds  # per drafted token: the draft's own estimate, then a moving average
        self.idle = 0  # rounds of k = 0 since a draft was last verified

    def acceptance(self) -> np.ndarray:
        a, prior = np.empty(MAX_ADAPTIVE_K), 0.5
        for i in range(MAX_ADAPTIVE_K):
            a[i] = prior = (self.kept[i] + 2.0 * prior) / (self.tried[i] + 2.0)
        return a

    def choose(self, room: int) -> int:
        """The best k in 0..room."""
        room = max(0, min(room, MAX_ADAPTIVE_K))
        expected = 1.0 + np.concatenate([[0.0], np.cumsum(np.cumprod(self.acceptance()))])[:room + 1]
        cost = self.costs.seconds[1:room + 2] + np.arange(room + 1) * self.draft_seconds
        best = int(np.argmax(expected / cost))
        self.idle = 0 if best else self.idle + 1
        if best or not room or self.probes():
            return best
        seconds = self.costs.seconds
        k = np.arange(1, MAX_ADAPTIVE_K + 1)
        dearest = np.max(((k + 1) * seconds[1] - seconds[2:]) / k)  # per token, for k + 1 tokens a pass to pay
        if self.draft_seconds >= dearest:
            return 0
        every = EXPLORE_EVERY * max(1, round(self.draft_seconds / (PROBE_SHARE * seconds[1])))
        return int(self.idle % every == 0)

    def probes(self) -> bool:
        """Whether a round of k = 0 still asks the draft for one token."""
        return bool(self.draft_seconds <= PROBE_SHARE * self.costs.seconds[1])

    def learn(self, kept: list[float], drafted: int, draft_seconds: float, fed: int, verify_seconds: float) -> None:
        """One round: kept[i] is whether the (i+1)-th draft was accepted given the ones before it (1 or 0; for a
        probe, the probability that it would have been); `drafted` tokens took `draft_seconds`, and the target's
        pass over `fed` tokens took verify_seconds."""
        self.tried *= self.decay
        self.kept *= self.decay
        for i, v in enumerate(kept):
            self.tried[i] += 1.0
            self.kept[i] += v
        if drafted:
            self.draft_seconds += 0.2 * (draft_seconds / drafted - self.draft_seconds)
        self.costs.observe(fed, verify_seconds)


# ----------------------------------------------------------------------------- drafts


class NGramDraft:
    """Prompt lookup: find the latest earlier occurrence of the context's last n tokens (n from max_n down to
    min_n) and propose the tokens that followed it. Costs no model at all; each session keeps an index of the
    context's n-grams, extended as the context grows, so that a lookup costs max_n dictionary reads."""

    def __init__(self, max_n: int = 4, min_n: int = 1):
        check_settings([(1 <= min_n <= max_n, "min_n", f"must be in 1..max_n (got {min_n}, max_n {max_n})")])
        self.max_n, self.min_n = max_n, min_n

    def session(self, target_cache=None) -> _NGramSession:
        return _NGramSession(self.max_n, self.min_n)


class _NGramSession:
    def __init__(self, max_n: int, min_n: int):
        self.max_n, self.min_n = max_n, min_n
        self.context: list[int] | None = None
        self.index: dict[int, dict[tuple, int]] = {}
        self.ends = 0  # the n-grams ending before this position are indexed

    def room(self, context_len: int) -> int:
        return MAX_ADAPTIVE_K

    def token_seconds(self) -> float:
        """What a drafted token costs, as far as is known before drafting (DraftLength learns the rest)."""
        return 0.0

    def propose(self, context: list[int], k: int, sampling: Sampling, rng) -> tuple[list[int], list]:
        if context is not self.context or len(context) < self.ends:  # another context: index it afresh
            self.context, self.index, self.ends = context, {n: {} for n in range(self.min_n, self.max_n + 1)}, 0
        while self.ends < len(context) - 1:  # every n-gram that some token follows, the latest start kept
            end = self.ends + 1
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self.index[n][tuple(context[end - n:end])] = end - n
            self.ends = end
        for n in range(min(self.max_n, len(context) - 1), self.min_n - 1, -1):
            start = self.index[n].get(tuple(context[-n:]))
            if start is not None:
                tokens = context[start + n:start + n + k]
                return tokens, [None] * len(tokens)
        return [], []

    def rollback(self, length: int) -> None:
        pass


class ModelDraft:
    """A draft GPT; each session() has its own cache."""

    def __init__(self, model: GPT):
        self.model = model

    def session(self, target_cache=None) -> _ModelSession:
        return _ModelSession(self.model)


class LayerDraft(ModelDraft):
    """The target's first layers and head (first_layers): a session over a float target cache reads and writes
    that cache's first layers instead of keeping its own, so the draft never prefills."""

    def session(self, target_cache=None) -> _ModelSession:
        if type(target_cache) is not KVCache:  # a 4-bit or other cache: the draft keeps its own
            return _ModelSession(self.model)
        n = self.model.config.n_layer
        return _ModelSession(self.model, KVCache.over(target_cache.k[:n], target_cache.v[:n]), target_cache)


class _ModelSession:
    def __init__(self, model: GPT, cache=None, target_cache=None):
        self.model, self.target_cache = model, target_cache
        self.cache = cache if cache is not None else model.new_cache(1)

    def room(self, context_len: int) -> int:
        """Drafts that fit: feeding the context and k - 1 drafts must stay within the draft's context."""
        return self.cache.size - context_len + 1

    def token_seconds(self) -> float:
        return float(VerifyCosts.of(self.model).seconds[1])

    def propose(self, context: list[int], k: int, sampling: Sampling, rng) -> tuple[list[int], list]:
        tokens, dists = [], []
        if self.target_cache is not None:  # every position the target holds is this cache's too
            self.cache.length = self.target_cache.length
        feed = context[self.cache.length:]
        for _ in range(k):
            logits = self.model.forward_cached(np.array([feed]), self.cache, outputs=1)[0, -1]
            if sampling.greedy:  # the one-hot q needs no computing
                x, q = int(np.argmax(logits)), None
            else:
                q = probs_from_logits(logits, sampling)
                x = draw(q, rng)
            tokens.append(x)
            dists.append(q)
            feed = [x]
        return tokens, dists  # the cache now holds the context and every draft but the last

    def rollback(self, length: int) -> None:
        self.cache.length = min(self.cache.length, length)


def quantized_copy(model: GPT, bits: int = 4, group_size: int | None = None) -> GPT:
    """The model with every block linear rounded to nearest in `bits`-bit symmetric groups (group_size: by
    default the largest of 32, 16, ... that divides every input width)."""
    widths = [model.stored(n).shape[1] for n in linear_names(model.config)]
    group = group_size or largest_group(widths, 32)
    return packed_copy(model, lambda w: quantize_groups(w, bits, group))


def first_layers(model: GPT, n: int) -> GPT:
    """The model's first n blocks with its embeddings, final norm and head: the early exit a layer-skipping
    draft runs (LayerSkip, Draft & Verify). Packed matrices are shared with the model, float ones copied."""
    c = model.config
    if c.n_layer == 1:
        raise InputError("the target has one layer: a layer-skipping draft needs more to skip")
    if not 1 <= n < c.n_layer:
        raise InputError(f"a layer-skipping draft keeps 1..{c.n_layer - 1} of the target's {c.n_layer} layers "
                         f"(got {n})")
    kept = param_shapes(c.replace(n_layer=n))
    return GPT(c.replace(n_layer=n), {k: v for k, v in model.params.items() if k in kept}, dtype=model.dtype,
               packed={k: w for k, w in model.packed.items() if k in kept})


def make_draft(kind: str, target: GPT | None = None, *, model: GPT | None = None, bits: int = 4,
               group_size: int | None = None, layers: int = 1, max_n: int = 4, min_n: int = 1,
               url: str | None = None, timeout: float = 5.0, on_failure=None):
    """A draft of one of KINDS: model (`model`, same tokenizer as the target), quantized (the target's own
    `bits`-bit copy), layers (the target's first `layers` blocks, then its head), ngram (lookup of the context's
    last max_n..min_n tokens), remote (the draft served at `url` by another process, pocketgpt.generate.remote;
    a request that takes over `timeout` seconds counts as a failure, which on_failure(message) hears of)."""
    if kind == "model":
        if model is None:
            raise InputError("a model draft needs the draft model")
        return ModelDraft(model)
    if kind == "quantized":
        if target is None:
            raise InputError("a quantized draft needs the target to quantize")
        if target.packed:
            raise InputError("the target is already quantized; its own low-bit copy needs its float weights")
        return ModelDraft(quantized_copy(target, bits, group_size))
    if kind == "layers":
        if target is None:
            raise InputError("a layer-skipping draft needs the target whose layers it runs")
        return LayerDraft(first_layers(target, layers))
    if kind == "ngram":
        return NGramDraft(max_n, min_n)
    if kind == "remote":
        if target is None or not url:
            raise InputError("a remote draft needs the target (for its vocabulary) and the draft's URL")
        return RemoteDraft(url, target.config.vocab_size, timeout, on_failure)
    raise InputError(f"unknown draft kind {kind!r} (known: {', '.join(KINDS)})")


# ----------------------------------------------------------------------------- decoding


def verify(logits: np.ndarray, drafts: list[int], dists: list, sampling: Sampling, rng,
           probs: dict | None = None) -> tuple[int, int]:
    """The acceptance rule over the target's logits (k + 1, V) for k drafts with their distributions (None:
    one-hot on the draft). Returns how many drafts were accepted and the token that follows them. When sampling,
    each row's distribution is computed only if the rule reaches it, and kept in `probs` (row -> p) if given."""
    if sampling.greedy:  # p and q are one-hot, so a draft is kept exactly when it is the argmax
        best = np.argmax(logits, axis=1)
        accepted = next((i for i, x in enumerate(drafts) if x != best[i]), len(drafts))
        return accepted, int(best[accepted])
    probs = {} if probs is None else probs

    def p(i: int) -> np.ndarray:
        if i not in probs:
            probs[i] = probs_from_logits(logits[i], sampling)
        return probs[i]

    for i, (x, q) in enumerate(zip(drafts, dists)):
        qx = 1.0 if q is None else q[x]
        if rng.random() * qx < p(i)[x]:  # u < p(x) / q(x), without dividing by a zero q
            continue
        residual = np.maximum(p(i) - (np.eye(1, p(i).size, x)[0] if q is None else q), 0.0)
        return i, draw(residual / residual.sum() if residual.sum() > 0 else p(i), rng)
    return len(drafts), draw(p(len(drafts)), rng)  # every draft accepted: the bonus token


def as_draft(draft):
    """A GPT passed as a draft becomes a model draft."""
    return ModelDraft(draft) if isinstance(draft, GPT) else draft


def speculate(target: GPT, seq: Sequence, draft, k: int = 4, adaptive: bool = False, sliding: bool = False,
              stats: SpecStats | None = None) -> Iterator[int]:
    """Decode seq with speculative rounds, yielding each token it keeps (see the module docstring).

    k drafts per round; with adaptive=True, each round's k (0 .. MAX_ADAPTIVE_K) is the one DraftLength expects
    to give the most tokens per second (k is then not used). `stats` is filled in as tokens come out.
    """
    check_settings([(isinstance(k, int) and 1 <= k <= MAX_ADAPTIVE_K, "k",
                     f"must be from 1 to {MAX_ADAPTIVE_K} (got {k})")])
    block = target.config.block_size
    prompt = list(seq.request.prompt)
    check_context(len(prompt), block, sliding)
    if len(prompt) > block:  # the window slides from the first token on: nothing to speculate over
        yield from decode(target, seq, sliding)
        return
    stats = stats if stats is not None else SpecStats()
    cache = target.new_cache(1)
    session = as_draft(draft).session(cache)
    length = DraftLength(VerifyCosts.of(target), session.token_seconds()) if adaptive else None
    sampling, rng = seq.request.sampling, seq.rng
    context = prompt

    def emit(tokens: list[int]) -> Iterator[int]:
        kept_before, predicted = len(seq.tokens), seq.would_keep(tokens)
        stats.tokens += predicted  # counted before the sequence hears of them: its on_finish sees the full count
        yield from emit_all(seq, tokens, context)
        stats.tokens += len(seq.tokens) - kept_before - predicted  # fewer when it was cancelled meanwhile

    logits = target.forward_cached(np.array([context]), cache, outputs=1)[0, -1]  # the prefill plain decoding does
    stats.target_forwards += 1
    yield from emit([next_token(logits, sampling, rng)])  # and its first token
    while len(context) <= block and not seq.done:
        left = seq.request.max_new_tokens - len(seq.tokens)
        room = min(MAX_ADAPTIVE_K if adaptive else k, block - len(context), left - 1, session.room(len(context)))
        wanted = room if length is None else length.choose(room)
        probe = length is not None and wanted == 0 and room > 0 and length.probes()
        t0 = time.perf_counter()
        drafts, dists = session.propose(context, max(wanted, int(probe)), sampling, rng) if room > 0 else ([], [])
        t1 = time.perf_counter()
        fed, probed = (drafts[:wanted], dists[:wanted]) if probe else (drafts, dists)
        start = cache.length  # == len(context) - 1
        logits = target.forward_cached(np.array([context[-1:] + fed]), cache)[0]  # (len(fed) + 1, V)
        probs: dict = {}
        accepted, token = verify(logits, fed, probed, sampling, rng, probs)
        t2 = time.perf_counter()
        stats.draft_seconds += t1 - t0
        stats.verify_seconds += t2 - t1
        if length is not None:
            kept = ([_would_accept(logits[0], drafts[0], dists[0], sampling, probs.get(0))] if probe and drafts
                    else [1.0] * accepted + [0.0] * (accepted < len(fed)))
            length.learn(kept, len(drafts), t1 - t0, len(fed) + 1, t2 - t1)
        cache.length = start + 1 + accepted
        session.rollback(len(context) + accepted)
        stats.record(len(fed), accepted)
        yield from emit(fed[:accepted] + [token])
    if not seq.done:
        if sliding:
            yield from continue_decoding(target, seq, context, cache, sliding)
        else:
            seq.finish("length")


def _would_accept(logits: np.ndarray, x: int, q, sampling: Sampling, p: np.ndarray | None = None) -> float:
    """The probability that the acceptance rule keeps draft x (drawn from q; None: one-hot) under these logits (p:
    their distribution, when already computed)."""
    if sampling.greedy:
        return float(x == int(np.argmax(logits)))
    p = probs_from_logits(logits, sampling) if p is None else p
    return float(min(1.0, p[x] / (1.0 if q is None else max(q[x], 1e-300))))


def speculative_generate(target: GPT, prompt: list[int], *, max_new_tokens: int, draft, k: int = 4,
                         adaptive: bool = False, sampling: Sampling = Sampling(), stop_tokens: Iterable[int] = (),
                         sliding: bool = False, rng: np.random.Generator | None = None,
                         stats: SpecStats | None = None) -> Iterator[int]:
    """Yield up to max_new_tokens ids after `prompt`, distributed exactly as `generate(target, ...)` would
    sample them (token-identical at temperature 0), stopping at a stop token (not yielded). `draft`: a
    make_draft() result or a GPT."""
    seq = Sequence(Request(tuple(prompt), max_new_tokens, sampling, frozenset(stop_tokens)), rng=rng)
    return speculate(target, seq, draft, k, adaptive, sliding, stats)


class SpeculativeBatcher(Scheduler):
    """The Batcher interface (submit, cancel, step, busy, load) over speculative decoding: up to `slots`
    sequences run at once, each with its own caches; every step advances each of them by one token (a
    speculative round is computed when its first token is asked for). `stats` counts every finished sequence;
    `stats_of(seq)` is one running sequence's own (still there when its on_finish is called)."""

    def __init__(self, model: GPT, draft, k: int = 4, adaptive: bool = False, slots: int = 8):
        super().__init__(model, slots)
        self.draft, self.k, self.adaptive = as_draft(draft), k, adaptive
        self.active: dict[Sequence, Iterator[int]] = {}
        self.stats = SpecStats()
        self.by_sequence: dict[Sequence, SpecStats] = {}

    def stats_of(self, seq: Sequence) -> SpecStats | None:
        return self.by_sequence.get(seq)

    def step(self) -> None:
        while (seq := self.admit()) is not None:
            stats = self.by_sequence[seq] = SpecStats()
            self.active[seq] = speculate(self.model, seq, self.draft, self.k, self.adaptive, stats=stats)
        for seq, tokens in list(self.active.items()):
            if seq.cancelled:
                seq.finish("cancelled")
            else:
                next(tokens, None)
            if seq.done:
                del self.active[seq]
                self.stats.add(self.by_sequence.pop(seq))


def run_sequence(model: GPT, seq: Sequence, *, sliding: bool = False, draft=None, k: int = 4,
                 adaptive: bool = False, cache=None, stats: SpecStats | None = None) -> Iterator[int]:
    """seq decoded to its end: speculatively when a draft is given (stats filled in), else plainly (into
    `cache` if given)."""
    if draft is not None:
        if cache is not None:
            raise InputError("speculative decoding keeps its own float caches; a cache applies to plain decoding")
        return speculate(model, seq, draft, k, adaptive, sliding, stats)
    return decode(model, seq, sliding, cache)
