"""Training speed, measured side by side in one run and reported as ratios.

(a) microgpt's algorithm (batch 1, float64): the reference engine vs the NumPy engine, same documents.
(b) the shakespeare-cpu preset (batch 12, block 64, float32): ms per iteration, tokens/s, achieved
    GFLOP/s as a fraction of this machine's float32 matmul peak, and PyTorch eager on the same model.
(c) with --converge: the full 2,000-iteration shakespeare-cpu run and its validation loss.
(d) with --finetune: a fine-tuning step of SmolLM2-135M-Instruct (its GGUF weights expanded to float32, batch
    4 x 256 tokens of tinyshakespeare, AdamW, fine-tuning's default settings) against Hugging Face transformers'
    LlamaForCausalLM in PyTorch eager, loaded from the same file, with the same batches and threads.

    python benchmarks/train_speed.py [--converge] [--finetune] [--write-readme]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Cycle, median_time, report  # noqa: E402

from pocketgpt import reference  # noqa: E402
from pocketgpt.config import PRESETS  # noqa: E402
from pocketgpt.model import GPT  # noqa: E402
from pocketgpt.model.runtime import retain_freed_memory  # noqa: E402
from pocketgpt.train import (  # noqa: E402
    TRAIN_DEFAULTS,
    Batches,
    TrainSettings,
    adamw_step,
    eval_batches,
    load_dataset,
    make_optimizer,
    settings_for,
    train,
)
from pocketgpt.train.optim import AdamW, lr_at  # noqa: E402
from pocketgpt.train.reproduce import params_from_reference  # noqa: E402


def microgpt_engines(steps: int) -> dict:
    """Seconds per step of microgpt's recipe on both engines over the same first `steps` documents."""
    rng = random.Random(42)
    docs = reference.load_docs()
    rng.shuffle(docs)
    chars = sorted(set("".join(docs)))
    bos = len(chars)
    batches = [[bos] + [chars.index(c) for c in d] + [bos] for d in docs[:steps]]
    ref_params = reference.init_params(rng, len(chars) + 1)
    config = PRESETS["microgpt"].replace(vocab_size=len(chars) + 1)
    model = GPT(config, params_from_reference(ref_params, config), dtype=np.float64)

    ref_opt = reference.Adam(reference.flat_params(ref_params), steps)
    t = time.perf_counter()
    for step, tokens in enumerate(batches):
        loss, _ = reference.document_loss(ref_params, tokens)
        loss.backward()
        ref_opt.step(step)
    ref_s = (time.perf_counter() - t) / steps

    fast_opt = AdamW(model.flat, beta1=reference.BETA1, beta2=reference.BETA2, eps=reference.EPS_ADAM)
    arrays = [np.array([b[:config.block_size + 1]]) for b in batches]
    fast_batches = [(a[:, :-1], a[:, 1:], np.ones(a[:, 1:].shape)) for a in arrays]
    settings = TrainSettings(steps=steps, batch_size=1, lr=reference.LEARNING_RATE, grad_clip=0.0, dtype="float64")
    fast_step = adamw_step(model, settings, Cycle(fast_batches), fast_opt)

    def fast_run():
        for i in range(len(fast_batches)):
            fast_step(i, reference.LEARNING_RATE)

    fast_s = median_time(fast_run, repeats=9) / steps
    return {"reference_ms": ref_s * 1e3, "fast_ms": fast_s * 1e3, "ratio": ref_s / fast_s}


def matmul_peak_gflops() -> float:
    a = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    t = median_time(lambda: a @ a, repeats=15)
    return 2 * 1024**3 / t / 1e9


def step_flops(config, tokens: int, T: int) -> float:
    """Matmul FLOPs of one training step (forward + backward = 3x forward)."""
    C, L, V = config.n_embd, config.n_layer, config.vocab_size
    per_token = 2 * 12 * L * C * C + 2 * C * V + 4 * L * T * C
    return 3 * per_token * tokens


def shakespeare_speed(iters: int) -> dict:
    retain_freed_memory()  # as train() does; it applies to PyTorch in this process too
    dataset = load_dataset("shakespeare")
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=dataset.tokenizer.vocab_size)
    s = TRAIN_DEFAULTS["shakespeare-cpu"]
    model = GPT(config)
    data = Batches(dataset, s.batch_size, config.block_size, seed=0).take(iters)
    step = adamw_step(model, s, Cycle(data), make_optimizer(model, s))

    def ours():
        step(0, s.lr)

    out = {}
    try:
        import torch
        from torch_gpt import make_train_step

        torch.manual_seed(0)
        tstep, _ = make_train_step(config, s.lr, s.beta1, s.beta2, s.weight_decay, s.grad_clip)
        tdata = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y, _ in data]
        tit = iter(range(10**9))

        def theirs():
            tstep(*tdata[next(tit) % iters])

        # interleave rounds so both see the same machine load
        ours_t, theirs_t = [], []
        for _ in range(3):
            ours_t.append(median_time(ours, repeats=iters))
            theirs_t.append(median_time(theirs, repeats=iters))
        out["torch_ms"] = min(theirs_t) * 1e3
        out["torch_threads"] = torch.get_num_threads()
        ours_s = min(ours_t)
    except ImportError:
        ours_s = median_time(ours, repeats=iters)
    tokens = s.batch_size * config.block_size
    peak = matmul_peak_gflops()
    gflops = step_flops(config, tokens, config.block_size) / ours_s / 1e9
    out.update({"ms": ours_s * 1e3, "tokens_per_s": tokens / ours_s, "gflops": gflops, "peak_gflops": peak})
    return out


def converge() -> dict:
    """The full recipe on pocketgpt and, when installed, on the PyTorch model with the same batches,
    schedule and validation windows: the loss the recipe reaches, whichever engine runs it."""
    dataset = load_dataset("shakespeare")
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=dataset.tokenizer.vocab_size)
    s = TRAIN_DEFAULTS["shakespeare-cpu"]
    t = time.perf_counter()
    result = train(GPT(config, seed=s.seed), dataset, s)
    out = {"val_loss": result["val_loss"], "minutes": (time.perf_counter() - t) / 60}
    try:
        import torch
        from torch_gpt import make_train_step
    except ImportError:
        return out
    torch.manual_seed(s.seed)
    step, evaluate = make_train_step(config, s.lr, s.beta1, s.beta2, s.weight_decay, s.grad_clip)
    batches = Batches(dataset, s.batch_size, config.block_size, s.seed)
    for i in range(s.steps):
        x, y, _ = batches.next()
        step(torch.from_numpy(x), torch.from_numpy(y), lr_at(i, s.steps, s.lr, warmup=s.warmup,
                                                              schedule=s.schedule, min_lr=s.min_lr))
    out["torch_val_loss"] = evaluate(eval_batches(dataset, config.block_size))
    return out


def finetune_speed(rounds: int = 2, steps: int = 2) -> dict:
    """Seconds per fine-tuning step of SmolLM2-135M on both engines, the same batches, rounds interleaved so both
    see the same machine load; the first step's loss on each (the same model on the same batch: equal)."""
    from common import import_transformers, smollm2_path

    from pocketgpt.interop import load

    path = smollm2_path()
    ckpt = load(path, packed=False)
    model = ckpt.model()
    s = settings_for(None, model.num_params)
    dataset = load_dataset("shakespeare", None, ckpt.tokenizer)
    data = Batches(dataset, s.batch_size, s.context, seed=0).take(rounds * steps + 1)
    ours = adamw_step(model, s, Cycle(data), make_optimizer(model, s))
    out = {"batch": s.batch_size, "context": s.context, "workers": s.workers}
    out["loss"] = ours(0, s.lr)["loss"]  # the first step also compiles what it needs
    try:
        import torch
        import torch.nn.functional as F

        AutoModelForCausalLM = import_transformers("transformers.models.llama.modeling_llama").AutoModelForCausalLM
    except ImportError:
        out["seconds"] = min(median_time(lambda: ours(0, s.lr), repeats=steps, warmup=0) for _ in range(rounds))
        return out
    theirs_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    theirs_model.train()
    opt = torch.optim.AdamW(theirs_model.parameters(), lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps,
                            weight_decay=s.weight_decay)
    tdata = Cycle([(torch.from_numpy(x), torch.from_numpy(y)) for x, y, _ in data])

    def theirs() -> float:
        x, y = tdata.next()
        logits = theirs_model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs_model.parameters(), s.grad_clip)
        opt.step()
        return loss.item()

    out["torch_loss"] = theirs()
    ours_t, theirs_t = [], []
    for _ in range(rounds):
        ours_t.append(median_time(lambda: ours(0, s.lr), repeats=steps, warmup=0))
        theirs_t.append(median_time(theirs, repeats=steps, warmup=0))
    out.update({"seconds": min(ours_t), "torch_seconds": min(theirs_t), "torch_threads": torch.get_num_threads()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--microgpt-steps", type=int, default=40)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--converge", action="store_true", help="also run the full 2,000-iteration training")
    ap.add_argument("--finetune", action="store_true", help="also time a SmolLM2-135M fine-tuning step")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()

    load_at_start = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "unknown"
    a = microgpt_engines(args.microgpt_steps)
    print(f"(a) microgpt recipe: reference {a['reference_ms']:.1f} ms/step, NumPy engine {a['fast_ms']:.3f} "
          f"ms/step: {a['ratio']:.0f}x")
    b = shakespeare_speed(args.iters)
    rows = [
        "| benchmark | pocketgpt | compared with | ratio |",
        "| --- | --- | --- | --- |",
        f"| microgpt recipe, batch 1, float64 ({args.microgpt_steps} steps) | NumPy engine "
        f"{a['fast_ms']:.3f} ms/step | reference engine {a['reference_ms']:.0f} ms/step | "
        f"**{a['ratio']:.0f}x** faster |",
        f"| shakespeare-cpu, batch 12 x 64, float32 | {b['ms']:.1f} ms/iter, {b['tokens_per_s']:,.0f} tokens/s | "
        f"float32 matmul peak {b['peak_gflops']:.0f} GFLOP/s | {b['gflops'] / b['peak_gflops']:.2f} of peak "
        f"({b['gflops']:.0f} GFLOP/s) |",
    ]
    if "torch_ms" in b:
        rows.append(f"| shakespeare-cpu, same model and optimizer | {b['ms']:.1f} ms/iter | PyTorch eager "
                    f"{b['torch_ms']:.1f} ms/iter ({b['torch_threads']} threads) | "
                    f"**{b['ms'] / b['torch_ms']:.2f}x** the PyTorch time |")
    if args.converge:
        c = converge()
        torch_cell = (f"PyTorch, same recipe, batches and validation windows: {c['torch_val_loss']:.3f}"
                      if "torch_val_loss" in c else "goal <= 1.89")
        rows.append(f"| shakespeare-cpu, 2,000 iterations (nanoGPT recipe) | validation loss "
                    f"**{c['val_loss']:.3f}** in {c['minutes']:.1f} min | {torch_cell} | |")
    if args.finetune:
        d = finetune_speed()
        tokens = f"batch {d['batch']} x {d['context']}"
        if "torch_seconds" in d:
            rows.append(f"| SmolLM2-135M fine-tuning step, {tokens}, float32 | {d['seconds']:.2f} s/step "
                        f"({d['workers']} workers) | transformers' LlamaForCausalLM, PyTorch eager, "
                        f"{d['torch_seconds']:.2f} s/step ({d['torch_threads']} threads); first-step loss "
                        f"{d['loss']:.4f} and {d['torch_loss']:.4f} | **{d['seconds'] / d['torch_seconds']:.2f}x** "
                        "the PyTorch time |")
        else:
            rows.append(f"| SmolLM2-135M fine-tuning step, {tokens}, float32 | {d['seconds']:.2f} s/step | | |")
    rows += ["", f"Load average at the start: {load_at_start}."]
    report("train_speed", rows, args.write_readme)


if __name__ == "__main__":
    main()
