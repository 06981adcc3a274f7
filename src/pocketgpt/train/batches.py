"""Tokenized datasets and their batches: a corpus (pocketgpt.data) encoded with a tokenizer, cut into training
batches (resumable) and validation batches (deterministic).

- lines: each document framed by BOS (microgpt); a batch is documents padded to the longest, with weights
  that mask the padding.
- text: random windows of block_size for training; every non-overlapping window of the validation text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketgpt.data import Corpus, DataError, load_corpus
from pocketgpt.errors import SettingsError
from pocketgpt.tokenizers import CharTokenizer


@dataclass
class Dataset:
    name: str
    mode: str
    tokenizer: CharTokenizer  # or any tokenizer with encode/decode/bos
    train: list[np.ndarray] | np.ndarray  # lines: one id array per document (BOS-framed); text: one id array
    val: list[np.ndarray] | np.ndarray

    def spec(self) -> dict:
        return {"data": self.name, "mode": self.mode}


def tokenize(corpus: Corpus, tokenizer=None) -> Dataset:
    """Encode a corpus; without a tokenizer, a character tokenizer of the corpus's own characters."""
    lines = corpus.mode == "lines"
    tok = tokenizer or CharTokenizer.from_text(corpus.text, bos=lines)
    if not lines:
        return Dataset(corpus.name, corpus.mode, tok, np.array(tok.encode(corpus.train), np.int64),
                       np.array(tok.encode(corpus.val), np.int64))
    if tok.bos is None:
        raise DataError(f"{corpus.name}: lines mode needs a tokenizer with a BOS token; this model was trained "
                        "on continuous text (use mode text)")

    def frame(docs: list[str]) -> list[np.ndarray]:
        return [np.array([tok.bos, *tok.encode(d), tok.bos], dtype=np.int64) for d in docs]

    return Dataset(corpus.name, corpus.mode, tok, frame(corpus.train), frame(corpus.val))


def load_dataset(spec: str = "names", mode: str | None = None, tokenizer=None) -> Dataset:
    """Read, split and tokenize a dataset. Pass a checkpoint's tokenizer to evaluate or fine-tune its model."""
    return tokenize(load_corpus(spec, mode), tokenizer)


def dataset_of(record: dict, tokenizer, data: str | None = None, mode: str | None = None) -> Dataset:
    """The dataset a checkpoint's data record names (or `data`, `mode`), tokenized with its tokenizer."""
    spec = data or record.get("data")
    if spec is None:
        raise SettingsError([("data", "is needed: this model records no dataset of its own")])
    return load_dataset(spec, mode or (record.get("mode") if data is None else None), tokenizer)


def pad_documents(docs: list[np.ndarray], block_size: int, pad: int):
    """Inputs, targets (B, T) and weights (1 where a target is real) for BOS-framed documents.

    A document longer than block_size + 1 tokens is cut, as microgpt does.
    """
    docs = [d[:block_size + 1] for d in docs]
    T = max(len(d) for d in docs) - 1
    x = np.full((len(docs), T), pad, dtype=np.int64)
    y = np.full((len(docs), T), pad, dtype=np.int64)
    w = np.zeros((len(docs), T), dtype=np.float32)
    for b, d in enumerate(docs):
        n = len(d) - 1
        x[b, :n], y[b, :n], w[b, :n] = d[:-1], d[1:], 1.0
    return x, y, w


class Batches:
    """Training batches. lines: documents in a fresh permutation each epoch; text: random windows.

    The whole position is (epoch, cursor, RNG state): `state()` and `load_state()` round-trip it.
    """

    def __init__(self, dataset: Dataset, batch_size: int, block_size: int, seed: int):
        if dataset.mode == "text" and len(dataset.train) <= block_size:
            raise DataError(f"the training text has {len(dataset.train)} tokens; it needs more than the context "
                            f"({block_size})")
        self.dataset, self.batch_size, self.block_size, self.seed = dataset, batch_size, block_size, seed
        self.rng = np.random.default_rng(seed)
        self.epoch, self.cursor = 0, 0
        self._order = None

    def _permutation(self) -> np.ndarray:
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset.train))
        return self._order

    def next(self):
        """(inputs, targets, weights), each (B, T)."""
        if self.dataset.mode == "text":
            data, T = self.dataset.train, self.block_size
            starts = self.rng.integers(0, len(data) - T, size=self.batch_size)
            x = np.stack([data[s:s + T] for s in starts])
            y = np.stack([data[s + 1:s + T + 1] for s in starts])
            return x, y, np.ones(x.shape, np.float32)
        docs = []
        while len(docs) < self.batch_size:
            order = self._permutation()
            docs.append(self.dataset.train[order[self.cursor]])
            self.cursor += 1
            if self.cursor == len(order):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        return pad_documents(docs, self.block_size, self.dataset.tokenizer.bos)

    def take(self, n: int) -> list:
        """The next n batches, as a list (calibration sets)."""
        return [self.next() for _ in range(n)]

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.epoch, self.cursor, self._order = int(state["epoch"]), int(state["cursor"]), None
        self.rng.bit_generator.state = state["rng"]


def eval_batches(dataset: Dataset, block_size: int, batch_size: int = 64):
    """Deterministic validation batches covering the whole validation split once.

    lines: every validation document; text: consecutive non-overlapping windows of block_size.
    """
    if dataset.mode == "lines":
        docs = dataset.val
        for i in range(0, len(docs), batch_size):
            yield pad_documents(docs[i:i + batch_size], block_size, dataset.tokenizer.bos)
        return
    data, T = dataset.val, block_size
    n_windows = (len(data) - 1) // T
    if n_windows == 0:
        raise DataError(f"the validation text has {len(data)} tokens; it needs more than the context ({T})")
    for i in range(0, n_windows, batch_size):
        starts = range(i * T, min(i + batch_size, n_windows) * T, T)
        x = np.stack([data[s:s + T] for s in starts])
        y = np.stack([data[s + 1:s + T + 1] for s in starts])
        yield x, y, np.ones(x.shape, np.float32)


def count_eval_batches(dataset: Dataset, block_size: int, batch_size: int = 64) -> int:
    """How many batches eval_batches yields (for a progress bar)."""
    n = len(dataset.val) if dataset.mode == "lines" else (len(dataset.val) - 1) // block_size
    return -(-n // batch_size)
