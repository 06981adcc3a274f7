"""`pocketgpt eval` and `pocketgpt info`: how well a model predicts held-out text, and what a checkpoint holds."""

from __future__ import annotations

import math

from pocketgpt.cli.common import UsageError, emit_json, finish, positive_int, progress_bar
from pocketgpt.data import MODES
from pocketgpt.interop import load
from pocketgpt.interop.gguf_load import gguf_info, is_gguf
from pocketgpt.train import checkpoint_info, dataset_of, evaluate, perplexity


def add(sub) -> None:
    e = sub.add_parser("eval", help="validation loss, perplexity and bits per character",
                       description="Evaluate a model on the validation split of its data (or --data).")
    e.add_argument("checkpoint", metavar="MODEL", help="a checkpoint folder, a GGUF file or a Hugging Face folder")
    e.add_argument("--data", help="dataset to evaluate on (default: the one it was trained on)")
    e.add_argument("--mode", choices=MODES, help="lines or text (default: the one it was trained in)")
    e.add_argument("--context", type=positive_int, help="perplexity with llama.cpp's protocol: chunks of this many "
                   "tokens, the second half of each scored (default: the loss over every window of the model's "
                   "context)")
    e.add_argument("--chunks", type=positive_int, help="with --context: score the first N chunks only (default: all)")
    e.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    e.set_defaults(func=run_eval, parser=e)

    i = sub.add_parser("info", help="what a checkpoint holds, and whether its files are intact",
                       description="Architecture, parameters, dtype, quantization, tokenizer, training step and "
                       "settings, and every file with its size and whether its SHA-256 digest verifies.")
    i.add_argument("checkpoint", metavar="MODEL", help="a checkpoint folder or a GGUF file")
    i.add_argument("--json", action="store_true", help="print the whole description as JSON")
    i.set_defaults(func=run_info, parser=i)


def run_eval(args) -> int:
    if args.chunks and not args.context:
        raise UsageError("--chunks goes with --context")
    ckpt = load(args.checkpoint)
    dataset = dataset_of(ckpt.data, ckpt.tokenizer, args.data, args.mode)
    if args.context:
        if dataset.mode != "text":
            raise UsageError("--context scores continuous text; use --mode text")
        with progress_bar("perplexity", "chunk") as progress:
            r = perplexity(ckpt.model(), dataset.val, args.context, args.chunks, progress=progress)
        result = {"checkpoint": str(args.checkpoint), "data": dataset.name, "protocol": "llama.cpp", **r}
        return finish(f"perplexity {r['perplexity']:.3f} over {r['tokens']:,} tokens in {r['chunks']} chunks of "
                      f"{r['context']} (llama.cpp's protocol: the second half of each chunk scored)", result,
                      args.json)
    with progress_bar("evaluating", "batch") as progress:
        loss = evaluate(ckpt.model(), dataset, progress=progress)
    result = {"checkpoint": str(args.checkpoint), "data": dataset.name, "mode": dataset.mode, "val_loss": loss,
              "perplexity": math.exp(loss), "bits_per_char": loss / math.log(2)}
    return finish(f"validation loss {loss:.4f} | perplexity {result['perplexity']:.3f} | "
                  f"bits per character {result['bits_per_char']:.4f}", result, args.json)


def run_info(args) -> int:
    if is_gguf(args.checkpoint):
        return gguf_summary(args)
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


def gguf_summary(args) -> int:
    info = gguf_info(args.checkpoint)
    c, t = info["model"], info["tokenizer"]
    types = ", ".join(f"{n} {k}" for k, n in sorted(info["tensor_types"].items()))
    print(f"{info['file']}: GGUF, {info['architecture']} ({info['name']}), {info['parameters']:,} parameters, "
          f"{info['bytes'] / 1e6:.1f} MB\n"
          f"architecture: {plural(c['n_layer'], 'layer')}, {c['n_embd']} channels, {plural(c['n_head'], 'head')} "
          f"({c['n_kv_head'] or c['n_head']} key/value), MLP {c['ffn_size']}, context {c['block_size']}, vocabulary "
          f"{c['vocab_size']}\ntensors: {types}\ntokenizer: {t['model']} ({t['pre']}), {t['tokens']} tokens"
          f"{', chat template' if t['chat_template'] else ''}")
    if args.json:
        emit_json(info)
    return 0
