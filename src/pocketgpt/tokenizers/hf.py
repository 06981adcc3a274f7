"""Hugging Face's tokenizer.json, read and written as plain JSON (no `tokenizers` library needed).

Written: a character tokenizer as a WordLevel model whose pre-tokenizer isolates every character and whose
decoder joins them (Fuse), BOS as the special token <bos>; PreTrainedTokenizerFast loads it and encodes and
decodes exactly as pocketgpt does. Read: that layout back into a CharTokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from pocketgpt.errors import InputError
from pocketgpt.tokenizers.char import CharTokenizer

BOS_TOKEN = "<bos>"  # how a character tokenizer's BOS is spelled in tokenizer.json
EVERY_CHARACTER = r"[\s\S]"


def char_tokenizer_json(tok: CharTokenizer) -> dict:
    vocab = {c: i for i, c in enumerate(tok.chars)}
    added = []
    if tok.bos is not None:
        vocab[BOS_TOKEN] = tok.bos
        added.append({"id": tok.bos, "content": BOS_TOKEN, "single_word": False, "lstrip": False, "rstrip": False,
                      "normalized": False, "special": True})
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": EVERY_CHARACTER}, "behavior": "Isolated",
                              "invert": False},
            "post_processor": None, "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}}  # never produced


def load_tokenizer_json(path: str | Path) -> CharTokenizer:
    """The tokenizer a tokenizer.json describes (the character layout that char_tokenizer_json writes)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        model = d["model"]
    except FileNotFoundError:
        raise InputError(f"{path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not a tokenizer.json ({e})") from None
    pre = d.get("pre_tokenizer") or {}
    if model.get("type") == "WordLevel" and (pre.get("pattern") or {}).get("Regex") == EVERY_CHARACTER:
        vocab = model.get("vocab", {})
        chars = sorted((i, c) for c, i in vocab.items() if c != BOS_TOKEN)
        if [i for i, _ in chars] != list(range(len(chars))) or any(len(c) != 1 for _, c in chars):
            raise InputError(f"{path}: a character vocabulary must number its characters 0, 1, 2, ... in order")
        bos = vocab.get(BOS_TOKEN)
        if bos is not None and bos != len(chars):
            raise InputError(f"{path}: {BOS_TOKEN} must follow the characters (id {len(chars)}, got {bos})")
        tok = CharTokenizer([c for _, c in chars], bos=bos is not None)
        if tok.chars != [c for _, c in chars]:
            raise InputError(f"{path}: the characters must be in sorted order")
        return tok
    raise InputError(f"{path}: tokenizer model {model.get('type')!r} with this pre-tokenizer is not supported "
                     "(pocketgpt reads its own character layout; BPE folders need vocab.json and merges.txt)")
