"""`pocketgpt export` and `pocketgpt import`: checkpoints to and from other tools' formats."""

from __future__ import annotations

from pathlib import Path

from pocketgpt.cli.common import UsageError, distinct, say
from pocketgpt.interop import load
from pocketgpt.interop.gguf import TYPES, export_gguf
from pocketgpt.interop.hf import export_hf
from pocketgpt.train import save_checkpoint


def add(sub) -> None:
    x = sub.add_parser("export", help="write a checkpoint in another tool's format",
                       description="Export a checkpoint: --format hf writes a folder that "
                       "transformers.GPT2LMHeadModel.from_pretrained loads, with its tokenizer; --format gguf "
                       "writes one file that llama.cpp runs (architecture gpt2).")
    x.add_argument("checkpoint", metavar="MODEL", help="the checkpoint to export")
    x.add_argument("out", metavar="OUT", help="a folder (hf) or a .gguf file (gguf)")
    x.add_argument("--format", choices=("hf", "gguf"), required=True, help="the format to write")
    x.add_argument("--type", choices=TYPES, default="f32", help="gguf weight type for matrices (default f32)")
    x.add_argument("--force", action="store_true", help="replace an existing OUT")
    x.set_defaults(func=run_export, parser=x)

    i = sub.add_parser("import", help="convert a GGUF file or a local Hugging Face folder into a checkpoint",
                       description="Import a model: a GGUF file (architecture llama), or a Hugging Face folder "
                       "(config.json; model.safetensors or pytorch_model.bin; vocab.json + merges.txt or "
                       "tokenizer.json); nothing is downloaded.")
    i.add_argument("source", metavar="SOURCE", help="a .gguf file or a Hugging Face folder")
    i.add_argument("out", metavar="OUT", help="the checkpoint folder to write")
    i.add_argument("--force", action="store_true", help="replace an existing checkpoint at OUT")
    i.set_defaults(func=run_import, parser=i)


def run_export(args) -> int:
    distinct(args.checkpoint, args.out)
    ckpt = load(args.checkpoint)
    out = Path(args.out)
    if out.exists() and not args.force and (out.is_file() or any(out.iterdir())):
        raise UsageError(f"{out} exists; pass --force to replace it")
    if args.format == "hf":
        if args.type != "f32":
            raise UsageError("--type applies to --format gguf only")
        export_hf(ckpt, out)
        say(f"exported {args.checkpoint} as a Hugging Face model to {out}")
        return 0
    report = export_gguf(ckpt, out, args.type)
    total = sum(nbytes for _, nbytes in report.values())
    say(f"exported {args.checkpoint} to {out}: {len(report)} tensors, {total / 1e6:.2f} MB of weights "
        f"({args.type}, vectors f32)")
    return 0


def run_import(args) -> int:
    distinct(args.source, args.out)
    ckpt = load(args.source)
    save_checkpoint(args.out, ckpt, overwrite=args.force)
    c = ckpt.config
    say(f"imported {args.source}: {c.n_layer} layers, {c.n_embd} channels, vocabulary {c.vocab_size}, context "
        f"{c.block_size} -> {args.out}")
    return 0
