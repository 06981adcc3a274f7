"""A rule-based prompt-injection scanner for tool outputs and user inputs: spans, the rule that found each,
and a score in [0, 1] (1 - prod(1 - weight) over the rules that fired).

Rules: instruction-override phrasing; role and system-prompt spoofing (chat-template tokens, "SYSTEM:"
lines); invisible and bidirectional Unicode; encoded payloads (base64, hex, URL-encoding) whose decoding
itself trips a rule; markdown images and links that carry data in their query string; tool-call
look-alikes (JSON or XML that names a tool or function). The policy decides what a hit does.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from dataclasses import dataclass

_I = re.IGNORECASE

INVISIBLE = "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]"
RULES: list[tuple[str, float, re.Pattern]] = [(name, weight, re.compile(rx, flags)) for name, weight, rx, flags in [
    ("override", 0.9, r"\b(ignore|disregard|forget|override|bypass|skip)\b[^.\n]{0,40}?"
                      r"\b(previous|prior|above|earlier|all|your|the|any)\b[^.\n]{0,25}?"
                      r"\b(instructions?|prompts?|rules|guidelines|directions|context|tasks?)\b", _I),
    ("override", 0.8, r"\b(new|updated|real|actual|important|urgent)\s+(instructions?|task|orders?|directive)s?"
                      r"\s*[:!-]", _I),
    ("override", 0.6, r"\byou\s+(are|must)\s+now\b|\bfrom\s+now\s+on,?\s+you\b|\bdo\s+not\s+tell\s+the\s+user\b",
     _I),
    ("override", 0.7, r"\b(as|you are) an? (ai|assistant|agent)[^.\n]{0,40}\b(must|should|will)\b[^.\n]{0,30}"
                      r"\b(send|forward|transfer|delete|share|pay|email|post)\b", _I),
    ("role-spoof", 0.8, r"<\|(im_start|im_end|system|assistant|user|endoftext)\|>|\[/?INST\]|<</?SYS>>"
                        r"|^\s*#{2,}\s*(system|instruction)", _I | re.M),
    ("role-spoof", 0.7, r"^\s*(system|assistant|developer)\s*(prompt|message)?\s*:", _I | re.M),
    ("role-spoof", 0.6, r"\b(system prompt|developer mode|jailbreak)\b", _I),
    ("invisible-unicode", 0.9, INVISIBLE, 0),
    ("markdown-exfiltration", 0.9, r"!\[[^\]]*\]\(\s*https?://[^)\s]*\?[^)\s]*=[^)\s]*\)", _I),
    ("markdown-exfiltration", 0.5, r"\[[^\]]*\]\(\s*https?://[^)\s]*\?[^)\s]*=[^)\s]{16,}\)", _I),
    ("tool-call", 0.8, r"[{,]\s*\"(tool|function|function_call|tool_calls?|name|action)\"\s*:\s*\"?"
                       r"[a-z_]+\"?\s*,\s*\"(arguments|args|parameters|input)\"", _I),
    ("tool-call", 0.8, r"</?(tool_call|function_call|tool_use|invoke)\b", _I),
    ("tool-call", 0.6, r"\b(call|invoke|run|execute|use)\s+(the\s+)?`?[a-z]+_[a-z_]+`?\s*(\(|tool\b|with\b)", _I),
]]
ENCODED = [
    ("base64", re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")),
    ("hex", re.compile(r"\b(?:[0-9a-fA-F]{2}){16,}\b")),
    ("url-encoding", re.compile(r"(?:%[0-9a-fA-F]{2}[^%\s]{0,3}){6,}")),
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


def _plain_rules(text: str, offset: int = 0) -> list[tuple[Finding, float]]:
    return [(Finding(name, offset + m.start(), offset + m.end(), m.group(0)), weight)
            for name, weight, rx in RULES for m in rx.finditer(text)]


def scan(text: str) -> ScanResult:
    """Scan text (only its first megabyte: longer inputs are the policy's max_arg_bytes to refuse)."""
    text = text[:MAX_SCAN_CHARS]
    hits = _plain_rules(text)
    for kind, rx in ENCODED:
        for m in rx.finditer(text):
            decoded = _decode(kind, m.group(0))
            if decoded and _plain_rules(decoded):
                hits.append((Finding(f"encoded-{kind}", m.start(), m.end(), m.group(0)), ENCODED_WEIGHT))
    keep = 1.0
    for weight in {f.rule: w for f, w in sorted(hits, key=lambda h: h[1])}.values():  # the strongest hit per rule
        keep *= 1 - weight
    return ScanResult(1 - keep if hits else 0.0, tuple(sorted((f for f, _ in hits), key=lambda f: f.start)))


def strip(text: str, result: ScanResult) -> str:
    """text with every flagged span removed."""
    out, pos = [], 0
    for f in result.findings:
        if f.start >= pos:
            out.append(text[pos:f.start])
            pos = f.end
        else:
            pos = max(pos, f.end)
    out.append(text[pos:])
    return "".join(out)
