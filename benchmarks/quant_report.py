"""Quantization methods on one trained checkpoint: validation loss, its increase over float32, weight bytes,
quantization time, and decode speed against the float model, measured side by side.

    pocketgpt train --preset shakespeare-cpu --data shakespeare --out out/shakespeare
    python benchmarks/quant_report.py out/shakespeare [--write-readme]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from pocketgpt.model import KVCache, QuantizedKVCache  # noqa: E402
from pocketgpt.model.layers import cross_entropy_forward  # noqa: E402
from pocketgpt.quant import QuantRecipe, quantize_weights  # noqa: E402
from pocketgpt.quant.report import markdown, quantization_report  # noqa: E402
from pocketgpt.train import eval_batches, evaluate, load_checkpoint, load_dataset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model()
    ds = load_dataset(ckpt.data.get("data", "shakespeare"), ckpt.data.get("mode"), ckpt.tokenizer)
    base, rows = quantization_report(model, ds, group_size=args.group_size)
    lines = markdown(base, rows, args.group_size).rstrip("\n").split("\n")
    g32 = quantize_weights(model, QuantRecipe("rtn", 4, 32))
    matrices = sum(q.nbytes for q in g32.packed.values()) / sum(4 * np.prod(q.shape) for q in g32.packed.values())
    lines.append(f"| rtn, group 32 | 4 | {evaluate(g32, ds):.4f} | | {8 * g32.weight_bytes / model.num_params:.2f} | "
                 f"{g32.weight_bytes / model.flat.nbytes:.4f}x (the quantized matrices alone: {matrices:.4f}x) | | |")
    report("quant", lines + ["", kv_cache_row(model, ds)], args.write_readme)


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
