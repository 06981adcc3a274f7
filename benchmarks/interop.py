"""Interoperability, measured: logits against transformers, generation speed against transformers, and
(with --llama-cpp) the exported GGUF files run by llama.cpp, greedy text compared with pocketgpt's.

    python benchmarks/interop.py [--llama-cpp PATH_TO_llama.cpp/build/bin] [--write-readme]

Nothing is downloaded: the GPT-2 model has random weights (the gpt2 preset's shape), the character
model is trained here for a few hundred steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from pocketgpt.config import PRESETS  # noqa: E402
from pocketgpt.data import read_text  # noqa: E402
from pocketgpt.formats.ggml import DEQUANTIZE, QUANTIZE  # noqa: E402
from pocketgpt.generate import Sampling, generate  # noqa: E402
from pocketgpt.interop.gguf import LLAMA_EOT_ID, export_gguf  # noqa: E402
from pocketgpt.interop.hf import export_hf, import_hf  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402
from pocketgpt.tokenizers.bpe import train_bpe  # noqa: E402
from pocketgpt.train import TRAIN_DEFAULTS, Checkpoint, load_dataset, train  # noqa: E402


def hf_rows(tmp: Path, new_tokens: int) -> list[str]:
    text = read_text("shakespeare")[0]
    bpe = train_bpe(text[:200_000], 2000)
    config = PRESETS["gpt2"].replace(vocab_size=bpe.vocab_size)
    model = GPT(config, seed=0)
    export_hf(Checkpoint(config, model.params, bpe), tmp / "hf")
    hf = GPT2LMHeadModel.from_pretrained(tmp / "hf").eval()
    ids = bpe.encode(text[:400])[:64]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()[0]
    exported = np.abs(model.forward(np.array([ids]))[0][0] - ref).max()
    imported_model = import_hf(tmp / "hf").model()
    imported = np.abs(imported_model.forward(np.array([ids]))[0][0] - ref).max()

    def ours():
        return list(generate(model, ids, max_new_tokens=new_tokens, sampling=Sampling(temperature=0)))

    def theirs():
        with torch.no_grad():
            return hf.generate(torch.tensor([ids]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False, pad_token_id=bpe.bos)[0, len(ids):].tolist()

    ours(), theirs()  # warm up
    t_ours, t_theirs = [], []
    for _ in range(3):  # interleaved, so both see the same machine load
        t = time.perf_counter()
        a = ours()
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = theirs()
        t_theirs.append(time.perf_counter() - t)
    same = a == b[:len(a)]
    ours_tps, theirs_tps = new_tokens / min(t_ours), new_tokens / min(t_theirs)
    return [
        f"| gpt2 preset (124M, random weights) exported, logits vs transformers | max abs diff {exported:.1e} | | |",
        f"| the same model imported back from the Hugging Face folder | max abs diff {imported:.1e} | | |",
        f"| greedy generation, {new_tokens} tokens after a 64-token prompt, float32, CPU | pocketgpt "
        f"{ours_tps:.1f} tokens/s | transformers `generate` {theirs_tps:.1f} tokens/s | "
        f"**{ours_tps / theirs_tps:.2f}x**{'' if same else ' (outputs differ!)'} |",
    ]


def llama_rows(tmp: Path, bin_dir: Path, new_tokens: int) -> list[str]:
    ds = load_dataset("shakespeare")
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=ds.tokenizer.vocab_size)
    model = GPT(config, seed=0)
    train(model, ds, dataclasses.replace(TRAIN_DEFAULTS["shakespeare-cpu"], steps=300, eval_interval=0))
    ckpt = Checkpoint(config, model.params, ds.tokenizer, "float32", ds.spec())
    prompt = "ROMEO:"
    new_tokens = min(new_tokens, config.block_size - len(prompt))  # llama.cpp aborts past the context
    rows = []
    for qtype in ("f32", "f16", "q8_0", "q4_0"):
        path = tmp / f"model-{qtype}.gguf"
        export_gguf(ckpt, path, qtype)
        run = subprocess.run([str(bin_dir / "llama-simple"), "-m", str(path), "-n", str(new_tokens), prompt],
                             capture_output=True, text=True, timeout=300)
        theirs = run.stdout
        params = dict(model.params)
        if qtype in QUANTIZE:  # pocketgpt on the very weights the file holds
            params = {k: DEQUANTIZE[qtype](QUANTIZE[qtype](v), v.shape[1]) if v.ndim == 2 else v
                      for k, v in params.items()}
        elif qtype == "f16":
            params = {k: v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v for k, v in params.items()}
        m = GPT(config, params)
        ids = list(generate(m, ds.tokenizer.encode(prompt), max_new_tokens=new_tokens,
                            sampling=Sampling(temperature=0)))
        if LLAMA_EOT_ID in ids:  # llama.cpp ends generation at id 11 (see pocketgpt.interop.gguf)
            ids = ids[:ids.index(LLAMA_EOT_ID)]
        ours = (prompt + ds.tokenizer.decode(ids)).rstrip("\n")
        theirs = theirs.rstrip("\n")
        n_same = next((i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y), min(len(ours), len(theirs)))
        verdict = "identical text" if ours == theirs else f"first {n_same} of {len(ours)} characters agree"
        rows.append(f"| llama.cpp (llama-simple) runs the {qtype} GGUF ({path.stat().st_size / 1e6:.2f} MB), greedy "
                    f"{new_tokens} tokens | {verdict} | pocketgpt on the same weights | |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp", type=Path, help="folder with a built llama-simple (llama.cpp build/bin)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    rows = ["| check | pocketgpt | compared with | ratio |", "| --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        rows += hf_rows(Path(tmp), args.tokens)
        if args.llama_cpp:
            rows += llama_rows(Path(tmp), args.llama_cpp, 100)
    report("interop", rows, args.write_readme)


if __name__ == "__main__":
    main()
