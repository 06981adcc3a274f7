"""Provenance labels: every value a tool returns carries where it came from, and keeps it through the helpers.

A Tainted value is (value, sources). A source is a string: "user" and "policy" are trusted; anything else
("tool:read_inbox", "web", "email", "file") is not. The helpers below build new values from old ones and
give the result the union of their sources, so an email address copied out of a web page is still "web"
when it reaches send_email. A plain (unwrapped) value has no sources; the policy says how to treat it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

TRUSTED = frozenset({"user", "policy"})


@dataclass(frozen=True)
class Tainted:
    value: Any
    sources: frozenset[str]

    @property
    def trusted(self) -> bool:
        return self.sources <= TRUSTED

    def __str__(self) -> str:
        return str(self.value)


def user(value: Any) -> Tainted:
    """A value the user gave (trusted)."""
    return Tainted(value, frozenset({"user"}))


def untrusted(value: Any, source: str) -> Tainted:
    return Tainted(value, frozenset({source}))


def plain(x: Any) -> Any:
    """The value without labels, recursively (dict keys included)."""
    if isinstance(x, Tainted):
        return plain(x.value)
    if isinstance(x, dict):
        return {plain(k): plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    return x


def sources(x: Any) -> frozenset[str]:
    """Every source found in x, recursively (a dict's keys are data too: {address: role})."""
    if isinstance(x, Tainted):
        return x.sources | sources(x.value)
    if isinstance(x, dict):
        return frozenset().union(*(sources(k) | sources(v) for k, v in x.items())) if x else frozenset()
    if isinstance(x, list | tuple):
        return frozenset().union(*(sources(v) for v in x)) if x else frozenset()
    return frozenset()


def _wrap(value: Any, *inputs: Any) -> Tainted:
    return Tainted(value, frozenset().union(*(sources(i) for i in inputs)))


def concat(*parts: Any) -> Tainted:
    return _wrap("".join(str(plain(p)) for p in parts), *parts)


def fmt(template: Any, **values: Any) -> Tainted:
    return _wrap(str(plain(template)).format(**{k: plain(v) for k, v in values.items()}), template, *values.values())


def substring(x: Any, start: int | None = None, end: int | None = None) -> Tainted:
    return _wrap(str(plain(x))[start:end], x)


def find_all(x: Any, pattern: str) -> list[Tainted]:
    """Regex matches in x, each labelled with x's sources."""
    return [_wrap(m, x) for m in re.findall(pattern, str(plain(x)))]


def fully_labelled(value: Any) -> bool:
    """True when every leaf of value, dict keys included, sits inside some Tainted (no part of it arrived
    unlabelled); an empty list or dict has no leaves, so it is."""
    if isinstance(value, Tainted):
        return True
    if isinstance(value, dict):
        return all(fully_labelled(k) and fully_labelled(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(fully_labelled(v) for v in value)
    return False


def get(x: Any, key: Any) -> Tainted:
    """x[key] of a labelled dict or list, labelled with the container's sources and the item's own."""
    item = plain(x)[key] if not isinstance(x, Tainted) else x.value[key]
    return _wrap(plain(item), x, item)
