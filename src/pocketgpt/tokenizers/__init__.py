"""Tokenizers: characters (char), byte-level BPE (bpe), and rebuilding whichever one a checkpoint names.

A tokenizer describes itself with to_dict() (what config.json holds) and files() (what it writes beside
config.json); `load_tokenizer` reverses that. File names in a description are read inside the
checkpoint's folder only.
"""

from __future__ import annotations

from pathlib import Path

from pocketgpt.errors import InputError
from pocketgpt.tokenizers.bpe import BPETokenizer
from pocketgpt.tokenizers.char import CharTokenizer, UnknownCharacterError

TYPES = {"char": CharTokenizer, "bpe": BPETokenizer}

__all__ = ["BPETokenizer", "CharTokenizer", "UnknownCharacterError", "load_tokenizer"]


def load_tokenizer(d: dict, folder: str | Path):
    """The tokenizer described by d (config.json's "tokenizer"), reading any files it names from folder."""
    if not isinstance(d, dict) or d.get("type") not in TYPES:
        kind = d.get("type") if isinstance(d, dict) else d
        raise InputError(f"unknown tokenizer type {kind!r} (known: {', '.join(TYPES)})")
    return TYPES[d["type"]].from_dict(d, Path(folder))
