"""Text corpora: the embedded ones (names, shakespeare) or a user's UTF-8 file, split into train and validation.

Two modes:
- lines: one document per line. Documents are shuffled with a fixed seed (SPLIT_SEED) and split 90/10, so the
  split never depends on a run's seed.
- text: one continuous text; the first 90% of its characters is train, the last 10% validation (nanoGPT's
  split, and the text llama.cpp's perplexity tool is usually given). Splitting by characters keeps the
  split the same whatever the tokenizer.
Standard library only: tokenizing the text and cutting it into batches is the training layer's job
(pocketgpt.train.batches). Nothing is ever downloaded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pocketgpt.errors import InputError

BUILTIN = {"names": ("names.txt", "lines"), "shakespeare": ("tinyshakespeare.txt", "text")}
MODES = ("lines", "text")
SPLIT_SEED = 1337  # the document shuffle before the train/validation split
TRAIN_FRACTION = 0.9


class DataError(InputError):
    pass


@dataclass(frozen=True)
class Corpus:
    """A split corpus: lists of documents in lines mode, one string each in text mode."""

    name: str
    mode: str
    train: list[str] | str
    val: list[str] | str

    @property
    def text(self) -> str:
        """Every character of the corpus (what a character tokenizer is built from)."""
        return "".join(self.train) + "".join(self.val) if self.mode == "lines" else self.train + self.val


def read_text(spec: str) -> tuple[str, str]:
    """(text, default mode) of a built-in corpus name or a path to a UTF-8 text file."""
    if spec in BUILTIN:
        filename, mode = BUILTIN[spec]
        return resources.files(__name__).joinpath(filename).read_text(encoding="utf-8"), mode
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"{spec}: not a built-in dataset ({', '.join(BUILTIN)}) and no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{spec}: not UTF-8 text (invalid byte at offset {e.start})") from None
    if not text.strip():
        raise DataError(f"{spec}: the file is empty")
    return text, "lines"


def load_corpus(spec: str = "names", mode: str | None = None) -> Corpus:
    text, default_mode = read_text(spec)
    mode = mode or default_mode
    if mode not in MODES:
        raise DataError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
    if mode == "text":
        cut = int(TRAIN_FRACTION * len(text))
        return Corpus(spec, mode, text[:cut], text[cut:])
    docs = [line.strip() for line in text.strip().split("\n") if line.strip()]
    random.Random(SPLIT_SEED).shuffle(docs)
    n_train = max(1, int(TRAIN_FRACTION * len(docs))) if len(docs) > 1 else 1
    return Corpus(spec, mode, docs[:n_train], docs[n_train:] or docs[:1])
