"""Quantization methods on one trained checkpoint: validation loss, its increase over float32, weight bytes,
quantization time, and decode speed against the float model, measured side by side.

    pocketgpt train --preset shakespeare-cpu --data shakespeare --out out/shakespeare
    python benchmarks/quant_report.py out/shakespeare [--write-readme]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from pocketgpt.checkpoint import load_checkpoint  # noqa: E402
from pocketgpt.data import Batches, eval_batches, load_dataset  # noqa: E402
from pocketgpt.generate import generate  # noqa: E402
from pocketgpt.layers import cross_entropy_forward  # noqa: E402
from pocketgpt.model import KVCache  # noqa: E402
from pocketgpt.quant.kvcache import QuantizedKVCache  # noqa: E402
from pocketgpt.quant.model import QuantRecipe, quantize_model  # noqa: E402
from pocketgpt.quant.qat import qat, zeroqat  # noqa: E402
from pocketgpt.train import TRAIN_DEFAULTS, evaluate  # noqa: E402

RUNS = [("rtn", 8), ("smoothquant", 8), ("rtn", 4), ("gptq", 4), ("awq", 4), ("rtn", 3), ("gptq", 3), ("awq", 3),
        ("qat", 3), ("zeroqat", 3)]


def decode_rate(model, tokens: int = 63, rounds: int = 3) -> float:
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        n = len(list(generate(model, [0], max_new_tokens=tokens, temperature=0)))
        best = max(best, n / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model()
    ds = load_dataset(ckpt.data.get("data", "shakespeare"), ckpt.data.get("mode"), ckpt.tokenizer)
    base = evaluate(model, ds)
    batches = Batches(ds, 16, model.config.block_size, seed=0)
    calib = [batches.next() for _ in range(8)]
    float_bytes = model.flat.nbytes
    rows = [f"Float32 checkpoint: validation loss {base:.4f}, {float_bytes / 1e6:.2f} MB of weights. "
            f"Group size {args.group_size}, symmetric; GPTQ and AWQ calibrate on 128 training sequences.", "",
            "| method | bits | validation loss | increase | weight bytes vs float32 | quantization time | "
            "decode tokens/s vs float32 |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for method, bits in RUNS:
        recipe = QuantRecipe(method, bits, args.group_size)
        t = time.perf_counter()
        if method == "qat":
            settings = dataclasses.replace(TRAIN_DEFAULTS["shakespeare-cpu"], steps=100, lr=1e-4, min_lr=1e-5,
                                           warmup=10, eval_interval=0, weight_decay=0.0, batch_size=16)
            q = qat(model, recipe, ds, settings)
        elif method == "zeroqat":
            q = zeroqat(model, recipe, ds, steps=150)
        else:
            q = quantize_model(model, recipe, calib)
        seconds = time.perf_counter() - t
        loss = evaluate(q, ds)
        speed = decode_rate(q) / decode_rate(model)
        rows.append(f"| {method} | {bits} | {loss:.4f} | {100 * (loss - base) / base:+.2f}% | "
                    f"{q.weight_bytes / float_bytes:.3f}x | {seconds:.1f} s | {speed:.2f}x |")
    g32 = quantize_model(model, QuantRecipe("rtn", 4, 32))
    matrices = sum(q.nbytes for q in g32.qweights.values()) / sum(4 * np.prod(q.shape) for q in g32.qweights.values())
    rows.append(f"| rtn, group 32 | 4 | {evaluate(g32, ds):.4f} | | {g32.weight_bytes / float_bytes:.4f}x "
                f"(the quantized matrices alone: {matrices:.4f}x) | | |")
    rows += ["", kv_cache_row(model, ds)]
    report("quant", rows, args.write_readme)


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
