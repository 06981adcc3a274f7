"""FAST action tokenization (Pertsch et al., 2025): frequency-space compression of action chunks, then BPE.

A chunk is T steps of a D-dimensional action, scaled to about [-1, 1]. Encoding:
  1. the orthonormal DCT-II of each dimension along time (a smooth trajectory puts almost all of its energy
     in the first few coefficients);
  2. scale by `scale` and round to integers (most high-frequency coefficients become 0);
  3. flatten frequency-major: all dimensions' coefficient 0, then all dimensions' coefficient 1, ...
     (long runs of zeros at the end);
  4. byte-pair merges over those integers (`merges` of them), learnt on a corpus of chunks with the same
     algorithm as the text tokenizer's (pocketgpt.tokenizers.bpe).
Decoding reverses each step (the rounding is the only loss: every DCT coefficient is within 0.5 / scale).
Integers outside the range seen in training are clipped to it when encoding.

`naive_encode`/`naive_decode` are the baseline: every value of every step in one of 256 uniform bins.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from pocketgpt.files import write_text
from pocketgpt.tokenizers.bpe import apply_merges, learn_merges


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (n, n): coefficients = M @ signal, signal = M.T @ coefficients."""
    k = np.arange(n)[:, None]
    m = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    m[0] /= np.sqrt(2.0)
    return m


class FASTTokenizer:
    def __init__(self, scale: float, lo: int, hi: int, merges: list[tuple[int, int]], shape: tuple[int, int]):
        self.scale, self.lo, self.hi, self.merges, self.shape = scale, lo, hi, merges, shape
        self.base = hi - lo + 1  # integer q is base token q - lo
        self.ranks = {pair: self.base + i for i, pair in enumerate(merges)}
        self.dct = dct_matrix(shape[0])

    @property
    def vocab_size(self) -> int:
        return self.base + len(self.merges)

    def coefficients(self, chunk: np.ndarray) -> np.ndarray:
        """(T, D) chunk -> the rounded, scaled DCT coefficients flattened frequency-major (T * D,) ints."""
        return np.round(self.dct @ np.asarray(chunk, np.float64) * self.scale).astype(np.int64).reshape(-1)

    def encode(self, chunk: np.ndarray) -> list[int]:
        seq = [int(q) - self.lo for q in np.clip(self.coefficients(chunk), self.lo, self.hi)]
        return apply_merges(seq, self.ranks, self.ranks.__getitem__)  # a merge's token id is also its rank

    def decode(self, tokens: list[int]) -> np.ndarray:
        T, D = self.shape
        stack, ints = list(reversed(tokens)), []
        while stack:
            t = stack.pop()
            if t >= self.base:
                a, b = self.merges[t - self.base]
                stack += [b, a]
            else:
                ints.append(t + self.lo)
        coeffs = np.zeros(T * D)
        coeffs[:min(len(ints), T * D)] = ints[:T * D]  # a model may emit too few or too many
        return self.dct.T @ (coeffs.reshape(T, D) / self.scale)

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps({"scale": self.scale, "lo": self.lo, "hi": self.hi,
                                     "merges": self.merges, "shape": list(self.shape)}))

    @classmethod
    def load(cls, path: str | Path) -> FASTTokenizer:
        d = json.loads(Path(path).read_text())
        return cls(d["scale"], d["lo"], d["hi"], [tuple(m) for m in d["merges"]], tuple(d["shape"]))


def train_fast(chunks: np.ndarray, scale: float = 10.0, merges: int = 512) -> FASTTokenizer:
    """Learn the integer range and up to `merges` merges on chunks (N, T, D)."""
    N, T, D = chunks.shape
    probe = FASTTokenizer(scale, 0, 0, [], (T, D))
    ints = np.stack([probe.coefficients(c) for c in chunks])
    lo, hi = int(ints.min()), int(ints.max())
    seqs = [[int(q) - lo for q in row] for row in ints]
    new_ids = itertools.count(hi - lo + 1)  # merged tokens are numbered after the integers
    learnt = learn_merges(seqs, [1] * len(seqs), merges, lambda pair: next(new_ids), min_count=2)
    return FASTTokenizer(scale, lo, hi, [tuple(map(int, p)) for p in learnt], (T, D))


def naive_encode(chunk: np.ndarray, bins: int = 256) -> list[int]:
    """Each value of each step in one of `bins` uniform bins over [-1, 1] (clipped): T * D tokens."""
    q = np.floor((np.clip(chunk, -1, 1) + 1) / 2 * bins).astype(np.int64)
    return np.minimum(q, bins - 1).reshape(-1).tolist()


def naive_decode(tokens: list[int], shape: tuple[int, int], bins: int = 256) -> np.ndarray:
    T, D = shape
    q = np.zeros(T * D)
    q[:min(len(tokens), T * D)] = tokens[:T * D]
    return ((q + 0.5) / bins * 2 - 1).reshape(T, D)


def spline_trajectories(n: int, steps: int, dims: int = 2, knots: int = 5, seed: int = 0) -> np.ndarray:
    """(n, steps, dims) smooth trajectories in [-1, 1]: Catmull-Rom cubic splines through `knots` random points."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-0.8, 0.8, (n, knots, dims))
    padded = np.concatenate([2 * points[:, :1] - points[:, 1:2], points, 2 * points[:, -1:] - points[:, -2:-1]], 1)
    t = np.linspace(0, knots - 1, steps, endpoint=True)
    seg = np.minimum(t.astype(int), knots - 2)
    u = (t - seg)[None, :, None]
    p0, p1, p2, p3 = (padded[:, seg + j] for j in range(4))
    out = 0.5 * (2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (3 * p1 - p0 - 3 * p2 + p3) * u**3)
    return np.clip(out, -1, 1)
