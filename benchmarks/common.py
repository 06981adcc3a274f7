"""Helpers shared by the benchmark scripts: timing by median, and writing a result table into README.md."""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    """Median wall time of fn() in seconds over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def write_readme_section(name: str, markdown: str) -> None:
    """Replace the text between <!-- bench:NAME --> and <!-- /bench:NAME --> in README.md."""
    text = README.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- bench:{name} --> section")
    README.write_text(pattern.sub(lambda m: m.group(1) + markdown.rstrip() + "\n" + m.group(2), text),
                      encoding="utf-8")


def report(name: str, rows: list[str], write_readme: bool) -> None:
    """Print a Markdown table and, if asked, put it into README.md's bench:NAME section."""
    table = "\n".join(rows)
    print(table)
    if write_readme:
        write_readme_section(name, table)


class Cycle:
    """Batches replayed in order, round and round (for timing the same work again)."""

    def __init__(self, batches: list):
        self.batches, self.i = batches, 0

    def next(self):
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return batch
