"""`pocketgpt train`: a new model from a preset, a resumed run, a fine-tune of a checkpoint (--init-from), or
microgpt's exact recipe (--reproduce-microgpt). Flags map one-to-one onto GPTConfig and TrainSettings."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from tqdm import tqdm

from pocketgpt.cli.common import UsageError, count, emit_json, positive_int, say
from pocketgpt.config import PRESETS, preset
from pocketgpt.data import BUILTIN, MODES
from pocketgpt.generate import Request, Sampling, Sequence, decode, default_length, encode_prompt
from pocketgpt.interop import load
from pocketgpt.model import GPT, count_params
from pocketgpt.tokenizers import BPETokenizer
from pocketgpt.train import (
    TrainSettings,
    check_training_memory,
    dataset_of,
    load_checkpoint,
    load_dataset,
    resume_settings,
    settings_for,
    train,
)
from pocketgpt.train.optim import SCHEDULES
from pocketgpt.train.reproduce import reproduce_microgpt

TRAIN_FLAGS = [f.name for f in dataclasses.fields(TrainSettings)]
ARCH_FLAGS = ("n_layer", "n_head", "n_embd", "block_size")  # override the preset's architecture
DEFAULT_PRESET = "microgpt"


def add(sub) -> None:
    t = sub.add_parser("train", help="train a model (default: microgpt-sized on the names data)",
                       description="Train a GPT: a new one from a preset, a resumed run (--resume) or a fine-tune of "
                       "a checkpoint (--init-from); writes a checkpoint folder and prints samples.")
    t.add_argument("--preset", choices=list(PRESETS), help=f"architecture and training defaults (default "
                   f"{DEFAULT_PRESET})")
    t.add_argument("--data", help=f"{', '.join(BUILTIN)}, or a UTF-8 text file (default names; with --init-from, "
                   "the checkpoint's own data)")
    for flag, what in (("n-layer", "blocks"), ("n-head", "attention heads"), ("n-embd", "channels"),
                       ("block-size", "context length in tokens")):
        t.add_argument(f"--{flag}", dest=flag.replace("-", "_"), type=positive_int,
                       help=f"{what} (default: the preset's)")
    t.add_argument("--mode", choices=MODES, help="lines: one document per line; text: continuous text (default: "
                   "the data's own, lines for a file)")
    s = TrainSettings()
    t.add_argument("--steps", type=positive_int, help=f"training steps (default: the preset's; {s.steps} without one)")
    t.add_argument("--batch-size", dest="batch_size", type=positive_int, help="sequences per step (default: the "
                   "preset's)")
    t.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    t.add_argument("--min-lr", dest="min_lr", type=float, help="learning rate at the end of the decay (default: the "
                   "preset's)")
    t.add_argument("--warmup", type=int, help="linear warmup steps (default: the preset's)")
    t.add_argument("--schedule", choices=SCHEDULES, help="learning-rate decay after warmup (default: the preset's)")
    t.add_argument("--weight-decay", dest="weight_decay", type=float, help="AdamW weight decay on matrices "
                   "(default: the preset's)")
    t.add_argument("--beta1", type=float, help=f"AdamW's first-moment decay (default: the preset's; {s.beta1} "
                   "without one)")
    t.add_argument("--beta2", type=float, help=f"AdamW's second-moment decay (default: the preset's; {s.beta2} "
                   "without one)")
    t.add_argument("--eps", type=float, help=f"AdamW's epsilon (default {s.eps:g})")
    t.add_argument("--grad-clip", dest="grad_clip", type=float, help="max gradient norm, 0 for none (default: the "
                   "preset's)")
    t.add_argument("--seed", type=int, help=f"seed of the weights and the batches, 0..2^63-1 (default {s.seed})")
    t.add_argument("--eval-interval", dest="eval_interval", type=int,
                   help="evaluate and checkpoint every N steps, 0 for the end only (default: the preset's)")
    t.add_argument("--dtype", choices=("float32", "float64"), help=f"parameter dtype (default {s.dtype})")
    t.add_argument("--workers", type=positive_int, help="threads that split each batch (default: the preset's, or "
                   "by model size)")
    t.add_argument("--context", type=positive_int, help="tokens per training window, at most the model's context "
                   "(default: the model's context; 256 with --init-from)")
    t.add_argument("--tokenizer", metavar="DIR", help="a BPE tokenizer (vocab.json, merges.txt) instead of "
                   "characters (default: characters of the data)")
    t.add_argument("--out", help="checkpoint folder (default out/<data>)")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (only --steps and "
                   "--eval-interval may change)")
    t.add_argument("--init-from", dest="init_from", metavar="MODEL",
                   help="fine-tune: start from this checkpoint's weights with a fresh optimizer")
    t.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")
    t.add_argument("--samples", type=count, default=10, help="samples to print after training (default 10)")
    t.add_argument("--reproduce-microgpt", action="store_true",
                   help="run microgpt's exact recipe (batch 1, float64, seed 42) on the fast engine")
    t.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    t.set_defaults(func=run, parser=t)


def run(args) -> int:
    if args.reproduce_microgpt:
        return run_reproduce(args)
    given = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None}
    arch = {a: getattr(args, a) for a in ARCH_FLAGS if getattr(args, a)}
    if args.resume and args.init_from:
        raise UsageError("--resume continues a run and --init-from starts a new one; give one of them")
    overwrite, data_record = args.force, {}
    if args.resume:
        if arch or args.preset or args.data or args.mode or args.tokenizer:
            raise UsageError("--resume continues the saved run; only --steps and --eval-interval may change")
        ckpt = load_checkpoint(args.resume, train_state=True)
        settings = resume_settings(ckpt, **given)
        dataset = dataset_of(ckpt.data, ckpt.tokenizer)
        model, data_record = ckpt.model(), {k: v for k, v in ckpt.data.items() if k == "init_from"}
        out = Path(args.out or args.resume)
        resume = ckpt if out.resolve() == Path(args.resume).resolve() else None
        if resume is None:
            raise UsageError("--resume writes to the run's own folder; leave out --out")
    elif args.init_from:
        if arch or args.preset or args.tokenizer:
            raise UsageError("--init-from keeps the checkpoint's architecture and tokenizer")
        ckpt = load(args.init_from, packed=False)
        model = ckpt.model()
        if model.packed:
            raise UsageError(f"--init-from {args.init_from} is quantized; fine-tune its float checkpoint")
        dataset = dataset_of(ckpt.data, ckpt.tokenizer, args.data, args.mode)
        settings = settings_for(None, model.num_params, **given)
        if settings.dtype != model.dtype.name:
            model = GPT(model.config, model.params, dtype=settings.dtype)
        data_record = {"init_from": str(args.init_from)}
        out, resume = Path(args.out or Path("out") / f"{Path(args.init_from).stem}-finetuned"), None
    else:
        preset_name = args.preset or DEFAULT_PRESET
        tokenizer = BPETokenizer.load(Path(args.tokenizer) / "vocab.json", Path(args.tokenizer) / "merges.txt") \
            if args.tokenizer else None
        dataset = load_dataset(args.data or "names", args.mode, tokenizer)
        config = preset(preset_name).replace(vocab_size=dataset.tokenizer.vocab_size, **arch)
        settings = settings_for(preset_name, count_params(config), **given)
        check_training_memory(config, settings)
        model = GPT(config, dtype=settings.dtype, seed=settings.seed)
        out, resume = Path(args.out or Path("out") / Path(args.data or "names").stem), None

    bar, t0 = None, time.perf_counter()

    def on_start(start_step: int) -> None:
        nonlocal bar
        say(f"training {model.num_params:,} parameters on {dataset.name} ({dataset.mode} mode, vocab "
            f"{dataset.tokenizer.vocab_size}) for {settings.steps} steps -> {out}")
        bar = tqdm(total=settings.steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=0.25,
                   disable=None)

    def on_step(info):
        tok_s = info["tokens"] / max(time.perf_counter() - t0, 1e-9)
        post = {"loss": f"{info['loss']:.4f}", "tok/s": f"{tok_s:,.0f}"}
        if "val_loss" in info:
            post["val"] = f"{info['val_loss']:.4f}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    try:
        result = train(model, dataset, settings, out=out, resume=resume, overwrite=overwrite, data=data_record,
                       on_start=on_start, on_step=on_step)
    finally:
        if bar is not None:
            bar.close()
    say(f"validation loss {result['val_loss']:.4f} | {result['tokens_per_s']:,.0f} tokens/s | checkpoint {out}")
    samples = print_samples(model, dataset.tokenizer, dataset.mode == "lines", args.samples, settings.seed,
                            quiet=args.json)
    if args.json:
        emit_json({**result, "checkpoint": str(out), "samples": samples})
    return 0


def print_samples(model, tokenizer, documents: bool, n: int, seed: int, quiet: bool) -> list[str]:
    """n samples after training (seeds seed, seed + 1, ...), printed as they are made unless quiet."""
    samples = []
    with tqdm(total=n, desc="samples", unit="sample", leave=False, disable=None if n else True) as bar:
        for i in range(n):
            request = Request(tuple(encode_prompt(tokenizer, "", documents)),
                              default_length(model.config.block_size, documents), Sampling(seed=seed + i),
                              tokenizer.stop_tokens)
            samples.append(tokenizer.decode(list(decode(model, Sequence(request), sliding=not documents))))
            bar.update(1)
            if not quiet:
                bar.write(("---\n" if i and not documents else "") + samples[-1])
    return samples


def run_reproduce(args) -> int:
    start = time.perf_counter()
    seed = 42 if args.seed is None else args.seed
    losses, samples = reproduce_microgpt(steps=args.steps or 1000, seed=seed,
                                         log=print if not args.json else lambda s: None)
    if args.json:
        emit_json({"steps": len(losses), "final_loss": losses[-1], "samples": samples,
                   "seconds": time.perf_counter() - start})
    return 0
