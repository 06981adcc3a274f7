"""Continuous batching: many sequences decode together, one token each per step, in a SlotCache.

A Sequence waits until a slot is free, is prefilled on its own, and from then on decodes with every other
active sequence in one GPT.decode_slots call per step. Finished and cancelled sequences leave at the next
step and their slot goes to the next waiting one. Each sequence samples with its own generator, exactly as
`generate` would, so a batched sequence yields the tokens that generating it alone yields.

`generate_batch` runs prompts of different lengths to completion; the server drives a Batcher from a
thread of its own, one step() at a time.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pocketgpt.generate import check_sampling, draw, probs_from_logits
from pocketgpt.model import GPT, SlotCache


@dataclass(eq=False)
class Sequence:
    """One generation request and its progress. on_token(token) and on_finish(sequence) are called from the
    thread that runs step()."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_token: int | None = None
    on_token: Callable[[int], None] | None = None
    on_finish: Callable[[Sequence], None] | None = None
    tokens: list[int] = field(default_factory=list)  # generated so far
    finish_reason: str | None = None  # stop (stop token), length (max tokens or context), cancelled
    cancelled: bool = False
    slot: int | None = None
    _rng: np.random.Generator | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


def check_sequence(model: GPT, seq: Sequence) -> None:
    """Raise ValueError for a request that cannot run on this model."""
    block = model.config.block_size
    if not seq.prompt or len(seq.prompt) > block:
        raise ValueError(f"prompt must hold 1 to {block} tokens (got {len(seq.prompt)})")
    if seq.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 (got {seq.max_new_tokens})")
    check_sampling(seq.temperature, seq.top_k, seq.top_p)


class Scheduler(ABC):
    """What the server drives: submit() and cancel() from any thread, step() from one, busy and load().
    Subclasses keep their running sequences in self.active and start them in step()."""

    def __init__(self, model: GPT, slots: int):
        self.model, self.slots = model, slots
        self.waiting: deque[Sequence] = deque()
        self.active: dict | list = {}
        self.lock = threading.Lock()

    def submit(self, seq: Sequence) -> None:
        check_sequence(self.model, seq)
        seq._rng = np.random.default_rng(seq.seed)
        with self.lock:
            self.waiting.append(seq)

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence at the next step boundary (its slot is freed then)."""
        seq.cancelled = True

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    def load(self) -> int:
        """Sequences running or waiting."""
        return len(self.waiting) + len(self.active)

    @abstractmethod
    def step(self) -> None:
        """One decoding step for every active sequence, admitting waiting ones first."""


class Batcher(Scheduler):
    """Runs Sequences in up to `slots` KV-cache slots, decoding all of them in one call per step."""

    def __init__(self, model: GPT, slots: int = 32):
        super().__init__(model, slots)
        self.cache = SlotCache(model.config, slots, model.dtype)
        self.active: dict[int, Sequence] = {}
        self.pending: dict[int, int] = {}  # slot -> sampled token not yet fed to the model

    def step(self) -> None:
        """Admit waiting sequences into free slots (prefill), then decode one token in every active slot."""
        for seq in list(self.active.values()):
            if seq.cancelled:
                self._finish(seq, "cancelled")
        while True:
            with self.lock:
                free = [s for s in range(self.slots) if s not in self.active]
                if not free or not self.waiting:
                    break
                seq = self.waiting.popleft()
            if seq.cancelled:
                self._finish(seq, "cancelled")
                continue
            seq.slot = free[0]
            self.active[seq.slot] = seq
            self.cache.lengths[seq.slot] = 0
            view = self.cache.slot(seq.slot)
            logits = self.model.forward_cached(np.array([seq.prompt]), view)[0, -1]
            self.cache.lengths[seq.slot] = view.length
            self._emit(seq, logits)
        if self.pending:
            slots = np.array(sorted(self.pending))
            tokens = np.array([self.pending[s] for s in slots])
            self.pending.clear()
            logits = self.model.decode_slots(tokens, slots, self.cache)
            for s, row in zip(slots, logits):
                self._emit(self.active[int(s)], row)

    def _emit(self, seq: Sequence, logits: np.ndarray) -> None:
        """Sample the next token from logits and hand it out; schedule it for decoding if the sequence goes on."""
        if seq.cancelled:
            return self._finish(seq, "cancelled")
        token = draw(probs_from_logits(logits, seq.temperature, seq.top_k, seq.top_p), seq._rng)
        if token == seq.stop_token:
            return self._finish(seq, "stop")
        seq.tokens.append(token)
        if seq.on_token is not None:
            seq.on_token(token)
        if seq.cancelled:
            return self._finish(seq, "cancelled")
        if len(seq.tokens) >= seq.max_new_tokens or self.cache.lengths[seq.slot] >= self.cache.size:
            return self._finish(seq, "length")
        self.pending[seq.slot] = token

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.done:
            return
        seq.finish_reason = reason
        if seq.slot is not None:
            self.active.pop(seq.slot, None)
            self.pending.pop(seq.slot, None)
        if seq.on_finish is not None:
            seq.on_finish(seq)

    def run(self) -> None:
        """Step until every submitted sequence has finished."""
        while self.busy:
            self.step()


def generate_batch(model: GPT, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None, seeds: list[int | None] | None = None,
                   stop_token: int | None = None, slots: int | None = None) -> list[list[int]]:
    """Generate after every prompt (of any lengths) together; prompt i samples with seeds[i]."""
    seeds = seeds if seeds is not None else [None] * len(prompts)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    batcher = Batcher(model, slots or max(1, len(prompts)))
    seqs = [Sequence(list(p), max_new_tokens, temperature, top_k, top_p, s, stop_token) for p, s in zip(prompts, seeds)]
    for seq in seqs:
        batcher.submit(seq)
    batcher.run()
    return [seq.tokens for seq in seqs]
