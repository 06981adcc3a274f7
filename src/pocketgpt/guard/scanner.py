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
from typing import Any

_I = re.IGNORECASE

INVISIBLE = "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]"
AUTHORITY = ("system|system[ _-]?(message|prompt|note|instructions?|override|update)|admin(istrator)?|developer"
             "|information|important[ _-]?(message|instructions?)|instructions?|root|sudo|assistant[ _-]?directive")
AUTHORITY_HEADING = ("system[ _-]?(message|prompt|note|instructions?|override|update)"
                     "|admin(istrator)?[ _-]?(message|note)")
# Each rule: (name, weight, pattern, flags, words, marks, reach[, needs]). Every match of the pattern contains one
# of the whole words `words` or of the substrings `marks` (lower case), and none is longer than `reach` characters,
# so the pattern runs only within `reach` of where one occurs (reach None: on the whole text; words None: on the
# whole text unless it is ASCII). An ASCII text's words are looked up in one set, so a rule whose words are
# absent costs nothing; a Python regular expression costs far more a character than a substring search. A match
# padded past its reach (hundreds of spaces inside one) is not found: the scanner is a second line, behind the
# data-flow rules. `needs`: a substring every match contains besides, without which the rule does not run.
OVERRIDE_NOUN_WORDS = ("instruction", "instructions", "task", "tasks", "order", "orders", "directive", "directives")
AUTHORITY_WORDS = ("system", "admin", "administrator", "developer", "information", "important", "instruction",
                   "instructions", "root", "sudo", "assistant")
RULES: list[tuple[str, float, re.Pattern, frozenset | None, tuple[str, ...], int | None, str]] = [
    (name, weight, re.compile(rx, flags), None if words is None else frozenset(words), marks, reach, "".join(needs))
    for name, weight, rx, flags, words, marks, reach, *needs in [
    ("override", 0.9, r"\b(ignore|disregard|forget|override|bypass|skip)\b[^.\n]{0,40}?"
                      r"\b(previous|prior|above|earlier|all|your|the|any)\b[^.\n]{0,25}?"
                      r"\b(instructions?|prompts?|rules|guidelines|directions|context|tasks?)\b", _I,
     ("ignore", "disregard", "forget", "override", "bypass", "skip"), (), 120),
    ("override", 0.8, r"\b(new|updated|real|actual|important|urgent)\s+(instructions?|task|orders?|directive)s?"
                      r"\s*[:!-]", _I, OVERRIDE_NOUN_WORDS, (), 80),
    ("override", 0.6, r"\byou\s+(are|must)\s+now\b|\bfrom\s+now\s+on,?\s+you\b|\bdo\s+not\s+tell\s+the\s+user\b",
     _I, ("now", "tell"), (), 60),
    ("override", 0.7, r"\b(as|you are) an? (ai|assistant|agent)[^.\n]{0,40}\b(must|should|will)\b[^.\n]{0,30}"
                      r"\b(send|forward|transfer|delete|share|pay|email|post)\b", _I,
     ("ai", "assistant", "agent"), (), 140),
    ("role-spoof", 0.8, r"<\|im_start\|>\s*(system|assistant|user|developer|tool)\b|<\|(system|assistant|user)\|>"
                        r"|\[/?INST\]|<</?SYS>>|^\s*#{2,}\s*(system|instruction)", _I | re.M,
     ("system", "instruction", "instructions"), ("<|", "inst]", "sys>>"), 80),
    ("role-spoof", 0.4, r"<\|(im_start|im_end|endoftext|eot_id)\|>", _I, (), ("<|",), 20),  # in text on tokenizers too
    ("role-spoof", 0.7, r"^\s*(system|assistant|developer)\s*(prompt|message)?\s*:", _I | re.M,
     ("system", "assistant", "developer"), (), 60),
    ("role-spoof", 0.6, r"\b(system prompt|developer mode|jailbreak)\b", _I, ("system", "developer", "jailbreak"), (),
     30),
    ("role-spoof", 0.8, rf"^[ \t]*#+[ \t]*([(\[{{<][ \t]*({AUTHORITY})[ \t]*[)\]}}>]|({AUTHORITY_HEADING})\b)"
                        rf"|<[ \t]*/?[ \t]*({AUTHORITY})[ \t]*>|\[[ \t]*/?({AUTHORITY})[ \t]*\]", _I | re.M,
     AUTHORITY_WORDS, (), 80),
    ("role-spoof", 0.6, r"\b(this is an? (important|urgent) (message|notice|instruction) from)\b"
                        r"|\bbefore you (can )?(solve|finish|complete|continue)\b[^.\n]{0,40}\b(task|request)", _I,
     ("important", "urgent", "before"), (), 100),
    ("invisible-unicode", 0.9, INVISIBLE, 0, None, (), None),  # run unless the text is ASCII
    ("markdown-exfiltration", 0.9, r"!\[[^\]]*\]\(\s*https?://[^)\s]*\?[^)\s]*=[^)\s]*\)", _I, (), ("](",), None),
    ("markdown-exfiltration", 0.5, r"\[[^\]]*\]\(\s*https?://[^)\s]*\?[^)\s]*=[^)\s]{16,}\)", _I, (), ("](",),
     None),
    ("tool-call", 0.8, r"[{,]\s*\"(tool|function|function_call|tool_calls?|name|action)\"\s*:\s*\"?"
                       r"[a-z_]+\"?\s*,\s*\"(arguments|args|parameters|input)\"", _I,
     (), ('"tool', '"function', '"name"', '"action"'), 120),
    ("tool-call", 0.8, r"</?(tool_call|function_call|tool_use|invoke)\b", _I, ("invoke",),
     ("tool_call", "function_call", "tool_use"), 20),
    ("tool-call", 0.6, r"\b(call|invoke|run|execute|use)\s+(the\s+)?`?[a-z]+_[a-z_]+`?\s*(\(|tool\b|with\b)", _I,
     ("call", "invoke", "run", "execute", "use"), (), 80, "_"),
]]
ENCODED = [  # (kind, pattern, needle or None)
    ("base64", re.compile(r"[A-Za-z0-9+/]{24,}={0,2}"), None),
    ("hex", re.compile(r"\b(?:[0-9a-fA-F]{2}){16,}\b"), None),
    ("url-encoding", re.compile(r"(?:%[0-9a-fA-F]{2}[^%\s]{0,3}){6,}"), "%"),
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
OVERRIDE_VERBS = ("ignore", "disregard", "forget", "override", "bypass", "skip")
OVERRIDE_OBJECTS = ("previous", "prior", "above", "earlier", "all", "your", "the", "any")
OVERRIDE_NOUNS = ("instruction", "instructions", "prompt", "prompts", "rules", "guidelines", "directions",
                  "context", "task", "tasks")
WORD = re.compile(r"[A-Za-z]+")


def _variants(word: str) -> set[str]:
    """word and every string one edit from it (insert, delete, substitute a letter, swap two neighbours)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    cuts = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    out = {a + b[1:] for a, b in cuts if b} | {a + b[1] + b[0] + b[2:] for a, b in cuts if len(b) > 1}
    out |= {a + c + b[1:] for a, b in cuts if b for c in letters} | {a + c + b for a, b in cuts for c in letters}
    return out | {word}


def _fuzzy_set(targets: tuple[str, ...]) -> frozenset[str]:
    """targets, and the variants of at least five letters of those of at least six (one edit turns "all" into
    "ill", so short words must match exactly)."""
    return frozenset(targets) | frozenset(v for t in targets if len(t) >= 6 for v in _variants(t) if len(v) >= 5)


FUZZY_VERBS, FUZZY_OBJECTS, FUZZY_NOUNS = (_fuzzy_set(t) for t in (OVERRIDE_VERBS, OVERRIDE_OBJECTS, OVERRIDE_NOUNS))
NOT_LETTERS = str.maketrans({c: " " for c in map(chr, range(128)) if not c.isalpha()})


def _windows(text: str, lowered: str, reach: int, whole=(), anywhere=()) -> list[tuple[int, int]]:
    """The stretches of text within `reach` of an occurrence of a needle, overlapping ones merged: the needles in
    `whole` only where no letter touches them on either side, those in `anywhere` wherever they occur."""
    spans = []
    for needles, alone in ((whole, True), (anywhere, False)):
        for needle in needles:
            at = lowered.find(needle)
            while at >= 0:
                end = at + len(needle)
                if not alone or ((at == 0 or not lowered[at - 1].isalpha())
                                 and (end == len(lowered) or not lowered[end].isalpha())):
                    spans.append((max(0, at - reach), min(len(text), end + reach)))
                at = lowered.find(needle, at + 1)
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _words(lowered: str) -> set[str] | None:
    """The words of an ASCII text (None for other text, whose punctuation the split below would not see)."""
    return set(lowered.translate(NOT_LETTERS).split()) if lowered.isascii() else None


def _fuzzy_overrides(text: str, lowered: str, present: set[str] | None) -> list[tuple[Finding, float]]:
    """The override rule's verb .. object .. noun sequence (within 12 words, in one sentence) with each word
    matched up to one typo; exact matches are the regular rule's, so only sequences with a typo are reported.
    Looked for only after each word within a typo of a verb, when the text also holds one near a noun."""
    present = present if present is not None else set(lowered.translate(NOT_LETTERS).split())
    verbs, nouns = present & FUZZY_VERBS, present & FUZZY_NOUNS
    if not verbs or not nouns:
        return []
    hits = []
    for start, end in _windows(text, lowered, 160, anywhere=verbs):
        if not any(n in lowered[start:end] for n in nouns):
            continue
        words = list(WORD.finditer(text, start, end))
        for i, verb in enumerate(words):
            if verb.group(0).lower() not in FUZZY_VERBS:
                continue
            seen_object, j = False, i + 1
            while j < min(len(words), i + 12) and not re.search(r"[.\n]", text[words[j - 1].end():words[j].start()]):
                w = words[j].group(0).lower()
                if not seen_object:
                    seen_object = w in FUZZY_OBJECTS
                elif w in FUZZY_NOUNS:
                    exact = all(x.group(0).lower() in OVERRIDE_VERBS + OVERRIDE_OBJECTS + OVERRIDE_NOUNS
                                for x in (verb, words[j]))
                    if not exact:
                        hits.append((Finding("override", verb.start(), words[j].end(),
                                             text[verb.start():words[j].end()]), 0.9))
                    break
                j += 1
    return hits


def _plain_rules(text: str, offset: int = 0) -> list[tuple[Finding, float]]:
    lowered = text.lower()
    present = _words(lowered)
    found: dict[tuple, tuple[Finding, float]] = {}
    for name, weight, rx, words, marks, reach, needs in RULES:
        if needs and needs not in lowered:
            continue
        if words is None:
            stretches = [] if present is not None else [(0, len(text))]
        else:
            found_words = words & present if present is not None else words
            found_marks = [m for m in marks if m in lowered]
            if not found_words and not found_marks:
                continue
            if reach is None:
                stretches = [(0, len(text))]
            elif present is None:  # not ASCII: the words are looked for as substrings
                stretches = _windows(text, lowered, reach, anywhere=[*found_marks, *found_words])
            else:
                stretches = _windows(text, lowered, reach, whole=found_words, anywhere=found_marks)
        for start, end in stretches:
            for m in rx.finditer(text, start, end):
                found[(name, weight, m.start(), m.end())] = (Finding(name, offset + m.start(), offset + m.end(),
                                                                     m.group(0)), weight)
    fuzzy = [(Finding(f.rule, offset + f.start, offset + f.end, f.text), w)
             for f, w in _fuzzy_overrides(text, lowered, present)]
    return list(found.values()) + fuzzy


def _score(hits: list[tuple[Finding, float]]) -> float:
    keep = 1.0
    for weight in {f.rule: w for f, w in sorted(hits, key=lambda h: h[1])}.values():  # the strongest hit per rule
        keep *= 1 - weight
    return 1 - keep if hits else 0.0


def _hits(text: str) -> list[tuple[Finding, float]]:
    text = text[:MAX_SCAN_CHARS]
    hits = _plain_rules(text)
    tokens = text.split()  # an encoded payload has no whitespace, and every pattern below is at least 18 long
    if tokens and max(map(len, tokens)) >= 18:
        for kind, rx, needle in ENCODED:
            if needle is not None and needle not in text:
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
    out: list[str] = []
    _walk(value, set(), out)
    return out


def _walk(value: Any, path: set[int], out: list[str]) -> None:
    """strings() into out; `path` holds the containers being walked."""
    if isinstance(value, str):
        out.append(value)
        return
    if isinstance(value, dict):
        items = [x for kv in value.items() for x in kv]
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
    for item in items:
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
