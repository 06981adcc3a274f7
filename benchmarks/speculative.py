"""Speculative decoding against plain decoding of the same target, side by side on the same prompts.

    pocketgpt train --preset shakespeare-cpu --data shakespeare --n-layer 6 --n-embd 192 --n-head 6 \\
        --block-size 128 --steps 1500 --out out/target
    pocketgpt train --preset shakespeare-cpu --data shakespeare --n-layer 1 --n-embd 128 --n-head 4 \\
        --block-size 128 --steps 1500 --out out/draft
    python benchmarks/speculative.py out/target out/draft [--write-readme]

For each draft (the small model, the target's own 4-bit copy, its first half of layers, n-gram lookup) and
temperature (0 and 1): tokens/s of speculative and plain decoding, run alternately on the same prompts
(validation text), their ratio, acceptance rate, tokens per target forward and per-position acceptance; at
temperature 0 it also checks that the two outputs are identical.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from pocketgpt.generate import Sampling, SpecStats, generate, make_draft, speculative_generate  # noqa: E402
from pocketgpt.train import load_checkpoint, load_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("draft")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed repeats (best of)")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()

    ckpt = load_checkpoint(args.target)
    target = ckpt.model()
    small = load_checkpoint(args.draft).model()
    ds = load_dataset(ckpt.data.get("data", "shakespeare"), ckpt.data.get("mode"), ckpt.tokenizer)
    block = target.config.block_size
    new_tokens = block - args.prompt_tokens
    stride = len(ds.val) // args.prompts
    prompts = [list(ds.val[i * stride:i * stride + args.prompt_tokens]) for i in range(args.prompts)]
    exit_layer = target.config.n_layer // 2
    drafts = {
        f"{small.config.n_layer}-layer, {small.config.n_embd}-channel model": make_draft("model", model=small),
        "the target's own 4-bit copy (RTN, group 32)": make_draft("quantized", target, bits=4, group_size=32),
        f"the target's first {exit_layer} of {target.config.n_layer} layers (layer skipping)":
            make_draft("layers", target, layers=exit_layer),
        "n-gram lookup (no model)": make_draft("ngram"),
    }
    rows = [f"Target: {target.config.n_layer} layers, {target.config.n_embd} channels, context {block} "
            f"({target.num_params:,} parameters); {args.prompts} validation prompts of {args.prompt_tokens} tokens, "
            f"{new_tokens} new tokens each, k = {args.k}, best of {args.rounds} alternating runs.", "",
            "| draft | temperature | speculative vs plain tokens/s | acceptance | tokens per target forward | "
            "acceptance by position | temperature 0: identical output |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, draft in drafts.items():
        for temperature in (0.0, 1.0):
            stats = SpecStats()

            def plain(temperature=temperature):
                return [list(generate(target, p, max_new_tokens=new_tokens, sampling=Sampling(temperature, seed=i)))
                        for i, p in enumerate(prompts)]

            def spec(stats=None, draft=draft, temperature=temperature):
                return [list(speculative_generate(target, p, max_new_tokens=new_tokens, draft=draft, k=args.k,
                                                  sampling=Sampling(temperature, seed=i), stats=stats))
                        for i, p in enumerate(prompts)]

            plain_out, spec_out = plain(), spec(stats)  # warm-up, and the statistics
            t_plain, t_spec = [], []
            for _ in range(args.rounds):
                t = time.perf_counter()
                plain()
                t_plain.append(time.perf_counter() - t)
                t = time.perf_counter()
                spec()
                t_spec.append(time.perf_counter() - t)
            n_plain, n_spec = sum(map(len, plain_out)), sum(map(len, spec_out))
            ratio = (n_spec / min(t_spec)) / (n_plain / min(t_plain))
            same = ("yes" if spec_out == plain_out else "**no**") if temperature == 0 else ""
            per_pos = " ".join(f"{a:.2f}" for a in stats.per_position)
            rows.append(f"| {name} | {temperature:g} | **{ratio:.2f}x** | {stats.acceptance_rate:.2f} | "
                        f"{stats.tokens_per_forward:.2f} | {per_pos} | {same} |")
            print(rows[-1], flush=True)
    report("speculative", rows, args.write_readme)


if __name__ == "__main__":
    main()
