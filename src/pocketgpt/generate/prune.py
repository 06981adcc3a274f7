"""Context pruning: a prompt too long for its token budget loses the passages least relevant to its question,
instead of being cut from the front.

A prompt's passages are its paragraphs (text between blank lines; a paragraph over PASSAGE_CHARS characters is
split further at line breaks and sentence ends). The question is the last passage of the last message (of the
text, for a completion prompt); it and every system message are always kept. Every other passage is scored by
the TF-IDF cosine similarity of its words to the question's (lower-cased, English function words left out, idf
over the prompt's own passages), and the most relevant are kept, in their original order, while the rendered
prompt fits the budget; among equally relevant passages the later ones go first, so a conversation keeps its
latest turns. A message left with no passage is dropped.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from pocketgpt.errors import InputError
from pocketgpt.generate.chat import chat_ids
from pocketgpt.generate.text import encode_prompt
from pocketgpt.tokenizers.chat import check_messages

PASSAGE_CHARS = 1000  # a longer paragraph is split at line breaks, then at sentence ends
_PARAGRAPHS = re.compile(r".*?(?:\n[ \t]*\n\s*|\Z)", re.S)  # a paragraph with the blank lines after it
_PIECES = re.compile(r".*?(?:(?<=[.!?])\s+|\n|\Z)", re.S)  # a line or a sentence with the space after it
_WORDS = re.compile(r"\w+")
STOP_WORDS = frozenset(  # English function words: shared by most passages, they say nothing about relevance
    "a an and are as at be but by do does for from had has have he her his how i if in is it its me my no not of on "
    "or our she so than that the their them then there these they this to was we were what when where which who "
    "why will with you your".split())


class PromptTooLong(InputError):
    """Even the parts pruning never drops exceed the budget."""


@dataclass(frozen=True)
class Pruned:
    """What pruning did: the prompt's tokens before and after, and passages kept out of all."""

    tokens_before: int
    tokens_after: int
    passages: int
    kept: int

    def as_dict(self) -> dict:
        return {"prompt_tokens_before": self.tokens_before, "prompt_tokens": self.tokens_after,
                "passages": self.passages, "passages_kept": self.kept}


def passages(text: str) -> list[str]:
    """text split into passages that join back into it exactly (each keeps the space that follows it)."""
    out = []
    for para in _PARAGRAPHS.findall(text):
        if len(para) <= PASSAGE_CHARS:
            out.append(para)
            continue
        piece = ""
        for part in _PIECES.findall(para):
            if piece and len(piece) + len(part) > PASSAGE_CHARS:
                out.append(piece)
                piece = ""
            piece += part
        out.append(piece)
    return [p for p in out if p]


def relevance(texts: list[str], query: str) -> list[float]:
    """TF-IDF cosine similarity of each text's words to the query's (lower-cased, STOP_WORDS left out; idf over
    the texts, smoothed: log((1 + texts) / (1 + texts with the word)) + 1)."""
    bags = [_words(t) for t in texts]
    q = _words(query)
    df = Counter(w for bag in bags for w in bag)
    idf = {w: math.log((1 + len(bags)) / (1 + df[w])) + 1 for w in set(df) | set(q)}
    qv = {w: c * idf[w] for w, c in q.items()}
    qn = math.sqrt(sum(v * v for v in qv.values())) or 1.0
    scores = []
    for bag in bags:
        dot = sum(c * idf[w] * qv[w] for w, c in bag.items() if w in qv)
        norm = math.sqrt(sum((c * idf[w]) ** 2 for w, c in bag.items())) or 1.0
        scores.append(dot / (norm * qn))
    return scores


def _words(text: str) -> Counter:
    return Counter(w for w in _WORDS.findall(text.lower()) if w not in STOP_WORDS)


def prune_messages(tokenizer, messages: list[dict], budget: int, documents: bool = False):
    """(prompt ids, stop strings, Pruned or None): the conversation rendered, pruned to at most `budget` tokens
    if it holds more. PromptTooLong when the system messages and the question alone do not fit."""
    messages = check_messages(messages)
    ids, stops = chat_ids(tokenizer, messages, documents)
    if len(ids) <= budget:
        return ids, stops, None
    units = [(m, p) for m, msg in enumerate(messages) if msg["role"] != "system" for p in passages(msg["content"])]
    fixed = {len(units) - 1} if units else set()  # the question

    def render(kept: set[int]) -> list[int]:
        contents = {m: msg["content"] for m, msg in enumerate(messages) if msg["role"] == "system"}
        for i in sorted(kept):
            m, text = units[i]
            contents[m] = contents.get(m, "") + text
        kept_messages = [{**messages[m], "content": contents[m].rstrip()} for m in sorted(contents)]
        return chat_ids(tokenizer, kept_messages, documents)[0]

    kept, pruned_ids = _select(tokenizer, [p for _, p in units], fixed, budget, render)
    return pruned_ids, stops, Pruned(len(ids), len(pruned_ids), len(units), len(kept))


def prune_text(tokenizer, text: str, budget: int, documents: bool = False):
    """(prompt ids, Pruned or None): a completion prompt encoded, pruned to at most `budget` tokens if it holds
    more; its last passage is the question."""
    ids = encode_prompt(tokenizer, text, documents)
    if len(ids) <= budget:
        return ids, None
    units = passages(text)
    kept, pruned_ids = _select(tokenizer, units, {len(units) - 1}, budget,
                               lambda kept: encode_prompt(tokenizer, "".join(units[i] for i in sorted(kept)),
                                                          documents))
    return pruned_ids, Pruned(len(ids), len(pruned_ids), len(units), len(kept))


def _select(tokenizer, units: list[str], fixed: set[int], budget: int, render) -> tuple[set[int], list[int]]:
    """The passages to keep (always `fixed`), most relevant first, and render(kept) within the budget."""
    base = render(fixed)
    if len(base) > budget:
        raise PromptTooLong(f"the prompt needs {len(base)} tokens with only its system messages and its question; "
                            f"pruning leaves room for {budget}")
    query = " ".join(units[i] for i in fixed)
    scores = relevance(units, query)
    order = sorted((i for i in range(len(units)) if i not in fixed), key=lambda i: (-scores[i], -i))
    lengths = [len(tokenizer.encode(u)) for u in units]
    room = budget - len(base)
    while True:  # passages tokenized alone may take a few tokens more or less once joined: render to be sure
        kept, used = set(fixed), 0
        for i in order:
            if used + lengths[i] <= room:
                kept.add(i)
                used += lengths[i]
        ids = render(kept)
        if len(ids) <= budget:
            return kept, ids
        room -= len(ids) - budget
