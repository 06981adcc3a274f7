"""MobileLLM's claim on a small scale: at equal size, deeper and thinner wins. shakespeare-cpu (4 layers of 128
channels, GPT-2's blocks) against shakespeare-deep (14 layers of 72: grouped-query attention, SwiGLU, rotary
positions, tied embeddings; the same parameter count to 0.1%), trained with the same recipe (nanoGPT's CPU
run: 2,000 steps of 12 x 64 characters) on the same batches, one after the other in one run.

    python benchmarks/mobilellm.py [--steps 2000] [--write-readme]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from pocketgpt.config import PRESETS  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402
from pocketgpt.train import TRAIN_DEFAULTS, load_dataset, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    data = load_dataset("shakespeare")
    settings = replace(TRAIN_DEFAULTS["shakespeare-cpu"], steps=args.steps, eval_interval=0)
    load = Path("/proc/loadavg").read_text().split()[0]
    results = {}
    for name in ("shakespeare-cpu", "shakespeare-deep"):
        model = GPT(PRESETS[name].replace(vocab_size=data.tokenizer.vocab_size), seed=settings.seed)
        results[name] = (model, train(model, data, settings))
        print(name, results[name][1]["val_loss"], results[name][1]["seconds"], flush=True)
    (wide, w), (deep, d) = results["shakespeare-cpu"], results["shakespeare-deep"]
    rows = [f"Both trained for {args.steps} steps of {settings.batch_size} x 64 characters with shakespeare-cpu's "
            f"recipe (lr {settings.lr:g}, cosine to {settings.min_lr:g}, warmup {settings.warmup}, weight decay "
            f"{settings.weight_decay:g}, {settings.workers} workers), seed {settings.seed}; load average at the "
            f"start {load}.", "",
            "| model | layers x channels | parameters | validation loss | training time |",
            "| --- | --- | --- | --- | --- |",
            f"| shakespeare-cpu (GPT-2 blocks) | {wide.config.n_layer} x {wide.config.n_embd} | {wide.num_params:,} | "
            f"{w['val_loss']:.3f} | 1.00x |",
            f"| shakespeare-deep (GQA 6/2, SwiGLU, RoPE) | {deep.config.n_layer} x {deep.config.n_embd} | "
            f"{deep.num_params:,} | **{d['val_loss']:.3f}** | {d['seconds'] / w['seconds']:.2f}x |"]
    report("mobilellm", rows, args.write_readme)


if __name__ == "__main__":
    main()
