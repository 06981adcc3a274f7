"""`pocketgpt eval` and `pocketgpt info`: how well a model predicts held-out text, and what a checkpoint holds."""

from __future__ import annotations

import math

from pocketgpt.cli.common import emit_json, finish, progress_bar
from pocketgpt.data import MODES
from pocketgpt.interop import load
from pocketgpt.train import checkpoint_info, dataset_of, evaluate


def add(sub) -> None:
    e = sub.add_parser("eval", help="validation loss, perplexity and bits per character",
                       description="Evaluate a model on the validation split of its data (or --data).")
    e.add_argument("checkpoint", metavar="MODEL", help="a checkpoint folder or a Hugging Face folder")
    e.add_argument("--data", help="dataset to evaluate on (default: the one it was trained on)")
    e.add_argument("--mode", choices=MODES, help="lines or text (default: the one it was trained in)")
    e.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    e.set_defaults(func=run_eval, parser=e)

    i = sub.add_parser("info", help="what a checkpoint holds, and whether its files are intact",
                       description="Architecture, parameters, dtype, quantization, tokenizer, training step and "
                       "settings, and every file with its size and whether its SHA-256 digest verifies.")
    i.add_argument("checkpoint", metavar="DIR", help="a checkpoint folder")
    i.add_argument("--json", action="store_true", help="print the whole description as JSON")
    i.set_defaults(func=run_info, parser=i)


def run_eval(args) -> int:
    ckpt = load(args.checkpoint)
    dataset = dataset_of(ckpt.data, ckpt.tokenizer, args.data, args.mode)
    with progress_bar("evaluating", "batch") as progress:
        loss = evaluate(ckpt.model(), dataset, progress=progress)
    result = {"checkpoint": str(args.checkpoint), "data": dataset.name, "mode": dataset.mode, "val_loss": loss,
              "perplexity": math.exp(loss), "bits_per_char": loss / math.log(2)}
    return finish(f"validation loss {loss:.4f} | perplexity {result['perplexity']:.3f} | "
                  f"bits per character {result['bits_per_char']:.4f}", result, args.json)


def run_info(args) -> int:
    info = checkpoint_info(args.checkpoint)
    c = info["model"]
    lines = [f"{info['checkpoint']}: {info['parameters']:,} parameters, {info['dtype']}, "
             f"{info['weight_bytes'] / 1e6:.2f} MB of weights (format version {info['format_version']})",
             f"architecture: {plural(c['n_layer'], 'layer')}, {c['n_embd']} channels, {plural(c['n_head'], 'head')} "
             f"({c['n_kv_head'] or c['n_head']} key/value), context {c['block_size']}, vocabulary {c['vocab_size']}, "
             f"{c['norm']}, {c['activation']}, {c['positions']} positions"]
    if info["packed_weights"]:
        q = info["quantization"] or {}
        lines.append(f"quantized: {info['packed_weights']} matrices in {', '.join(info['packed_formats'])}"
                     + (f" ({q.get('method')}, {q.get('bits')} bits, groups of {q.get('group_size')})" if q else ""))
    lines.append(f"tokenizer: {info['tokenizer']['type']}; data: {info['data'].get('data', 'not recorded')} "
                 f"({info['data'].get('mode', '-')})")
    if "training" in info:
        t = info["training"]
        val = f", validation loss {t['val_loss'][0][1]:.4f}" if t["val_loss"] else ""
        lines.append(f"training: step {t['step']} of {t['settings'].get('steps')}{val}")
    lines += [f"  {f['name']:<26} {f['bytes']:>14,} bytes  {f['digest']}" for f in info["files"]]
    print("\n".join(lines))
    if args.json:
        emit_json(info)
    bad = [f for f in info["files"] if f["digest"] not in ("ok", "not recorded")]
    return 1 if bad else 0


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
