"""Continuous batching: many sequences decode together, one token each per step, in a SlotCache.

A Sequence waits until a slot is free, is prefilled on its own, and from then on decodes with every other
active sequence in one GPT.decode_slots call per step. Finished and cancelled sequences leave at the next
step and their slot goes to the next waiting one. Each sequence samples with its own generator, exactly as
`generate` would, so a batched sequence yields the tokens that generating it alone yields.

`generate_batch` runs prompts of different lengths to completion; the server drives a scheduler from a
thread of its own, one step() at a time.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable
from dataclasses import replace

import numpy as np

from pocketgpt.generate.prefix import PrefixCache
from pocketgpt.generate.request import Request, Sequence, check_context
from pocketgpt.generate.sampling import Sampling, next_token
from pocketgpt.model import GPT, SlotCache


class Scheduler(ABC):
    """What the server drives: submit() and cancel() from any thread, step() from one, busy and load().
    Subclasses keep their running sequences in self.active and start them in step()."""

    def __init__(self, model: GPT, slots: int, context: int | None = None):
        self.model, self.slots = model, slots
        self.context = min(context or model.config.block_size, model.config.block_size)  # positions a sequence may fill
        self.waiting: deque[Sequence] = deque()
        self.active: dict = {}
        self.lock = threading.Lock()

    def submit(self, seq: Sequence) -> None:
        check_context(len(seq.request.prompt), self.context, sliding=False)
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

    def admit(self) -> Sequence | None:
        """The next waiting sequence that still wants to run, or None when none waits or no slot is free."""
        while True:
            with self.lock:
                if not self.waiting or len(self.active) >= self.slots:
                    return None
                seq = self.waiting.popleft()
            if not seq.cancelled:
                return seq
            seq.finish("cancelled")

    def run(self) -> None:
        """Step until every submitted sequence has finished."""
        while self.busy:
            self.step()

    @abstractmethod
    def step(self) -> None:
        """One decoding step for every active sequence, admitting waiting ones first."""


class Batcher(Scheduler):
    """Runs Sequences in up to `slots` KV-cache slots of `context` positions each (default: the model's context),
    decoding all of them in one call per step. With a PrefixCache, a prompt's opening blocks that an earlier
    sequence computed are copied in instead of prefilled."""

    def __init__(self, model: GPT, slots: int = 32, context: int | None = None, prefix: PrefixCache | None = None):
        super().__init__(model, slots, context)
        self.cache = SlotCache(model.config, slots, model.dtype, self.context)
        self.prefix = prefix
        self.active: dict[int, Sequence] = {}
        self.pending: dict[int, int] = {}  # slot -> sampled token not yet fed to the model

    def step(self) -> None:
        """Admit waiting sequences into free slots (prefill), then decode one token in every active slot."""
        for seq in list(self.active.values()):
            if seq.cancelled:
                self._leave(seq, "cancelled")
        while (seq := self.admit()) is not None:
            seq.slot = next(s for s in range(self.slots) if s not in self.active)
            self.active[seq.slot] = seq
            self.cache.lengths[seq.slot] = 0
            view, prompt = self.cache.slot(seq.slot), seq.request.prompt
            start = self.prefix.restore(prompt, view) if self.prefix is not None else 0
            logits = self.model.forward_cached(np.array([prompt[start:]]), view, outputs=1)[0, -1]
            self.cache.lengths[seq.slot] = view.length
            if self.prefix is not None:
                self.prefix.store(prompt, view)
            self._emit(seq, logits)
        if self.pending:
            slots = np.array(sorted(self.pending))
            tokens = np.array([self.pending[s] for s in slots])
            self.pending.clear()
            logits = self.model.decode_slots(tokens, slots, self.cache)
            for s, row in zip(slots, logits):
                self._emit(self.active[int(s)], row)

    def _emit(self, seq: Sequence, logits: np.ndarray) -> None:
        """Sample the next token and hand it to the sequence; schedule it for decoding if the sequence goes on."""
        if seq.emit(next_token(logits, seq.request.sampling, seq.rng)):
            if self.cache.lengths[seq.slot] >= self.cache.size:
                seq.finish("length")
            else:
                self.pending[seq.slot] = seq.tokens[-1]
                return
        self._leave(seq, seq.finish_reason)

    def _leave(self, seq: Sequence, reason: str) -> None:
        seq.finish(reason)
        if self.prefix is not None and self.active.get(seq.slot) is seq:  # the blocks its own tokens completed
            self.prefix.store(seq.request.prompt + tuple(seq.tokens), self.cache.slot(seq.slot))
        self.active.pop(seq.slot, None)
        self.pending.pop(seq.slot, None)


def generate_batch(model: GPT, prompts: list[list[int]], *, max_new_tokens: int, sampling: Sampling = Sampling(),
                   seeds: list[int | None] | None = None, stop_tokens: Iterable[int] = (),
                   slots: int | None = None) -> list[list[int]]:
    """Generate after every prompt (of any lengths) together; prompt i samples with seeds[i] (else the
    sampling's seed)."""
    seeds = seeds if seeds is not None else [sampling.seed] * len(prompts)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    batcher = Batcher(model, slots or max(1, len(prompts)))
    seqs = [Sequence(Request(tuple(p), max_new_tokens, replace(sampling, seed=seed), frozenset(stop_tokens)))
            for p, seed in zip(prompts, seeds)]
    for seq in seqs:
        batcher.submit(seq)
    batcher.run()
    return [seq.tokens for seq in seqs]
