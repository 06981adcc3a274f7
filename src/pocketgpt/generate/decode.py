"""Plain decoding: a generator of token ids over a KV cache (prefill once, then one token per step).

The CLI, the server and the batchers consume generators like this one; they never decode on their own.
When the context fills up, generation ends, or with sliding=True goes on with the last block_size tokens
as context (re-prefilled each step, as a model without a cache that crops its input would).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from pocketgpt.generate.request import Request, Sequence, check_context, emit_all
from pocketgpt.generate.sampling import Sampling, next_token
from pocketgpt.model import GPT


def generate(model: GPT, prompt: list[int], *, max_new_tokens: int, sampling: Sampling = Sampling(),
             stop_tokens: Iterable[int] = (), sliding: bool = False, cache=None,
             rng: np.random.Generator | None = None) -> Iterator[int]:
    """Yield up to max_new_tokens sampled ids after `prompt`, stopping early at a stop token (not yielded).

    `cache` is an empty cache with write/read (e.g. a 4-bit one); by default a float KVCache. `rng` replaces
    the sampling seed's stream.
    """
    seq = Sequence(Request(tuple(prompt), max_new_tokens, sampling, frozenset(stop_tokens)), rng=rng)
    return decode(model, seq, sliding, cache)


def decode(model: GPT, seq: Sequence, sliding: bool = False, cache=None) -> Iterator[int]:
    """Decode one Sequence to its end, yielding each token it keeps."""
    prompt = list(seq.request.prompt)
    cache = cache if cache is not None else model.new_cache(1)
    check_context(len(prompt), cache.size, sliding)
    context = prompt[-cache.size:]
    logits = model.forward_cached(np.array([context]), cache, outputs=1)[0, -1]  # prefill -> (V,)
    yield from continue_decoding(model, seq, context, cache, sliding, logits)


def continue_decoding(model: GPT, seq: Sequence, context: list[int], cache, sliding: bool,
                      logits: np.ndarray | None = None) -> Iterator[int]:
    """Go on decoding seq after `context`: from `logits` (V,) for its next token, or when None from the cache,
    which holds every token of the context but the last."""
    while not seq.done:
        if logits is None:
            logits = advance(model, context, cache, sliding)
            if logits is None:
                seq.finish("length")
                return
        yield from emit_all(seq, [next_token(logits, seq.request.sampling, seq.rng)], context)
        logits = None


def advance(model: GPT, context: list[int], cache, sliding: bool) -> np.ndarray | None:
    """Logits (V,) after the context, whose last token the cache does not hold yet: one cached step; when the
    cache is full, with sliding the last cache.size tokens are prefilled again, without it None (the end)."""
    if cache.length < cache.size:
        return model.forward_cached(np.array([context[-1:]]), cache)[0, -1]
    if not sliding:
        return None
    cache.length = 0
    return model.forward_cached(np.array([context[-cache.size:]]), cache, outputs=1)[0, -1]
