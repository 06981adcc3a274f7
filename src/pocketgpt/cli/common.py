"""What every command shares: argument types, progress bars, JSON output, loading a model, and the
one-line usage error. No computation lives here."""

from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pocketgpt.errors import InputError


class UsageError(InputError):
    """A flag combination that makes no sense; the message names the flags."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def defaults(fn) -> dict:
    """A library function's keyword defaults: the flags that map onto its arguments take them from here."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {s})")
    return v


def positive_float(s: str) -> float:
    v = float(s)
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number (got {s})")
    return v


def count(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {s})")
    return v


def fraction(s: str) -> float:
    v = float(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1] (got {s})")
    return v


def port(s: str) -> int:
    v = int(s)
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port in 1..65535 (got {s})")
    return v


def unescape(text: str) -> str:
    r"""'\n', '\t' and '\\' typed on a command line as the characters they name."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def finite(obj):
    """obj with every NaN or infinite float replaced by None, so that it is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def emit_json(obj: dict) -> None:
    """The result as one line of strict JSON (non-finite numbers as null) on stdout."""
    print(json.dumps(finite(obj), allow_nan=False))


def finish(line: str, result: dict, as_json: bool) -> int:
    """Print the human-readable summary and, with --json, the result as the last line."""
    print(line)
    if as_json:
        emit_json(result)
    return 0


@contextmanager
def progress_bar(desc: str, unit: str = "it") -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr (shown on a terminal only) driven by progress(done, total) callbacks."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.25, leave=False, disable=None)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def distinct(source: str | Path, out: str | Path) -> None:
    """Refuse to write OUT over the very thing being read."""
    if Path(source).resolve() == Path(out).resolve():
        raise UsageError(f"OUT {out} is the input itself; choose another path")


def say(line: str) -> None:
    """A status line on stderr (stdout holds results)."""
    print(line, file=sys.stderr)
