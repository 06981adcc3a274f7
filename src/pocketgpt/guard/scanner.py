"""A rule-based prompt-injection scanner for tool outputs and user inputs: spans, the rule that found each,
and a score in [0, 1] (1 - prod(1 - weight) over the rules that fired).

Rules: instruction-override phrasing, its key words matched up to one typo each ("iunstructions"); role and
system-prompt spoofing (chat-template tokens, "SYSTEM:" lines, fake authority blocks such as
"###(system_message)", "<INFORMATION>" or "[ADMIN]"); invisible and bidirectional Unicode; encoded payloads
(base64, hex, URL-encoding) whose decoding itself trips a rule; markdown images and links that carry data in
their query string; tool-call look-alikes (JSON or XML that names a tool or function). The policy decides
what a hit does. scan_value and strip_value take a tool's output as it is: every string in it, dict keys
included, nested in lists and dicts.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

_I = re.IGNORECASE

INVISIBLE = "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]"
AUTHORITY = ("system|system[ _-]?(message|prompt|note|instructions?|override|update)|admin(istrator)?|developer"
             "|information|important[ _-]?(message|instructions?)|instructions?|root|sudo|assistant[ _-]?directive")
AUTHORITY_HEADING = ("system[ _-]?(message|prompt|note|instructions?|override|update)"
                     "|admin(istrator)?[ _-]?(message|note)")
# A rule: a pattern, and what any match of it contains. Every match contains one of the whole words `words` or of
# the substrings `marks` (lower case) and is no longer than `reach` characters, so the pattern runs only within
# `reach` of where one occurs (reach None: on the whole text; words None: on the whole text unless it is ASCII).
# `requires` are further groups of which every match holds a member each (a word, or a substring where it is not
# all letters), so a text missing a whole group skips the rule: "ignore" alone does not run the override rule,
# which also needs an object ("all", "previous") and a noun ("instructions"). An ASCII text's words are found in
# one split of its letters and looked up in one set, and its whole words located in C; a Python regular expression
# costs far more a character than either, so a pattern runs only where a match can be. A match padded past its
# reach (hundreds of spaces inside one) is not found: the scanner is a second line, behind the data-flow rules.
@dataclass(frozen=True)
class Rule:
    name: str
    weight: float
    rx: re.Pattern
    words: frozenset[str] | None
    marks: tuple[str, ...]
    reach: int | None
    requires: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = ()  # each group's words, and its other parts
    # Where a match begins, so that the pattern is tried there alone and not over a window: "word", at the word
    # found; "line", at the start of its line, when only blanks come before it there; a tuple of words, at one of
    # them starting within `reach` before the end of the word found.
    starts: str | tuple[str, ...] | None = None


OVERRIDE_VERBS = ("ignore", "disregard", "forget", "override", "bypass", "skip")
OVERRIDE_OBJECTS = ("previous", "prior", "above", "earlier", "all", "your", "the", "any")
OVERRIDE_NOUNS = ("instruction", "instructions", "prompt", "prompts", "rules", "guidelines", "directions",
                  "context", "task", "tasks")
NEW_WORDS = ("new", "updated", "real", "actual", "important", "urgent")
ORDER_WORDS = ("instruction", "instructions", "task", "tasks", "order", "orders", "directive", "directives")
AUTHORITY_WORDS = ("system", "admin", "administrator", "developer", "information", "important", "instruction",
                   "instructions", "root", "sudo", "assistant")


def _rule(name, weight, rx, flags, words, marks, reach, *requires, starts=None) -> Rule:
    groups = tuple((frozenset(p for p in g if p.isalpha()), tuple(p for p in g if not p.isalpha())) for g in requires)
    return Rule(name, weight, re.compile(rx, flags), None if words is None else frozenset(words), marks, reach,
                groups, starts)


RULES = [
    _rule("override", 0.9, r"\b(ignore|disregard|forget|override|bypass|skip)\b[^.\n]{0,40}?"
                           r"\b(previous|prior|above|earlier|all|your|the|any)\b[^.\n]{0,25}?"
                           r"\b(instructions?|prompts?|rules|guidelines|directions|context|tasks?)\b", _I,
          OVERRIDE_VERBS, (), 120, OVERRIDE_OBJECTS, OVERRIDE_NOUNS, starts="word"),
    _rule("override", 0.8, r"\b(new|updated|real|actual|important|urgent)\s+(instructions?|task|orders?|directive)s?"
                           r"\s*[:!-]", _I, NEW_WORDS, (), 80, ORDER_WORDS, (":", "!", "-"), starts="word"),
    _rule("override", 0.6, r"\byou\s+(are|must)\s+now\b|\bfrom\s+now\s+on,?\s+you\b|\bdo\s+not\s+tell\s+the\s+user\b",
          _I, ("now", "tell"), (), 60, ("you", "user"), starts=("you", "from", "do")),
    _rule("override", 0.7, r"\b(as|you are) an? (ai|assistant|agent)[^.\n]{0,40}\b(must|should|will)\b[^.\n]{0,30}"
                           r"\b(send|forward|transfer|delete|share|pay|email|post)\b", _I,
          ("ai", "assistant", "agent"), (), 140, ("must", "should", "will"),
          ("send", "forward", "transfer", "delete", "share", "pay", "email", "post")),
    _rule("role-spoof", 0.8, r"<\|im_start\|>\s*(system|assistant|user|developer|tool)\b|<\|(system|assistant|user)\|>"
                             r"|\[/?INST\]|<</?SYS>>|^\s*#{2,}\s*(system|instruction)", _I | re.M,
          ("system", "instruction", "instructions"), ("<|", "inst]", "sys>>"), 80, ("<|", "inst]", "sys>>", "#")),
    _rule("role-spoof", 0.4, r"<\|(im_start|im_end|endoftext|eot_id)\|>", _I, (), ("<|",), 20),  # tokenizers' too
    _rule("role-spoof", 0.7, r"^\s*(system|assistant|developer)\s*(prompt|message)?\s*:", _I | re.M,
          ("system", "assistant", "developer"), (), 60, (":",), starts="line"),
    _rule("role-spoof", 0.6, r"\b(system prompt|developer mode|jailbreak)\b", _I, ("system", "developer", "jailbreak"),
          (), 30, ("prompt", "mode", "jailbreak"), starts="word"),
    _rule("role-spoof", 0.8, rf"^[ \t]*#+[ \t]*([(\[{{<][ \t]*({AUTHORITY})[ \t]*[)\]}}>]|({AUTHORITY_HEADING})\b)"
                             rf"|<[ \t]*/?[ \t]*({AUTHORITY})[ \t]*>|\[[ \t]*/?({AUTHORITY})[ \t]*\]", _I | re.M,
          AUTHORITY_WORDS, (), 80, ("#", "<", "[")),
    _rule("role-spoof", 0.6, r"\b(this is an? (important|urgent) (message|notice|instruction) from)\b"
                             r"|\bbefore you (can )?(solve|finish|complete|continue)\b[^.\n]{0,40}\b(task|request)", _I,
          ("important", "urgent", "before"), (), 100, ("message", "notice", "instruction", "task", "request"),
          starts=("this", "before")),
    _rule("invisible-unicode", 0.9, INVISIBLE, 0, None, (), None),  # run unless the text is ASCII
    _rule("markdown-exfiltration", 0.9, r"!\[[^\]]*\]\(\s*https?://[^)\s]*\?[^)\s]*=[^)\s]*\)", _I, (), ("](",),
          None, ("?",), ("=",)),
    _rule("markdown-exfiltration", 0.5, r"\[[^\]]*\]\(\s*https?://[^)\s]*\?[^)\s]*=[^)\s]{16,}\)", _I, (),
          ("](",), None, ("?",), ("=",)),
    _rule("tool-call", 0.8, r"[{,]\s*\"(tool|function|function_call|tool_calls?|name|action)\"\s*:\s*\"?"
                            r"[a-z_]+\"?\s*,\s*\"(arguments|args|parameters|input)\"", _I,
          (), ('"tool', '"function', '"name"', '"action"'), 120, ("arguments", "args", "parameters", "input")),
    _rule("tool-call", 0.8, r"</?(tool_call|function_call|tool_use|invoke)\b", _I, ("invoke",),
          ("tool_call", "function_call", "tool_use"), 20, ("<",)),
    _rule("tool-call", 0.6, r"\b(call|invoke|run|execute|use)\s+(the\s+)?`?[a-z]+_[a-z_]+`?\s*(\(|tool\b|with\b)", _I,
          ("call", "invoke", "run", "execute", "use"), (), 80, ("_",), starts="word"),
]
BASE64_LETTERS = bytes(ord("a") if chr(c).isalnum() and c < 128 or chr(c) in "+/" else 32 for c in range(256))


def _base64_run(text: str) -> bool:
    """Whether text holds 24 base64 letters in a row, as every base64 or hex payload below does (checked in C:
    the letters mapped to one, then a substring search)."""
    return b"a" * 24 in text.encode("utf-8", "replace").translate(BASE64_LETTERS)


ENCODED = [  # (kind, pattern, what a text holds wherever the pattern matches in it)
    ("base64", re.compile(r"[A-Za-z0-9+/]{24,}={0,2}"), _base64_run),
    ("hex", re.compile(r"\b(?:[0-9a-fA-F]{2}){16,}\b"), _base64_run),
    ("url-encoding", re.compile(r"(?:%[0-9a-fA-F]{2}[^%\s]{0,3}){6,}"), lambda text: text.count("%") >= 6),
]
ENCODED_WEIGHT = 0.9
MAX_SCAN_CHARS = 1 << 20


@dataclass(frozen=True)
class Finding:
    rule: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class ScanResult:
    score: float
    findings: tuple[Finding, ...]

    @property
    def rules(self) -> list[str]:
        return sorted({f.rule for f in self.findings})


def _decode(kind: str, s: str) -> str | None:
    try:
        if kind == "base64":
            raw = base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
        elif kind == "hex":
            raw = binascii.unhexlify(s)
        else:
            return urllib.parse.unquote(s)
        text = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return text if text.isprintable() or "\n" in text else None


# ----------------------------------------------------------------------------- override words, up to one typo
WORD = re.compile(r"[A-Za-z]+")


def _variants(word: str) -> set[str]:
    """word and every string one edit from it (insert, delete, substitute a letter, swap two neighbours)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    cuts = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    out = {a + b[1:] for a, b in cuts if b} | {a + b[1] + b[0] + b[2:] for a, b in cuts if len(b) > 1}
    out |= {a + c + b[1:] for a, b in cuts if b for c in letters} | {a + c + b for a, b in cuts for c in letters}
    return out | {word}


# English words one edit from a target, which are words and not typos ("I forgot your instructions").
NEIGHBOURS = frozenset({"ignored", "ignores", "forgot", "forgets", "forged", "forges", "overrode", "overrides",
                        "disregards", "precious", "content", "contest"})


def _fuzzy_set(targets: tuple[str, ...]) -> frozenset[str]:
    """targets, and the variants of at least five letters of those of at least six (one edit turns "all" into
    "ill", so short words must match exactly), less the English words among them."""
    return frozenset(targets) | frozenset(v for t in targets if len(t) >= 6 for v in _variants(t)
                                          if len(v) >= 5 and v not in NEIGHBOURS)


FUZZY_VERBS, FUZZY_OBJECTS, FUZZY_NOUNS = (_fuzzy_set(t) for t in (OVERRIDE_VERBS, OVERRIDE_OBJECTS, OVERRIDE_NOUNS))
EXACT_VERBS, EXACT_NOUNS = frozenset(OVERRIDE_VERBS), frozenset(OVERRIDE_NOUNS)
NOT_LETTERS = str.maketrans({c: " " for c in map(chr, range(128)) if not c.isalpha()})
# An ASCII text's bytes mapped in one C pass: letters to lower case, anything else to a space.
LOWER_LETTERS = bytes(c | 32 if chr(c).isalpha() and c < 128 else 32 for c in range(256))
# A rule's marks and required substrings by the character to look for first (the one least common in text).
KEY_CHARACTER = {part: next((c for c in part if c in "<>|[]\"_#?="), None)
                 for r in RULES for part in (*r.marks, *(p for _, parts in r.requires for p in parts))}
# Every word a rule or the typo search looks up.
VOCABULARY = frozenset(w.encode() for w in (
    FUZZY_VERBS | FUZZY_OBJECTS | FUZZY_NOUNS
    | {w for r in RULES for w in (r.words or ())}
    | {w for r in RULES for words, _ in r.requires for w in words}))


def _occurrences(lowered: str, whole=(), anywhere=()) -> list[tuple[int, int]]:
    """Where each needle occurs, as (start, end): the needles in `whole` only where no letter touches them on
    either side, those in `anywhere` wherever they occur."""
    spans = []
    for needles, alone in ((whole, True), (anywhere, False)):
        for needle in needles:
            at = lowered.find(needle)
            while at >= 0:
                end = at + len(needle)
                if not alone or ((at == 0 or not lowered[at - 1].isalpha())
                                 and (end == len(lowered) or not lowered[end].isalpha())):
                    spans.append((at, end))
                at = lowered.find(needle, at + 1)
    return spans


class _Text:
    """A text as the rules read it, each view made once: lowered; for ASCII text its letters (lower case,
    anything else a space, a space added at each end: a word's offset there is its offset in the text) and the
    rules' words it holds (`present`; None for other text, whose punctuation that split would not see); where
    each whole word occurs."""

    def __init__(self, text: str):
        self.text, self.lowered, self.seen = text, text.lower(), {}
        if text.isascii():
            self.letters = b" " + text.encode().translate(LOWER_LETTERS) + b" "
            self.present = {w.decode() for w in VOCABULARY.intersection(self.letters.split())}
        else:
            self.letters, self.present = None, None

    def spans(self, whole=(), anywhere=()) -> list[tuple[int, int]]:
        """_occurrences() of the text; a whole word of ASCII text found in its letters (in C: no look at the
        neighbours of "now" in "know") and remembered."""
        if self.letters is None:
            return _occurrences(self.lowered, whole, anywhere)
        out = _occurrences(self.lowered, (), anywhere) if anywhere else []
        for word in whole:
            if word not in self.seen:
                needle, at, found = f" {word} ".encode(), self.letters.find(f" {word} ".encode()), []
                while at >= 0:
                    found.append((at, at + len(word)))
                    at = self.letters.find(needle, at + len(word))
                self.seen[word] = found
            out += self.seen[word]
        return out

    def holds(self, group: tuple[frozenset[str], tuple[str, ...]]) -> bool:
        """Whether the text holds a member of a rule's required group (a word as a whole word, where it is
        ASCII)."""
        words, parts = group
        if self.present is not None:
            if not self.present.isdisjoint(words):
                return True
        elif any(w in self.lowered for w in words):
            return True
        return any(_contains(self.lowered, p) for p in parts)


def _windows(t: _Text, reach: int, whole=(), anywhere=()) -> list[tuple[int, int]]:
    """The stretches of text within `reach` of an occurrence of a needle (see _occurrences), overlapping ones
    merged."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(t.spans(whole, anywhere)):
        start, end = max(0, start - reach), min(len(t.text), end + reach)
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _starts(t: _Text, rule: Rule, found_words) -> set[int]:
    """Where a match of the rule may begin, given the rule's words found in the text (see Rule.starts)."""
    found, lowered = t.spans(found_words), t.lowered
    if rule.starts == "word":
        return {at for at, _ in found}
    if rule.starts == "line":
        heads: dict[int, int] = {}  # each line's first word found
        for at, _ in sorted(found):
            heads.setdefault(lowered.rfind("\n", 0, at) + 1, at)
        return {head for head, at in heads.items() if lowered[head:at].isspace() or head == at}
    out = set()
    for at, end in found:
        before = lowered[max(0, end - rule.reach):at + 1]
        out.update(at - len(before) + 1 + a for a, _ in _occurrences(before, rule.starts))
    return out


def _contains(lowered: str, part: str) -> bool:
    """part in lowered, first looking for its rarest character alone (a memchr: a two-character search of a
    text that lacks it costs as much as a regular expression's pass)."""
    key = KEY_CHARACTER.get(part)
    return (key is None or key in lowered) and part in lowered


def _fuzzy_overrides(t: _Text) -> list[tuple[Finding, float]]:
    """The override rule's verb .. object .. noun sequence (within 12 words, in one sentence) with each word
    matched up to one typo; exact matches are the regular rule's, so only sequences with a typo are reported.
    Looked for only after each word within a typo of a verb, when the text also holds one near a noun, and one
    of the two is not spelled right."""
    text, lowered = t.text, t.lowered
    present = t.present if t.present is not None else set(lowered.translate(NOT_LETTERS).split())
    verbs, nouns = present & FUZZY_VERBS, present & FUZZY_NOUNS
    if not verbs or not nouns or (verbs <= EXACT_VERBS and nouns <= EXACT_NOUNS):
        return []
    hits = []
    starts = verbs if nouns - EXACT_NOUNS else verbs - EXACT_VERBS  # a verb spelled right needs a typo'd noun
    found = t.spans(whole=starts) if t.letters is not None else t.spans(anywhere=starts)
    for at, _ in sorted(set(found)):
        if at and lowered[at - 1].isalpha():  # inside a longer word
            continue
        following = WORD.finditer(text, at, min(len(text), at + 180))
        verb = next(following)
        if verb.start() != at or verb.group(0).lower() not in FUZZY_VERBS:
            continue
        if not any(n in lowered[at:at + 180] for n in nouns):
            continue
        seen_object, last = False, verb
        for w in islice(following, 11):
            gap = text[last.end():w.start()]
            if "." in gap or "\n" in gap:
                break
            word = w.group(0).lower()
            if not seen_object:
                seen_object = word in FUZZY_OBJECTS
            elif word in FUZZY_NOUNS:
                if not (verb.group(0).lower() in EXACT_VERBS and word in EXACT_NOUNS):
                    hits.append((Finding("override", at, w.end(), text[at:w.end()]), 0.9))
                break
            last = w
    return hits


def _plain_rules(text: str, offset: int = 0) -> list[tuple[Finding, float]]:
    t = _Text(text)
    lowered, present = t.lowered, t.present
    found: dict[tuple, tuple[Finding, float]] = {}
    for rule in RULES:
        if rule.words is None:
            stretches = [] if present is not None else [(0, len(text))]
        else:
            found_words = rule.words & present if present is not None else rule.words
            found_marks = [m for m in rule.marks if _contains(lowered, m)] if rule.marks else ()
            if not found_words and not found_marks:
                continue
            if rule.requires and not all(t.holds(group) for group in rule.requires):
                continue
            if rule.starts is not None and present is not None:
                for at in _starts(t, rule, found_words):
                    m = rule.rx.match(text, at)
                    if m:
                        found[(rule.name, rule.weight, m.start(), m.end())] = (
                            Finding(rule.name, offset + m.start(), offset + m.end(), m.group(0)), rule.weight)
                continue
            if rule.reach is None:
                stretches = [(0, len(text))]
            elif present is None:  # not ASCII: the words are looked for as substrings
                stretches = _windows(t, rule.reach, anywhere=[*found_marks, *found_words])
            else:
                stretches = _windows(t, rule.reach, whole=found_words, anywhere=found_marks)
        for start, end in stretches:
            for m in rule.rx.finditer(text, start, end):
                found[(rule.name, rule.weight, m.start(), m.end())] = (
                    Finding(rule.name, offset + m.start(), offset + m.end(), m.group(0)), rule.weight)
    fuzzy = [(Finding(f.rule, offset + f.start, offset + f.end, f.text), w) for f, w in _fuzzy_overrides(t)]
    return list(found.values()) + fuzzy


def _score(hits: list[tuple[Finding, float]]) -> float:
    keep = 1.0
    for weight in {f.rule: w for f, w in sorted(hits, key=lambda h: h[1])}.values():  # the strongest hit per rule
        keep *= 1 - weight
    return 1 - keep if hits else 0.0


def _hits(text: str) -> list[tuple[Finding, float]]:
    text = text[:MAX_SCAN_CHARS]
    hits = _plain_rules(text)
    gates: dict = {}  # each gate checked once (base64 and hex share theirs)
    for kind, rx, gate in ENCODED:
        if gate not in gates:
            gates[gate] = gate(text)
        if not gates[gate]:
            continue
        for m in rx.finditer(text):
            decoded = _decode(kind, m.group(0))
            if decoded and _plain_rules(decoded):
                hits.append((Finding(f"encoded-{kind}", m.start(), m.end(), m.group(0)), ENCODED_WEIGHT))
    return hits


def scan(text: str) -> ScanResult:
    """Scan text (only its first megabyte: longer inputs are the policy's max_arg_bytes to refuse)."""
    hits = _hits(text)
    return ScanResult(_score(hits), tuple(sorted((f for f, _ in hits), key=lambda f: f.start)))


class Unreadable(ValueError):
    """A value the scanner cannot walk (it contains itself)."""


def strings(value: Any) -> list[str]:
    """Every string in value (a tool's output: lists, tuples, sets and dicts, their keys included, and labelled
    values); a value that contains itself is Unreadable (one reached twice by different routes is not)."""
    flat = _flat_strings(value)
    if flat is not None:
        return flat
    out: list[str] = []
    _walk(value, set(), out)
    return out


def _flat_strings(value: Any) -> list[str] | None:
    """The strings of the commonest outputs, taken in C: a list of strings, a dict of strings, a list of such
    dicts (a list of records). None for anything else, which is walked."""
    if type(value) is dict:
        flat = list(chain.from_iterable(value.items()))
    elif type(value) is list and value and type(value[0]) is dict:
        try:
            flat = list(chain.from_iterable(chain.from_iterable(map(dict.items, value))))
        except TypeError:  # not every item is a dict
            return None
    elif type(value) is list:
        flat = value
    else:
        return None
    return list(flat) if set(map(type, flat)) <= {str} else None


def _walk(value: Any, path: set[int], out: list[str]) -> None:
    """strings() into out; `path` holds the containers being walked. A string is taken without a call of its
    own: a tool's output is mostly strings."""
    if isinstance(value, str):
        out.append(value)
        return
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    elif hasattr(value, "value") and hasattr(value, "sources"):  # a Tainted value
        _walk(value.value, path, out)
        return
    else:
        return
    if id(value) in path:
        raise Unreadable("it contains itself")
    path.add(id(value))
    if items is value:
        for item in items:
            if type(item) is str:
                out.append(item)
            else:
                _walk(item, path, out)
    else:
        for key, item in items:
            if type(key) is str:
                out.append(key)
            else:
                _walk(key, path, out)
            if type(item) is str:
                out.append(item)
            else:
                _walk(item, path, out)
    path.discard(id(value))


SEPARATOR = "\n\x00\n"  # between the strings of a value: ends every rule's line, and no \\s or word matches it


def scan_value(value: Any) -> ScanResult:
    """scan() of every string in a tool's output, joined by SEPARATOR (one pass: scanning each of a few hundred
    short strings alone costs more in per-call overhead than the text itself); offsets are into that join."""
    return scan(SEPARATOR.join(strings(value)))


def _span(text: str, f: Finding) -> tuple[int, int]:
    """What a finding takes with it when stripped: the injected request, not only its trigger. An authority
    block (<INFORMATION> .. </INFORMATION>) to its closing tag; any other hit from the start of its line or
    sentence to the end of its paragraph (a blank line) or of the text."""
    opening = re.match(r"<\s*([A-Za-z_ -]+?)\s*>", f.text)
    if opening:
        close = re.compile(rf"<\s*/\s*{re.escape(opening.group(1))}\s*>", _I).search(text, f.end)
        if close:
            return f.start, close.end()
    head = max(text.rfind("\n", 0, f.start) + 1, max(text.rfind(c, 0, f.start) + 1 for c in ".!?"))
    tail = text.find("\n\n", f.end)
    return head, len(text) if tail < 0 else tail


def strip(text: str, result: ScanResult) -> str:
    """text with every flagged span removed, with the injected request around it (see _span)."""
    spans = sorted(_span(text, f) for f in result.findings if text[f.start:f.end] == f.text)
    out, pos = [], 0
    for start, end in spans:
        if start >= pos:
            out.append(text[pos:start])
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


def strip_value(value: Any) -> Any:
    """A tool's output with strip() applied to every string in it (lists, tuples and dicts rebuilt)."""
    if isinstance(value, str):
        found = scan(value)
        return strip(value, found) if found.findings else value
    if isinstance(value, dict):
        return {strip_value(k): strip_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(strip_value(v) for v in value)
    return value
