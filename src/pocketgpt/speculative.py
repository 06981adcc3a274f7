"""Speculative decoding: a cheap draft proposes k tokens, the target checks them all in one forward pass.

The acceptance rule leaves the target's distribution unchanged (Leviathan et al. 2023; Chen et al. 2023):
draft token x_i, drawn from the draft's q_i, is accepted with probability min(1, p_i(x_i) / q_i(x_i)); at the
first rejection one token is drawn from normalize(max(0, p_i - q_i)) and the remaining drafts are dropped;
when all k are accepted, a bonus token is drawn from p_{k+1}. p and q are the distributions after the same
temperature, top-k and top-p, so at temperature 0 both are one-hot and the output is the target's greedy
output. An n-gram draft (prompt lookup) has no distribution: its q is one-hot on the proposed token.

Caches: the target's cache holds every token of the context but the last; a round feeds that last token
and the k drafts, and then rolls the cache back to the accepted length (positions past it are overwritten
later). The draft's cache likewise keeps only tokens that were accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pocketgpt.batching import Scheduler, Sequence
from pocketgpt.generate import check_sampling, draw, probs_from_logits
from pocketgpt.model import GPT

MAX_ADAPTIVE_K = 16


@dataclass
class SpecStats:
    """What a speculative run did: rounds, drafted and accepted tokens, target forward passes."""

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    tokens: int = 0
    target_forwards: int = 0  # verification passes (the prompt's prefill not counted)
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
                "tokens_per_forward": self.tokens_per_forward, "per_position_acceptance": self.per_position}

    def record(self, drafted: int, accepted: int, emitted: int) -> None:
        self.rounds += 1
        self.target_forwards += 1
        self.drafted += drafted
        self.accepted += accepted
        self.tokens += emitted
        while len(self.position_drafted) < drafted:
            self.position_drafted.append(0)
            self.position_accepted.append(0)
        for i in range(drafted):
            self.position_drafted[i] += 1
            self.position_accepted[i] += i < accepted


class NGramDraft:
    """Prompt lookup: find the latest earlier occurrence of the context's last n tokens (n from max_n down to
    min_n) and propose the tokens that followed it. Costs no model at all."""

    def __init__(self, max_n: int = 4, min_n: int = 1):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n (got {min_n}, {max_n})")
        self.max_n, self.min_n = max_n, min_n

    def propose(self, context: list[int], k: int) -> list[int]:
        for n in range(min(self.max_n, len(context) - 1), self.min_n - 1, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start:start + n] == tail:
                    return context[start + n:start + n + k]
        return []


class _ModelDraft:
    """A draft GPT with its own cache, proposing k tokens with their distributions."""

    def __init__(self, model: GPT, sampling: tuple):
        self.model, self.sampling = model, sampling
        self.cache = model.new_cache(1)

    def room(self, context_len: int) -> int:
        """Drafts that fit: feeding the context and k - 1 drafts must stay within the draft's context."""
        return self.cache.size - context_len + 1

    def propose(self, context: list[int], k: int, rng) -> tuple[list[int], list[np.ndarray]]:
        tokens, dists = [], []
        feed = context[self.cache.length:]
        for _ in range(k):
            logits = self.model.forward_cached(np.array([feed]), self.cache)[0, -1]
            if self.sampling[0] == 0:  # greedy: the one-hot q needs no computing
                x, q = int(np.argmax(logits)), None
            else:
                q = probs_from_logits(logits, *self.sampling)
                x = draw(q, rng)
            tokens.append(x)
            dists.append(q)
            feed = [x]
        return tokens, dists  # the cache now holds the context and every draft but the last

    def rollback(self, length: int) -> None:
        self.cache.length = min(self.cache.length, length)


def verify(logits: np.ndarray, drafts: list[int], dists: list, sampling: tuple, rng) -> tuple[int, int]:
    """The acceptance rule over the target's logits (k + 1, V) for k drafts with their distributions (None:
    one-hot on the draft). Returns how many drafts were accepted and the token that follows them."""
    if sampling[0] == 0:  # greedy: p and q are one-hot, so a draft is kept exactly when it is the argmax
        best = np.argmax(logits, axis=1)
        accepted = next((i for i, x in enumerate(drafts) if x != best[i]), len(drafts))
        return accepted, int(best[accepted])
    p = [probs_from_logits(row, *sampling) for row in logits]
    for i, (x, q) in enumerate(zip(drafts, dists)):
        qx = 1.0 if q is None else q[x]
        if rng.random() * qx < p[i][x]:  # u < p(x) / q(x), without dividing by a zero q
            continue
        residual = np.maximum(p[i] - (np.eye(1, p[i].size, x)[0] if q is None else q), 0.0)
        return i, draw(residual / residual.sum() if residual.sum() > 0 else p[i], rng)
    return len(drafts), draw(p[len(drafts)], rng)  # every draft accepted: the bonus token


def speculative_generate(target: GPT, prompt: list[int], *, max_new_tokens: int, draft: GPT | NGramDraft,
                         k: int = 4, adaptive: bool = False, temperature: float = 1.0, top_k: int | None = None,
                         top_p: float | None = None, seed: int | None = None, rng: np.random.Generator | None = None,
                         stop_token: int | None = None, stats: SpecStats | None = None) -> Iterator[int]:
    """Yield up to max_new_tokens ids after `prompt`, distributed exactly as `generate(target, ...)` would
    sample them, stopping at stop_token (not yielded) or when the target's context is full.

    k drafts per round; with adaptive=True, k grows by one after a round where every draft was accepted and
    shrinks by one otherwise (between 1 and 16). `stats` (a SpecStats) is filled in as tokens come out.
    """
    block = target.config.block_size
    if not prompt or len(prompt) > block:
        raise ValueError(f"prompt must hold 1 to {block} tokens (got {len(prompt)})")
    if k < 1:
        raise ValueError(f"k must be >= 1 (got {k})")
    check_sampling(temperature, top_k, top_p)
    sampling = (temperature, top_k, top_p)
    rng = rng if rng is not None else np.random.default_rng(seed)
    stats = stats if stats is not None else SpecStats()
    model_draft = None if isinstance(draft, NGramDraft) else _ModelDraft(draft, sampling)
    context = list(prompt)
    cache = target.new_cache(1)
    if len(context) > 1:
        target.forward_cached(np.array([context[:-1]]), cache)  # everything but the last token
    produced = 0
    while produced < max_new_tokens and len(context) <= block:
        room = min(k, block - len(context), max_new_tokens - produced - 1)
        if model_draft is not None:
            room = min(room, model_draft.room(len(context)))
            drafts, dists = model_draft.propose(context, room, rng) if room > 0 else ([], [])
        else:
            drafts = draft.propose(context, room) if room > 0 else []
            dists = [None] * len(drafts)
        start = cache.length  # == len(context) - 1
        logits = target.forward_cached(np.array([context[-1:] + drafts]), cache)[0]  # (len(drafts) + 1, V)
        accepted, token = verify(logits, drafts, dists, sampling, rng)
        new = drafts[:accepted] + [token]
        cache.length = start + 1 + accepted
        if model_draft is not None:
            model_draft.rollback(len(context) + accepted)
        stats.record(len(drafts), accepted, 0)
        if adaptive:
            k = min(k + 1, MAX_ADAPTIVE_K) if accepted == len(drafts) and drafts else max(1, k - 1)
        for t in new:
            if t == stop_token:
                return
            context.append(t)
            produced += 1
            stats.tokens += 1
            yield t


class SpeculativeBatcher(Scheduler):
    """The Batcher interface (submit, cancel, step, busy, load) over speculative decoding: up to `slots`
    sequences run at once, each with its own caches; every step advances each of them by one token (a
    speculative round is computed when its first token is asked for)."""

    def __init__(self, model: GPT, draft: GPT | NGramDraft, k: int = 4, adaptive: bool = False, slots: int = 8):
        super().__init__(model, slots)
        self.draft, self.k, self.adaptive = draft, k, adaptive
        self.active: list[tuple[Sequence, Iterator[int]]] = []
        self.stats = SpecStats()

    def step(self) -> None:
        with self.lock:
            while self.waiting and len(self.active) < self.slots:
                seq = self.waiting.popleft()
                tokens = speculative_generate(self.model, seq.prompt, max_new_tokens=seq.max_new_tokens,
                                              draft=self.draft, k=self.k, adaptive=self.adaptive,
                                              temperature=seq.temperature, top_k=seq.top_k, top_p=seq.top_p,
                                              rng=seq._rng, stop_token=seq.stop_token, stats=self.stats)
                self.active.append((seq, tokens))
        for seq, tokens in list(self.active):
            reason = "cancelled" if seq.cancelled else None
            if reason is None:
                token = next(tokens, None)
                if token is None:
                    full = len(seq.prompt) + len(seq.tokens) > self.model.config.block_size
                    reason = "length" if full or len(seq.tokens) >= seq.max_new_tokens else "stop"
                else:
                    seq.tokens.append(token)
                    if seq.on_token is not None:
                        seq.on_token(token)
                    if len(seq.tokens) >= seq.max_new_tokens:
                        reason = "length"
            if reason is not None:
                self.active.remove((seq, tokens))
                seq.finish_reason = reason
                if seq.on_finish is not None:
                    seq.on_finish(seq)
