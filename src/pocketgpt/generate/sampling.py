"""Sampling settings (one frozen type that every decoder, the CLI and the server take) and the next-token draw.

Sampling validates once, here: temperature in [0, 2] (0 is greedy), top_k >= 1, top_p in (0, 1], a seed that
is any 64-bit integer (None or -1: fresh randomness), and at most MAX_STOPS stop strings of at most
MAX_STOP_CHARS characters each. The default temperature, 0.8, is llama.cpp's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketgpt.errors import check_settings

MAX_TEMPERATURE = 2.0
MAX_STOPS, MAX_STOP_CHARS = 4, 256
SEED_RANGE = (-(2**63), 2**64 - 1)  # signed or unsigned 64-bit


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None  # None or -1: a fresh random stream
    stop: tuple[str, ...] = ()  # strings that end the text (not sent)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop) if not isinstance(self.stop, str) else (self.stop,))
        t = self.temperature
        check_settings([
            (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= MAX_TEMPERATURE, "temperature",
             f"must be between 0 and {MAX_TEMPERATURE:g} (got {t})"),
            (self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1), "top_k",
             f"must be >= 1 (got {self.top_k})"),
            (self.top_p is None or (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1), "top_p",
             f"must be in (0, 1] (got {self.top_p})"),
            (self.seed is None or (isinstance(self.seed, int) and SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]),
             "seed", f"must be a 64-bit integer (got {self.seed})"),
            (len(self.stop) <= MAX_STOPS and all(isinstance(s, str) and len(s) <= MAX_STOP_CHARS for s in self.stop),
             "stop", f"must be at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters"),
        ])

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def rng(self, offset: int = 0) -> np.random.Generator:
        """The random stream of this seed (plus offset: the i-th of several samples), fresh if the seed is unset."""
        if self.seed is None or self.seed == -1:
            return np.random.default_rng()
        return np.random.default_rng((self.seed + offset) % 2**64)


def probs_from_logits(logits: np.ndarray, sampling: Sampling) -> np.ndarray:
    """Next-token distribution (V,) in float64 after temperature, top-k and top-p (nucleus) filtering.

    temperature 0 puts all mass on the argmax (greedy decoding).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if sampling.greedy:
        probs = np.zeros_like(logits)
        probs[np.argmax(logits)] = 1.0
        return probs
    z = logits / sampling.temperature
    top_k, top_p = sampling.top_k, sampling.top_p
    if top_k is not None and top_k < z.size:
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


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn from probs by the inverse CDF."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.size - 1))


def next_token(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """The next token after these logits (V,): the argmax when greedy, else a draw."""
    if sampling.greedy:
        return int(np.argmax(logits))
    return draw(probs_from_logits(logits, sampling), rng)
