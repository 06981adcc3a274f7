"""microgpt's published 1,000-step run, reproduced by the NumPy engine (seconds) and, with --reference,
by the reference engine (minutes), checked against the published losses and samples.

    python benchmarks/reproduce_microgpt.py [--reference] [--write-readme]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from pocketgpt import reference  # noqa: E402
from pocketgpt.train.reproduce import reproduce_microgpt  # noqa: E402

# From microgpt's published run (seed 42, names.txt, 1,000 steps).
PUBLISHED_LOSSES = {1: 3.3660, 2: 3.4243, 3: 3.1778, 4: 3.0664, 5: 3.2209, 10: 3.2229, 100: 3.3669,
                    250: 2.1581, 500: 2.0645, 750: 2.0780, 1000: 2.6497}
PUBLISHED_SAMPLES = ["kamon", "ann", "karai", "jaire", "vialan", "karia", "yeran", "anna", "areli", "kaina",
                     "konna", "keylen", "liole", "alerin", "earan", "lenne", "kana", "lara", "alela", "anton"]


def check(name: str, run) -> tuple[str, bool, float]:
    t = time.perf_counter()
    losses, samples = run()
    seconds = time.perf_counter() - t
    ok = all(f"{losses[s - 1]:.4f}" == f"{v:.4f}" for s, v in PUBLISHED_LOSSES.items()) and samples == PUBLISHED_SAMPLES
    print(f"{name}: step-1000 loss {losses[-1]:.4f}, samples {' '.join(samples)}: "
          f"{'matches' if ok else 'DIFFERS FROM'} the published run ({seconds:.1f} s)")
    return name, ok, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", action="store_true", help="also run the (slow) reference engine")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    quiet = lambda s: None  # noqa: E731
    results = [check("NumPy engine (float64)", lambda: reproduce_microgpt(1000, log=quiet))]
    if args.reference:
        results.append(check("reference engine", lambda: reference.run(1000, log=quiet)))
    rows = ["| engine | microgpt's 1,000-step run (11 published losses, 20 samples) | wall time |",
            "| --- | --- | --- |"]
    rows += [f"| {name} | {'identical' if ok else '**differs**'} | {sec:.1f} s |" for name, ok, sec in results]
    if len(results) == 2:
        rows.append(f"| ratio | | NumPy engine **{results[1][2] / results[0][2]:.0f}x** faster |")
    report("reproduce", rows, args.write_readme)
    if not all(ok for _, ok, _ in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
