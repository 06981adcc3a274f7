"""The character tokenizer: one id per distinct character of the data, plus BOS in document mode.

Ids are the sorted unique characters (as microgpt numbers them); BOS, when present, is the last id.
It is saved inside config.json of every checkpoint.
"""

from __future__ import annotations


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

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if d.get("type") != "char" or not isinstance(d.get("chars"), str):
            raise ValueError(f"unsupported tokenizer {d.get('type')!r} (expected a character tokenizer)")
        return cls(list(d["chars"]), bool(d.get("bos")))
