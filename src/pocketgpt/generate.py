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


def encode_prompt(tokenizer, text: str, documents: bool) -> list[int]:
    """The ids a sample starts from: BOS + text for a model of documents (lines mode); for continuous text,
    the text, or when it is empty BOS if the tokenizer has one, else a newline."""
    ids = tokenizer.encode(text)
    if documents:
        return [tokenizer.bos, *ids]
    if ids:
        return ids
    if tokenizer.bos is not None:
        return [tokenizer.bos]
    try:
        return tokenizer.encode("\n")
    except ValueError:
        return [0]


def check_sampling(temperature: float, top_k: int | None = None, top_p: float | None = None) -> None:
    """Raise ValueError for sampling settings that mean nothing."""
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (got {temperature})")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (got {top_k})")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (got {top_p})")


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
    check_sampling(temperature, top_k, top_p)
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


class TextStream:
    """Token ids in, text pieces out, ending at the first stop string (which is not sent).

    Text that could still turn out to be the start of a stop string is held back until it cannot, so a
    client never receives part of a stop string. The ids are decoded whole each time, so a multi-byte
    character split over BPE tokens comes out once complete.
    """

    def __init__(self, decode, stops: list[str] | tuple[str, ...] = ()):
        self.decode, self.stops = decode, [s for s in stops if s]
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already handed out
        self.stopped = False

    def push(self, token: int) -> str:
        """The text that is now safe to send after this token ('' while held back or after a stop)."""
        if self.stopped:
            return ""
        self.ids.append(token)
        text = self.decode(self.ids)
        hits = [i for i in (text.find(s, max(0, self.sent - len(s) + 1)) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            return self._send(text, min(hits))
        hold = 1 if text.endswith("\ufffd") else 0  # an incomplete multi-byte character
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:n]):
                    hold = n
                    break
        return self._send(text, len(text) - hold)

    def flush(self) -> str:
        """What is left once generation has ended without a stop string."""
        return "" if self.stopped else self._send(self.decode(self.ids), None)

    def _send(self, text: str, end: int | None) -> str:
        piece = text[self.sent:end]
        self.sent += len(piece)
        return piece
