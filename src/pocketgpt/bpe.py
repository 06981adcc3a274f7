"""GPT-2's byte-level BPE tokenizer: load vocab.json + merges.txt, encode, decode, and train a new one.

Text is split by GPT-2's pre-tokenizer pattern, each piece's UTF-8 bytes are mapped to printable
characters (GPT-2's byte alphabet), and merges are applied lowest rank first. Special tokens such as
<|endoftext|> are cut out of the text before that, as Hugging Face's GPT2TokenizerFast does.
Not here: normalizers, added-prefix-space options, or any tokenizer other than GPT-2's family.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

import regex

# GPT-2's pre-tokenizer: contractions, letters, numbers, other symbols (each with an optional leading
# space), and runs of whitespace.
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
EOT = "<|endoftext|>"


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


class BPETokenizer:
    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], special: list[str] | None = None):
        self.vocab = vocab
        self.inverse = {i: s for s, i in vocab.items()}
        if len(self.inverse) != len(vocab):
            raise ValueError("vocab.json maps two tokens to the same id")
        self.ranks = {pair: r for r, pair in enumerate(merges)}
        self.merges = merges
        self.special = [s for s in (special if special is not None else [EOT]) if s in vocab]
        self._special_re = (regex.compile("(" + "|".join(regex.escape(s) for s in self.special) + ")")
                            if self.special else None)
        self.to_char = byte_alphabet()
        self.to_byte = {c: b for b, c in self.to_char.items()}
        self.bos = vocab.get(EOT)  # GPT-2 frames documents with <|endoftext|>
        self._cache: dict[str, list[int]] = {}

    # ------------------------------------------------------------------------- files

    @classmethod
    def load(cls, vocab_path: str | Path, merges_path: str | Path) -> BPETokenizer:
        try:
            vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
            lines = Path(merges_path).read_text(encoding="utf-8").split("\n")
        except FileNotFoundError as e:
            raise ValueError(f"{e.filename} is missing") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{vocab_path} is not valid JSON: {e}") from None
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise ValueError(f"{vocab_path} must map token strings to integer ids")
        merges = []
        for n, line in enumerate(lines, 1):
            if not line or line.startswith("#version"):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{merges_path}:{n}: a merge is two tokens separated by one space")
            merges.append((parts[0], parts[1]))
        return cls(vocab, merges)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        (folder / "vocab.json").write_text(json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges),
                                           encoding="utf-8")

    def to_dict(self) -> dict:
        return {"type": "bpe", "vocab": "vocab.json", "merges": "merges.txt"}

    @property
    def vocab_size(self) -> int:
        return max(self.inverse) + 1

    # ------------------------------------------------------------------------- encode / decode

    def _merge(self, word: str) -> list[int]:
        """Token ids of one pre-tokenized piece, already in the byte alphabet."""
        parts = list(word)
        while len(parts) > 1:
            ranked = [(self.ranks.get((a, b), -1), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            ranked = [(r, i) for r, i in ranked if r >= 0]
            if not ranked:
                break
            best = min(ranked)[0]
            pair = self.merges[best]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        try:
            return [self.vocab[p] for p in parts]
        except KeyError as e:
            raise ValueError(f"token {e.args[0]!r} is produced by the merges but missing from vocab.json") from None

    def _encode_ordinary(self, text: str) -> list[int]:
        ids = []
        for piece in PATTERN.findall(text):
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
            raise ValueError(f"token id {e.args[0]} is outside the vocabulary of {self.vocab_size}") from None
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


def train_bpe(text: str, vocab_size: int, special: tuple[str, ...] = (EOT,)) -> BPETokenizer:
    """Learn byte-level merges on `text` until the vocabulary (256 bytes + merges + special) has vocab_size.

    Each step merges the most frequent adjacent pair within pre-tokenized pieces (ties: the pair that
    sorts first), updating pair counts only for the pieces that contain it.
    """
    if vocab_size < 256 + len(special):
        raise ValueError(f"vocab_size must be at least {256 + len(special)} (256 bytes + special tokens)")
    to_char = byte_alphabet()
    counts = Counter(PATTERN.findall(text))
    words = [[to_char[b] for b in w.encode("utf-8")] for w in counts]
    freq = list(counts.values())
    pair_count: Counter = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for wi, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_count[pair] += freq[wi]
            where[pair].add(wi)
    vocab = {to_char[b]: b for b in range(256)}
    merges: list[tuple[str, str]] = []
    while len(vocab) + len(special) < vocab_size and pair_count:
        best = min(pair_count, key=lambda p: (-pair_count[p], p))
        if pair_count[best] <= 0:
            break
        merges.append(best)
        new = best[0] + best[1]
        vocab[new] = len(vocab)
        for wi in list(where[best]):
            w, f = words[wi], freq[wi]
            for pair in zip(w, w[1:]):  # remove this word's old pairs ...
                pair_count[pair] -= f
                if pair_count[pair] <= 0:
                    del pair_count[pair]
            merged, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(w[i])
                    i += 1
            words[wi] = merged
            for pair in zip(merged, merged[1:]):  # ... and add its new ones
                pair_count[pair] += f
                where[pair].add(wi)
        del where[best]
    for s in special:
        vocab[s] = len(vocab)
    return BPETokenizer(vocab, merges, list(special))
