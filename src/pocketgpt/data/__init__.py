"""Datasets: the embedded ones (names, shakespeare) or a user's UTF-8 text file, in one of two modes.

- lines: one document per line, each framed by BOS (microgpt). Documents are split 90/10 into
  train/validation after a shuffle with a fixed seed, so the split never depends on the run's seed.
- text: one continuous text, cut into random windows of block_size (nanoGPT's shakespeare_char);
  the first 90% is train, the last 10% validation.
Batches come from `Batches`, whose position is saved in checkpoints so that a resumed run continues
exactly. Nothing is ever downloaded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from pocketgpt.tokenizer import CharTokenizer

BUILTIN = {"names": ("names.txt", "lines"), "shakespeare": ("tinyshakespeare.txt", "text")}
MODES = ("lines", "text")
SPLIT_SEED = 1337  # the document shuffle before the train/validation split
TRAIN_FRACTION = 0.9


class DataError(ValueError):
    pass


def read_text(spec: str) -> tuple[str, str]:
    """(text, default mode) of a built-in dataset name or a path to a UTF-8 text file."""
    if spec in BUILTIN:
        filename, mode = BUILTIN[spec]
        return resources.files(__name__).joinpath(filename).read_text(encoding="utf-8"), mode
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"--data {spec}: not a built-in dataset ({', '.join(BUILTIN)}) and no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"--data {spec}: not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text.strip():
        raise DataError(f"--data {spec}: the file is empty")
    return text, "lines"


@dataclass
class Dataset:
    name: str
    mode: str
    tokenizer: CharTokenizer
    train: list[np.ndarray] | np.ndarray  # lines: one id array per document (BOS-framed); text: one id array
    val: list[np.ndarray] | np.ndarray

    def spec(self) -> dict:
        return {"data": self.name, "mode": self.mode}


def load_dataset(spec: str = "names", mode: str | None = None, tokenizer: CharTokenizer | None = None) -> Dataset:
    """Read, tokenize and split a dataset. Pass the checkpoint's tokenizer to evaluate a trained model."""
    text, default_mode = read_text(spec)
    mode = mode or default_mode
    if mode not in MODES:
        raise DataError(f"--mode must be one of {', '.join(MODES)} (got {mode!r})")
    if mode == "lines":
        docs = [line.strip() for line in text.strip().split("\n") if line.strip()]
        tok = tokenizer or CharTokenizer.from_text("".join(docs), bos=True)
        if tok.bos is None:
            raise DataError(f"--data {spec}: lines mode needs a tokenizer with BOS; "
                            "this model was trained in text mode")
        random.Random(SPLIT_SEED).shuffle(docs)
        framed = [np.array([tok.bos, *tok.encode(d), tok.bos], dtype=np.int64) for d in docs]
        n_train = max(1, int(TRAIN_FRACTION * len(framed))) if len(framed) > 1 else 1
        return Dataset(spec, mode, tok, framed[:n_train], framed[n_train:] or framed[:1])
    tok = tokenizer or CharTokenizer.from_text(text, bos=False)
    ids = np.array(tok.encode(text), dtype=np.int64)
    n_train = int(TRAIN_FRACTION * len(ids))
    return Dataset(spec, mode, tok, ids[:n_train], ids[n_train:])


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
            raise DataError(f"the training text has {len(dataset.train)} tokens; it needs more than block_size "
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
        raise DataError(f"the validation text has {len(data)} tokens; it needs more than block_size ({T})")
    for i in range(0, n_windows, batch_size):
        starts = range(i * T, min(i + batch_size, n_windows) * T, T)
        x = np.stack([data[s:s + T] for s in starts])
        y = np.stack([data[s + 1:s + T + 1] for s in starts])
        yield x, y, np.ones(x.shape, np.float32)
