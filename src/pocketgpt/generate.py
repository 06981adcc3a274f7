"""Sampling from a GPT: a generator of token ids over a KV cache (prefill once, then one token per step).

The CLI and the server consume `generate`; they never decode on their own. Randomness comes from a
NumPy Generator (the default) or, to replay microgpt exactly, from a Python `random.Random`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np

from pocketgpt.model import GPT


def probs_from_logits(logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None) -> np.ndarray:
    """Next-token distribution (V,) in float64 after temperature, top-k and top-p (nucleus) filtering.

    temperature 0 puts all mass on the argmax (greedy decoding).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        probs = np.zeros_like(logits)
        probs[np.argmax(logits)] = 1.0
        return probs
    z = logits / temperature
    if top_k is not None and 0 < top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]
        z = np.where(z < kth, -np.inf, z)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = cumulative - probs[order] < top_p  # smallest prefix whose mass reaches top_p
        filtered = np.zeros_like(probs)
        filtered[order[keep]] = probs[order[keep]]
        probs = filtered / filtered.sum()
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator | random.Random) -> int:
    """One index drawn from probs: inverse CDF for NumPy, random.choices for Python (microgpt's way)."""
    if isinstance(rng, random.Random):
        return rng.choices(range(probs.size), weights=probs.tolist())[0]
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))


def generate(model: GPT, prompt: list[int], *, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             rng: np.random.Generator | random.Random | None = None,
             stop_token: int | None = None, sliding: bool = False, cache=None) -> Iterator[int]:
    """Yield up to max_new_tokens sampled ids after `prompt`, stopping early at stop_token (not yielded).

    When the context (block_size) is full, generation stops, or with sliding=True goes on with the
    last block_size tokens as context (re-prefilled each step, as an uncached model that crops would).
    `cache` is an empty cache with write/read (e.g. a 4-bit one); by default a float KVCache.
    """
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature})")
    block = model.config.block_size
    if len(prompt) > block and not sliding:
        raise ValueError(f"prompt of {len(prompt)} tokens does not fit the context of {block} tokens")
    context = list(prompt[-block:])
    rng = rng if rng is not None else np.random.default_rng(seed)
    cache = cache if cache is not None else model.new_cache(1)
    logits = model.forward_cached(np.array([context]), cache)[0, -1]  # prefill -> (V,)
    for _ in range(max_new_tokens):
        token = draw(probs_from_logits(logits, temperature, top_k, top_p), rng)
        if token == stop_token:
            return
        yield token
        context.append(token)
        if cache.length < block:
            logits = model.forward_cached(np.array([[token]]), cache)[0, -1]  # decode one -> (V,)
        elif sliding:
            context = context[-block:]
            cache.length = 0
            logits = model.forward_cached(np.array([context]), cache)[0, -1]
        else:
            return
