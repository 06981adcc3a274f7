"""Byte-level BPE (GPT-2's family, which real small models such as SmolLM2 use too): load vocab.json +
merges.txt, encode, decode, and train a new one.

Text is split by a pre-tokenizer (a sequence of patterns, each isolating its matches: GPT-2's, or digits one by
one first, or Llama 3's), each piece's UTF-8 bytes are mapped to printable characters (GPT-2's byte alphabet),
and merges are applied lowest rank first. Special tokens such as <|endoftext|> or <|im_start|> are cut out of
the text before that, as Hugging Face's tokenizers do. A tokenizer also knows its BOS and EOS ids, the ids
that end generation (EOS and end-of-turn tokens) and, for a chat model, its chat template. `apply_merges` and
`learn_merges` are the BPE algorithm itself over any symbols; the FAST action tokenizer (pocketgpt.vla.fast)
uses them over integers.
Not here: normalizers, added-prefix-space options, or BPE that is not byte-level (SentencePiece).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from functools import lru_cache
from pathlib import Path

import regex

from pocketgpt.errors import InputError
from pocketgpt.files import inside, write_bytes

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols (each with an optional leading
# space), and runs of whitespace.
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
DIGIT = regex.compile(r"\p{N}")
LLAMA3 = regex.compile(r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
                       r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
PRE_TOKENIZERS = {"gpt2": (PATTERN,), "digits-gpt2": (DIGIT, PATTERN), "llama3": (LLAMA3,)}
EOT = "<|endoftext|>"
END_OF_TURN = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")  # tokens that end a reply


def split_isolated(pattern, text: str) -> list[str]:
    """text cut at every match of pattern, each match and each stretch between matches a piece."""
    pieces, end = [], 0
    for m in pattern.finditer(text):
        if m.start() > end:
            pieces.append(text[end:m.start()])
        if m.end() > m.start():
            pieces.append(m.group())
        end = m.end()
    if end < len(text):
        pieces.append(text[end:])
    return pieces


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's map from each byte to a printable character: printable Latin-1 bytes stand for themselves,
    the other 68 bytes take the code points 256, 257, ... in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# ----------------------------------------------------------------------------- the algorithm


def merge_pair(seq: Sequence, pair: tuple, new) -> list:
    """seq with every occurrence of the adjacent pair, left to right, replaced by `new`."""
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and seq[i] == pair[0] and seq[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def apply_merges(seq: list, ranks: dict[tuple, int], joined: Callable[[tuple], Hashable]) -> list:
    """Merge the lowest-ranked pair present until none is: BPE encoding of one piece."""
    while len(seq) > 1:
        present = [(ranks[p], p) for p in zip(seq, seq[1:]) if p in ranks]
        if not present:
            break
        best = min(present)[1]
        seq = merge_pair(seq, best, joined(best))
    return seq


def learn_merges(words: list[list], freqs: list[int], max_merges: int, joined: Callable[[tuple], Hashable],
                 min_count: int = 1, progress: Callable[[int, int], None] | None = None) -> list[tuple]:
    """Up to max_merges pairs, most frequent first (ties: the pair that sorts first), each merged into every
    word before the next is counted; pair counts are updated only for the words that hold the pair.
    progress(done, total) is called after each merge."""
    words = [list(w) for w in words]
    pair_count: Counter = Counter()
    where: defaultdict[tuple, set[int]] = defaultdict(set)
    for wi, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_count[pair] += freqs[wi]
            where[pair].add(wi)
    merges: list[tuple] = []
    while len(merges) < max_merges and pair_count:
        best = min(pair_count, key=lambda p: (-pair_count[p], p))
        if pair_count[best] < min_count:
            break
        merges.append(best)
        new = joined(best)
        for wi in where.pop(best):
            w, f = words[wi], freqs[wi]
            for pair in zip(w, w[1:]):  # remove this word's old pairs ...
                pair_count[pair] -= f
                if pair_count[pair] <= 0:
                    del pair_count[pair]
            words[wi] = merged = merge_pair(w, best, new)
            for pair in zip(merged, merged[1:]):  # ... and add its new ones
                pair_count[pair] += f
                where[pair].add(wi)
        if progress is not None:
            progress(len(merges), max_merges)
    return merges


def _join(pair: tuple[str, str]) -> str:
    return pair[0] + pair[1]


# ----------------------------------------------------------------------------- the tokenizer


class BPETokenizer:
    """vocab: token string -> id; merges in rank order; special: tokens cut out of the text before BPE.
    bos and eos default to <|endoftext|>'s id (GPT-2 frames documents with it); generation ends at eos and at
    any END_OF_TURN token of the vocabulary (or at the given stop ids)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], special: list[str] | None = None, *,
                 bos: int | None = None, eos: int | None = None, stop: list[int] | None = None, pre: str = "gpt2",
                 chat_template: str | None = None):
        self.vocab = vocab
        self.inverse = {i: s for s, i in vocab.items()}
        if len(self.inverse) != len(vocab):
            raise InputError("vocab.json maps two tokens to the same id")
        if pre not in PRE_TOKENIZERS:
            raise InputError(f"unknown pre-tokenizer {pre!r} (known: {', '.join(PRE_TOKENIZERS)})")
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.merges = merges
        self.special = [s for s in (special if special is not None else [EOT]) if s in vocab]
        by_length = sorted(self.special, key=len, reverse=True)  # <|im_start|> before a prefix of it
        self._special_re = (regex.compile("(" + "|".join(regex.escape(s) for s in by_length) + ")")
                            if self.special else None)
        self.to_char = byte_alphabet()
        self.to_byte = {c: b for b, c in self.to_char.items()}
        self.pre, self.patterns = pre, PRE_TOKENIZERS[pre]
        self.bos = vocab.get(EOT) if bos is None else bos
        self.eos = self.bos if eos is None else eos
        for name, i in (("bos", self.bos), ("eos", self.eos), *(("stop", i) for i in stop or [])):
            if i is not None and i not in self.inverse:
                raise InputError(f"{name} id {i} is not in the vocabulary")
        ends = {vocab[t] for t in END_OF_TURN if t in vocab} if stop is None else set(stop)
        self.stop_tokens = frozenset(ends | ({self.eos} if self.eos is not None else set()))
        self.chat_template = chat_template
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------------- files

    @classmethod
    def load(cls, vocab_path: str | Path, merges_path: str | Path) -> BPETokenizer:
        try:
            vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
            lines = Path(merges_path).read_text(encoding="utf-8").split("\n")
        except FileNotFoundError as e:
            raise InputError(f"{e.filename} is missing") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{vocab_path} is not valid JSON: {e}") from None
        if not isinstance(vocab, dict) or not all(isinstance(v, int) and v >= 0 for v in vocab.values()):
            raise InputError(f"{vocab_path} must map token strings to non-negative integer ids")
        merges = []
        for n, line in enumerate(lines, 1):
            if not line or line.startswith("#version"):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise InputError(f"{merges_path}:{n}: a merge is two tokens separated by one space")
            merges.append((parts[0], parts[1]))
        return cls(vocab, merges)

    def files(self) -> dict[str, bytes]:
        """GPT-2's tokenizer files, to be written beside config.json."""
        merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges)
        return {"vocab.json": json.dumps(self.vocab, ensure_ascii=False).encode("utf-8"),
                "merges.txt": merges.encode("utf-8")}

    def save(self, folder: str | Path) -> None:
        """Write files() into folder, each atomically."""
        for name, data in self.files().items():
            write_bytes(Path(folder) / name, data)

    def to_dict(self) -> dict:
        d = {"type": "bpe", "vocab": "vocab.json", "merges": "merges.txt", "special": self.special, "bos": self.bos,
             "eos": self.eos, "stop": sorted(self.stop_tokens), "pre": self.pre}
        return {**d, "chat_template": self.chat_template} if self.chat_template else d

    @classmethod
    def from_dict(cls, d: dict, folder: Path) -> BPETokenizer:
        base = cls.load(inside(folder, d.get("vocab", "vocab.json")), inside(folder, d.get("merges", "merges.txt")))
        if "special" not in d:  # written before tokenizers knew their special ids: GPT-2's
            return base
        return cls(base.vocab, base.merges, d["special"], bos=d.get("bos"), eos=d.get("eos"), stop=d.get("stop"),
                   pre=d.get("pre", "gpt2"), chat_template=d.get("chat_template"))

    @property
    def vocab_size(self) -> int:
        return max(self.inverse) + 1

    # ------------------------------------------------------------------------- encode / decode

    def _merge(self, word: str) -> list[int]:
        """Token ids of one pre-tokenized piece, already in the byte alphabet."""
        parts = apply_merges(list(word), self.ranks, _join)
        try:
            return [self.vocab[p] for p in parts]
        except KeyError as e:
            raise InputError(f"token {e.args[0]!r} is produced by the merges but missing from vocab.json") from None

    def pieces(self, text: str) -> list[str]:
        """The pre-tokenizer's pieces of text (no special tokens in it)."""
        pieces = [text]
        for pattern in self.patterns:
            pieces = [p for piece in pieces for p in split_isolated(pattern, piece)]
        return pieces

    def _encode_ordinary(self, text: str) -> list[int]:
        ids = []
        for piece in self.pieces(text):
            cached = self._cache.get(piece)
            if cached is None:
                cached = self._merge("".join(self.to_char[b] for b in piece.encode("utf-8")))
                if len(self._cache) < 100_000:
                    self._cache[piece] = cached
            ids.extend(cached)
        return ids

    def encode(self, text: str) -> list[int]:
        if self._special_re is None:
            return self._encode_ordinary(text)
        ids = []
        for i, chunk in enumerate(self._special_re.split(text)):
            if i % 2:  # the captured special tokens sit at odd positions
                ids.append(self.vocab[chunk])
            elif chunk:
                ids.extend(self._encode_ordinary(chunk))
        return ids

    def decode(self, ids) -> str:
        """Text of token ids; byte sequences that are not valid UTF-8 become U+FFFD, as in Hugging Face."""
        try:
            tokens = [self.inverse[int(i)] for i in ids]
        except KeyError as e:
            raise InputError(f"token id {e.args[0]} is outside the vocabulary of {self.vocab_size}") from None
        special = set(self.special)
        out, pending = [], bytearray()
        for token in tokens:
            if token in special:
                out.append(pending.decode("utf-8", errors="replace"))
                pending.clear()
                out.append(token)
            else:
                pending.extend(self.to_byte[c] for c in token)
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)


def train_bpe(text: str, vocab_size: int, special: tuple[str, ...] = (EOT,),
              progress: Callable[[int, int], None] | None = None) -> BPETokenizer:
    """Learn byte-level merges on `text` until the vocabulary (256 bytes + merges + special) has vocab_size."""
    if vocab_size < 256 + len(special):
        raise InputError(f"vocab_size must be at least {256 + len(special)} (256 bytes and the special tokens)")
    to_char = byte_alphabet()
    counts = Counter(PATTERN.findall(text))
    words = [[to_char[b] for b in w.encode("utf-8")] for w in counts]
    merges = learn_merges(words, list(counts.values()), vocab_size - 256 - len(special), _join, progress=progress)
    vocab = {to_char[b]: b for b in range(256)}
    for pair in merges:
        vocab[_join(pair)] = len(vocab)
    for s in special:
        vocab[s] = len(vocab)
    return BPETokenizer(vocab, merges, list(special))
