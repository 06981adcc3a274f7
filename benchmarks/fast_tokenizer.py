"""FAST against naive per-value 256-bin action tokens on smooth trajectories.

    python benchmarks/fast_tokenizer.py [--write-readme]

Trajectories: cubic (Catmull-Rom) splines through 5 random points in 2 dimensions, sampled at 25, 50, 100
and 200 steps. For each length:
- FAST at its usual scale (10) with 512 merges learnt on 400 training chunks, and the naive per-value tokens
  with the fewest uniform bins whose RMSE is no worse (matched fidelity): tokens per chunk and RMSE of both;
- for 25 and 50 steps, next-chunk prediction: a 2-layer pocketgpt model is trained (same size, same steps)
  on "chunk A tokens, SEP, chunk B tokens, EOS" for consecutive chunks of longer trajectories, then decodes
  B greedily from A; the RMSE of the decoded B against the true one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from pocketgpt.config import PRESETS  # noqa: E402
from pocketgpt.generate import Sampling, generate  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402
from pocketgpt.train import TrainSettings, adamw_step, loop, make_optimizer, pad_documents  # noqa: E402
from pocketgpt.vla import fast  # noqa: E402


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def matched_bins(test, target: float) -> int:
    """The fewest uniform bins (of 2 to 4096) whose per-value tokens reconstruct `test` within RMSE `target`."""
    lo, hi = 2, 4096
    while lo < hi:
        mid = (lo + hi) // 2
        err = rmse([fast.naive_decode(fast.naive_encode(c, mid), c.shape, mid) for c in test], test)
        lo, hi = (mid + 1, hi) if err > target else (lo, mid)
    return lo


def next_chunk_error(encode, decode, vocab: int, T: int, steps: int = 600, seed: int = 0) -> float:
    """Train a small GPT on A + SEP + B + EOS, then decode B greedily from A; RMSE of B."""
    pairs = fast.spline_trajectories(1200, 2 * T, dims=2, knots=8, seed=seed)
    docs = [np.array([*encode(p[:T]), vocab, *encode(p[T:]), vocab + 1]) for p in pairs]
    longest = max(len(d) for d in docs)
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=vocab + 2, block_size=longest, n_layer=2, n_embd=64)
    model = GPT(config, seed=seed)
    settings = TrainSettings(steps=steps, batch_size=32, lr=3e-3, min_lr=3e-4, warmup=30, schedule="cosine",
                             weight_decay=0.01, beta1=0.9, beta2=0.99, grad_clip=1.0, seed=seed, workers=2)
    train, test = docs[:1000], pairs[1000:1100]

    class Docs:
        rng = np.random.default_rng(seed)

        def next(self):
            return pad_documents([train[i] for i in self.rng.integers(0, len(train), 32)], longest, vocab + 1)

    loop(settings, adamw_step(model, settings, Docs(), make_optimizer(model, settings)))
    errors = []
    for p in test:
        prompt = [*encode(p[:T]), vocab]
        out = list(generate(model, prompt, max_new_tokens=longest - len(prompt), sampling=Sampling(temperature=0),
                            stop_tokens={vocab + 1}))
        errors.append(rmse(decode([t for t in out if t < vocab]), p[T:]))
    return float(np.mean(errors))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    rows = ["| steps per chunk | naive tokens per chunk (bins for matched RMSE) | FAST tokens per chunk | "
            "compression | RMSE naive / FAST | next-chunk RMSE naive / FAST |", "| --- | --- | --- | --- | --- | --- |"]
    for T in (25, 50, 100, 200):
        train = fast.spline_trajectories(400, T, dims=2, seed=0)
        test = fast.spline_trajectories(100, T, dims=2, seed=1)
        tok = fast.train_fast(train, scale=10.0, merges=512)
        lengths = [len(tok.encode(c)) for c in test]
        fast_err = rmse([tok.decode(tok.encode(c)) for c in test], test)
        bins = matched_bins(test, fast_err)
        naive_err = rmse([fast.naive_decode(fast.naive_encode(c, bins), c.shape, bins) for c in test], test)
        cell = ""
        if T <= 50:
            naive_next = next_chunk_error(lambda c, b=bins: fast.naive_encode(c, b),
                                          lambda t, T=T, b=bins: fast.naive_decode(t, (T, 2), b), bins, T)
            fast_next = next_chunk_error(tok.encode, tok.decode, tok.vocab_size, T)
            cell = f"{naive_next:.3f} / {fast_next:.3f}"
        rows.append(f"| {T} | {2 * T} ({bins} bins) | {np.mean(lengths):.1f} | {2 * T / np.mean(lengths):.1f}x | "
                    f"{naive_err:.4f} / {fast_err:.4f} | {cell} |")
        print(rows[-1], flush=True)
    rows += ["", "Two-dimensional trajectories; FAST's BPE has 512 merges; the next-chunk models have 2 layers and "
             "64 channels and train for 600 steps of 32 sequences on 1,000 pairs of consecutive chunks, and are "
             "scored on 100 held-out pairs (their trajectories pass through 8 random points, so part of the next "
             "chunk is unpredictable for any model)."]
    report("fast", rows, args.write_readme)


if __name__ == "__main__":
    main()
