"""The character tokenizer: one id per distinct character of the data, plus BOS in document mode.

Ids are the sorted unique characters (as microgpt numbers them); BOS, when present, comes next, then any
`reserved` ids a model uses for tokens that are not text (the VLA policy's patch and action tokens), which
decode to nothing. The whole vocabulary lives inside a checkpoint's config.json.
"""

from __future__ import annotations

from pathlib import Path

from pocketgpt.errors import InputError


class UnknownCharacterError(InputError):
    pass


class CharTokenizer:
    def __init__(self, chars: list[str] | str, bos: bool, reserved: int = 0):
        self.chars = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise InputError("a character tokenizer needs single characters")
        if not isinstance(reserved, int) or reserved < 0:
            raise InputError(f"reserved must be a count >= 0 (got {reserved!r})")
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.bos = len(self.chars) if bos else None
        self.reserved = reserved
        self.stop_tokens = frozenset() if self.bos is None else frozenset({self.bos})

    @classmethod
    def from_text(cls, text: str, bos: bool) -> CharTokenizer:
        return cls(sorted(set(text)), bos)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + (self.bos is not None) + self.reserved

    def encode(self, text: str) -> list[int]:
        try:
            return [self.index[c] for c in text]
        except KeyError as e:
            raise UnknownCharacterError(f"character {e.args[0]!r} is not in the vocabulary "
                                        f"({len(self.chars)} characters seen in the training data)") from None

    def decode(self, ids) -> str:
        chars, n, size = self.chars, len(self.chars), self.vocab_size
        out = []
        for i in ids:
            if not 0 <= i < size:
                raise InputError(f"token id {i} is outside the vocabulary of {size}")
            if i < n:
                out.append(chars[i])
        return "".join(out)

    def to_dict(self) -> dict:
        d = {"type": "char", "chars": "".join(self.chars), "bos": self.bos is not None}
        return {**d, "reserved": self.reserved} if self.reserved else d

    def files(self) -> dict[str, bytes]:
        """Files to save beside config.json: none, the whole vocabulary is in to_dict()."""
        return {}

    @classmethod
    def from_dict(cls, d: dict, folder: Path | None = None) -> CharTokenizer:
        if not isinstance(d.get("chars"), str):
            raise InputError("a character tokenizer needs its \"chars\" string")
        return cls(list(d["chars"]), bool(d.get("bos")), d.get("reserved", 0))
