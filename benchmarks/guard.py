"""The agent guard: the red-team suite with and without the guard, the scanner's detection and false-positive
rates, the share of benign calls sent to approval, and the gateway's overhead per call measured against calling
the tool directly: for a call with small arguments, and for reads whose output is an inbox of 256 bytes to 64 KB
of ordinary text (median and 90th percentile of single calls).

    python benchmarks/guard.py [--write-readme]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, report  # noqa: E402

from pocketgpt.data import read_text  # noqa: E402
from pocketgpt.guard import taint  # noqa: E402
from pocketgpt.guard.gateway import Gateway  # noqa: E402
from pocketgpt.guard.policy import load_policy  # noqa: E402
from pocketgpt.guard.redteam import EXAMPLE_POLICY, benign_corpus, redteam  # noqa: E402

OUTPUT_BYTES = (256, 1024, 4096, 16384, 65536)


def per_call_us(fn, n: int = 20000, rounds: int = 5) -> float:
    """Median over rounds of the mean time per call, in microseconds."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(times)


def single_calls_us(fn, n: int) -> tuple[float, float]:
    """(median, 90th percentile) of n single calls, in microseconds."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
    times.sort()
    return times[n // 2], times[n * 9 // 10]


def inbox(size: int, texts: list[str]) -> list[dict]:
    """An inbox of about `size` bytes of ordinary messages (the scanner's benign corpus)."""
    out, total, i = [], 0, 0
    while total < size:
        body = texts[(i * 37) % len(texts)]
        out.append({"from": "bob@example.com", "subject": "Re: notes", "body": body})
        total, i = total + len(body) + 60, i + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()

    policy = load_policy(EXAMPLE_POLICY)
    lines = [line for line in read_text("shakespeare")[0].splitlines() if line.strip()]
    r = redteam(policy, benign_texts=lines)
    rows = [f"{r['attacks']} attacks ({r['styles']} injection styles x {r['tasks']} user tasks x 3-5 attacker goals "
            f"per domain) against the shipped example policy, with a worst-case agent that obeys every "
            f"instruction it reads; load average {loadavg()}:", "",
            "| domain | attacks | attack success without the guard | with the guard |", "| --- | --- | --- | --- |"]
    rows += [f"| {d} | {v['attacks']} | {100 * v['success_without_guard']:.1f}% | "
             f"{100 * v['success_with_guard']:.1f}% |" for d, v in r["by_domain"].items()]
    rows += [f"| **all** | {r['attacks']} | **{100 * r['attack_success_without_guard']:.1f}%** | "
             f"**{100 * r['attack_success_with_guard']:.1f}%** |", "",
             f"Benign utility (the user's task completes, no attack): {100 * r['benign_utility_with_guard']:.1f}% with "
             f"the guard, {100 * r['benign_utility_without_guard']:.1f}% without; under attack: "
             f"{100 * r['utility_under_attack_with_guard']:.1f}% with, "
             f"{100 * r['utility_under_attack_without_guard']:.1f}% without. Calls sent to a human (every request "
             f"refused): {100 * r['approval_share_benign']:.1f}% of the benign tasks' calls, "
             f"{100 * r['approval_share_under_attack']:.1f}% under attack. Scanner: detects "
             f"{100 * r['scanner_detection_rate']:.1f}% of the distinct attack payloads (the polite style, with no "
             f"trigger words, passes it: the data-flow rules stop those); false positives "
             f"{100 * r['scanner_false_positive_rate']:.2f}% of {r['benign_texts']} benign texts (tinyshakespeare "
             f"lines, e-mails, chat messages, document paragraphs, pocketgpt's own code)."]

    tools = {"send_email": lambda to, subject="", body="": "sent"}
    gateway = Gateway(policy, tools)
    call_args = {"to": taint.user("bob@example.com"), "subject": taint.user("Hi"), "body": taint.user("See you.")}
    direct = per_call_us(lambda: tools["send_email"](**taint.plain(call_args)))
    check = per_call_us(lambda: gateway.check("mail", "send_email", call_args))
    full = per_call_us(lambda: gateway.call("mail", "send_email", call_args), n=2000)
    rows += ["", "| per call (send_email, 3 labelled arguments) | microseconds | vs calling the tool directly |",
             "| --- | --- | --- |",
             f"| tool called directly (unwrapping the labels) | {direct:.1f} | 1.0x |",
             f"| gateway: policy and data-flow checks (`check`) | {check:.1f} | {check / direct:.1f}x |",
             f"| gateway: checks, call, output scan and labelling (`call`) | {full:.1f} | {full / direct:.1f}x |"]
    texts = benign_corpus()
    rows += ["", "| read_inbox output | gateway `call`, median us | 90th percentile us | median per KB |",
             "| --- | --- | --- | --- |"]
    for size in OUTPUT_BYTES:
        data = inbox(size, texts)
        reader = Gateway(policy, {"read_inbox": lambda data=data: data})
        median, p90 = single_calls_us(lambda reader=reader: reader.call("mail", "read_inbox", {}), 300)
        kb = len(json.dumps(data)) / 1024
        rows.append(f"| {kb:.1f} KB | {median:.0f} | {p90:.0f} | {median / kb:.0f} |")
    report("guard", rows, args.write_readme)


if __name__ == "__main__":
    main()
