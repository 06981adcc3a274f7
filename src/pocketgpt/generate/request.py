"""A generation request and its progress, shared by every decoder (plain, batched, speculative) and the server.

A Request is what was asked: the prompt's token ids, how many new tokens at most, the Sampling settings and
the token ids that end generation (EOS, an end-of-turn token). A Sequence is one request being decoded:
`emit(token)` is the one place that decides what a sampled token does (ends the sequence at a stop token,
is handed out, ends it at max_new_tokens), so every decoder stops for the same reasons.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from pocketgpt.errors import InputError, check_settings
from pocketgpt.generate.sampling import Sampling


@dataclass(frozen=True)
class Request:
    prompt: tuple[int, ...]
    max_new_tokens: int
    sampling: Sampling = Sampling()
    stop_tokens: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))
        object.__setattr__(self, "stop_tokens", frozenset(self.stop_tokens))
        check_settings([(len(self.prompt) >= 1, "prompt", "must hold at least one token"),
                        (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens",
                         f"must be >= 1 (got {self.max_new_tokens})")])


def check_context(prompt_tokens: int, block_size: int, sliding: bool) -> None:
    """Raise unless a prompt of this many tokens fits the context (any length fits when sliding)."""
    if not sliding and prompt_tokens > block_size:
        raise InputError(f"the prompt has {prompt_tokens} tokens; this model's context holds {block_size}")


@dataclass(eq=False)
class Sequence:
    """One request being decoded. on_token(token) and on_finish(sequence) are called from the thread that
    decodes."""

    request: Request
    on_token: Callable[[int], None] | None = None
    on_finish: Callable[[Sequence], None] | None = None
    tokens: list[int] = field(default_factory=list)  # generated so far
    finish_reason: str | None = None  # stop (a stop token), length (max_new_tokens or the context), cancelled
    cancelled: bool = False
    slot: int | None = None
    rng: np.random.Generator | None = None

    def __post_init__(self) -> None:
        if self.rng is None:
            self.rng = self.request.sampling.rng()

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def emit(self, token: int) -> bool:
        """Take a sampled token; True while the sequence goes on. A stop token ends it and is not kept."""
        if self.done:
            return False
        if self.cancelled:
            return self.finish("cancelled")
        if token in self.request.stop_tokens:
            return self.finish("stop")
        self.tokens.append(token)
        if self.on_token is not None:
            self.on_token(token)
        if self.cancelled:
            return self.finish("cancelled")
        if len(self.tokens) >= self.request.max_new_tokens:
            return self.finish("length")
        return True

    def would_keep(self, tokens: list[int]) -> int:
        """How many of tokens emit() would keep, one after another (unless the sequence is cancelled meanwhile)."""
        if self.done or self.cancelled:
            return 0
        n = next((i for i, t in enumerate(tokens) if t in self.request.stop_tokens), len(tokens))
        return min(n, self.request.max_new_tokens - len(self.tokens))

    def finish(self, reason: str) -> bool:
        """End the sequence (once); returns False, so that `return seq.finish(...)` reads as stopping."""
        if not self.done:
            self.finish_reason = reason
            if self.on_finish is not None:
                self.on_finish(self)
        return False


def emit_all(seq: Sequence, tokens: Iterable[int], context: list[int]) -> Iterator[int]:
    """Hand tokens to seq one by one, yielding (and appending to context) each one it keeps, until it ends."""
    for token in tokens:
        kept = len(seq.tokens)
        going = seq.emit(token)
        if len(seq.tokens) > kept:
            context.append(token)
            yield token
        if not going:
            return
