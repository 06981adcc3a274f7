"""The character tokenizer (one id per distinct character of the data, plus BOS in document mode),
and `load_tokenizer`, which rebuilds whichever tokenizer a checkpoint names.

Character ids are the sorted unique characters (as microgpt numbers them); BOS, when present, is the
last id. A character tokenizer lives inside config.json; a BPE tokenizer (pocketgpt.bpe) in vocab.json
and merges.txt beside it.
"""

from __future__ import annotations

from pathlib import Path


class UnknownCharacterError(ValueError):
    pass


class CharTokenizer:
    def __init__(self, chars: list[str] | str, bos: bool):
        self.chars = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("a character tokenizer needs single characters")
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.bos = len(self.chars) if bos else None

    @classmethod
    def from_text(cls, text: str, bos: bool) -> CharTokenizer:
        return cls(sorted(set(text)), bos)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + (self.bos is not None)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise UnknownCharacterError(f"character {e.args[0]!r} is not in the vocabulary "
                                        f"({len(self.chars)} characters seen in the training data)") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids if i != self.bos)

    def to_dict(self) -> dict:
        return {"type": "char", "chars": "".join(self.chars), "bos": self.bos is not None}

    def save(self, folder: str | Path) -> None:
        """Nothing to write: the whole vocabulary is in to_dict()."""

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if d.get("type") != "char" or not isinstance(d.get("chars"), str):
            raise ValueError(f"unsupported tokenizer {d.get('type')!r} (expected a character tokenizer)")
        return cls(list(d["chars"]), bool(d.get("bos")))


def load_tokenizer(d: dict, folder: str | Path):
    """The tokenizer described by d (config.json's "tokenizer"), reading any files it names from folder."""
    if d.get("type") == "bpe":
        from pocketgpt.bpe import BPETokenizer

        folder = Path(folder)
        return BPETokenizer.load(folder / d.get("vocab", "vocab.json"), folder / d.get("merges", "merges.txt"))
    return CharTokenizer.from_dict(d)
