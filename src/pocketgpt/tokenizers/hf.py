"""Hugging Face's tokenizer.json (and tokenizer_config.json), read and written as plain JSON (no `tokenizers`
library needed).

- A character tokenizer: a WordLevel model whose pre-tokenizer isolates every character and whose decoder joins
  them (Fuse), BOS as the special token <bos>; PreTrainedTokenizerFast loads it and encodes and decodes exactly
  as pocketgpt does.
- Byte-level BPE: a BPE model (vocab, merges), the added tokens, and a pre-tokenizer among those pocketgpt runs
  (ByteLevel with GPT-2's pattern; Digits one by one, then ByteLevel; a Split by Llama 3's pattern, then
  ByteLevel without its own pattern). tokenizer_config.json holds the chat template and the BOS and EOS tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

from pocketgpt.errors import InputError
from pocketgpt.tokenizers.bpe import LLAMA3, BPETokenizer
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


def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


PRE_JSON = {
    "gpt2": _byte_level(True),
    "digits-gpt2": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                          _byte_level(True)]},
    "llama3": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3.pattern}, "behavior": "Isolated", "invert": False},
        _byte_level(False)]},
}


def pre_name(pre: dict | None, path) -> str:
    """pocketgpt's name for a tokenizer.json pre-tokenizer, or InputError."""
    def byte_level(p: dict, use_regex: bool) -> bool:
        return p.get("type") == "ByteLevel" and not p.get("add_prefix_space") and p.get("use_regex", True) == use_regex

    pre = pre or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if len(parts) == 1 and byte_level(parts[0], True):
        return "gpt2"
    if len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits") \
            and byte_level(parts[1], True):
        return "digits-gpt2"
    if len(parts) == 2 and parts[0].get("type") == "Split" and (parts[0].get("pattern") or {}).get("Regex") \
            == LLAMA3.pattern and parts[0].get("behavior") == "Isolated" and byte_level(parts[1], False):
        return "llama3"
    raise InputError(f"{path}: pre-tokenizer {json.dumps(pre)[:200]} is not one pocketgpt runs")


def bpe_tokenizer_json(tok: BPETokenizer) -> dict:
    added = [{"id": tok.vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for t in tok.special]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": PRE_JSON[tok.pre], "post_processor": None, "decoder": _byte_level(True),
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": tok.vocab, "merges": [f"{a} {b}" for a, b in tok.merges]}}


def tokenizer_config(tok, max_length: int) -> dict:
    """tokenizer_config.json beside a tokenizer.json: the special tokens and the chat template."""
    if isinstance(tok, CharTokenizer):
        special = {"bos_token": BOS_TOKEN, "eos_token": BOS_TOKEN} if tok.bos is not None else {}
        return {"tokenizer_class": "PreTrainedTokenizerFast", **special, "model_max_length": max_length}
    names = {k: tok.inverse[i] for k, i in (("bos_token", tok.bos), ("eos_token", tok.eos)) if i is not None}
    template = {"chat_template": tok.chat_template} if tok.chat_template else {}
    return {"tokenizer_class": "PreTrainedTokenizerFast", **names, "model_max_length": max_length, **template}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e})") from None


def _token(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def load_bpe_json(d: dict, path: Path) -> BPETokenizer:
    model = d["model"]
    vocab = model.get("vocab")
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
    if not isinstance(vocab, dict) or any(len(m) != 2 for m in merges):
        raise InputError(f"{path}: a BPE model needs a vocab and merges of token pairs")
    if model.get("byte_fallback") or (d.get("decoder") or {}).get("type") not in ("ByteLevel", None):
        raise InputError(f"{path}: only byte-level BPE is supported (not SentencePiece-style byte fallback)")
    added = d.get("added_tokens", [])
    for a in added:
        vocab.setdefault(a["content"], a["id"])
    special = [a["content"] for a in added]
    config_path = path.parent / "tokenizer_config.json"
    cfg = _read_json(config_path) if config_path.is_file() else {}
    bos, eos = (vocab.get(_token(cfg.get(k))) for k in ("bos_token", "eos_token"))
    template = cfg.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    template_file = path.parent / "chat_template.jinja"
    if template is None and template_file.is_file():
        template = template_file.read_text(encoding="utf-8")
    return BPETokenizer(vocab, merges, special, bos=bos, eos=eos, pre=pre_name(d.get("pre_tokenizer"), path),
                        chat_template=template)


def load_tokenizer_json(path: str | Path) -> CharTokenizer | BPETokenizer:
    """The tokenizer a tokenizer.json describes: pocketgpt's character layout, or byte-level BPE."""
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
    if model.get("type") == "BPE":
        return load_bpe_json(d, path)
    raise InputError(f"{path}: tokenizer model {model.get('type')!r} is not supported (pocketgpt reads byte-level "
                     "BPE and its own character layout)")
