"""`pocketgpt <command>`: a thin layer over the library. Flags map one-to-one onto library arguments.

Every bad input ends as one line on stderr, `pocketgpt <command>: error: ...`, and exit code 2.
Commands that report figures print, with --json, one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

from pocketgpt.bpe import BPETokenizer, train_bpe
from pocketgpt.checkpoint import Checkpoint, CheckpointError, check_can_save, load_checkpoint, save_checkpoint
from pocketgpt.config import PRESETS
from pocketgpt.data import BUILTIN, MODES, Batches, DataError, load_dataset, read_text
from pocketgpt.generate import TextStream, encode_prompt, generate
from pocketgpt.interop.hf import InteropError
from pocketgpt.model import GPT
from pocketgpt.optim import SCHEDULES
from pocketgpt.speculative import NGramDraft, SpecStats, speculative_generate
from pocketgpt.tokenizer import UnknownCharacterError
from pocketgpt.train import TRAIN_DEFAULTS, TrainSettings, evaluate, train


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {s})")
    return v


def emit_json(obj: dict) -> None:
    print(json.dumps(obj))


def finish(line: str, result: dict, as_json: bool) -> int:
    """Print the human-readable summary and, with --json, the result as the last line."""
    print(line)
    if as_json:
        emit_json(result)
    return 0


# ----------------------------------------------------------------------------- train

TRAIN_FLAGS = [f.name for f in dataclasses.fields(TrainSettings)]
ARCH_FLAGS = ("n_layer", "n_head", "n_embd", "block_size")  # override the preset's architecture


def cmd_train(args) -> int:
    if args.reproduce_microgpt:
        from pocketgpt.reproduce import reproduce_microgpt

        start = time.perf_counter()
        losses, samples = reproduce_microgpt(steps=args.steps or 1000, seed=42 if args.seed is None else args.seed,
                                             log=print if not args.json else lambda s: None)
        if args.json:
            emit_json({"steps": len(losses), "final_loss": losses[-1], "samples": samples,
                       "seconds": time.perf_counter() - start})
        return 0

    given = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None}
    if args.resume:
        ckpt = load_checkpoint(args.resume, train_state=True)
        changed = sorted(set(given) - {"steps", "eval_interval"}) + [a for a in ARCH_FLAGS if getattr(args, a)]
        if changed or args.preset or args.data or args.mode or args.tokenizer:
            raise UsageError(f"--resume continues the saved run; only --steps and --eval-interval may change "
                             f"(got --{(changed or ['preset/--data/--mode'])[0].replace('_', '-')})")
        try:
            settings = TrainSettings(**{**ckpt.train_state["settings"], **given})
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{args.resume}/train_state.json is invalid: {e}") from None
        dataset = checkpoint_dataset(ckpt)
        model = ckpt.model()
        out = Path(args.out or args.resume)
    else:
        preset_name = args.preset or "microgpt"
        try:
            settings = dataclasses.replace(TRAIN_DEFAULTS.get(preset_name, TrainSettings()), **given)
        except ValueError as e:
            raise UsageError(e) from None
        tokenizer = None
        if args.tokenizer:
            try:
                tokenizer = BPETokenizer.load(Path(args.tokenizer) / "vocab.json", Path(args.tokenizer) / "merges.txt")
            except ValueError as e:
                raise UsageError(f"--tokenizer {args.tokenizer}: {e}") from None
        dataset = load_dataset(args.data or "names", args.mode, tokenizer)
        arch = {a: getattr(args, a) for a in ARCH_FLAGS if getattr(args, a)}
        try:
            config = PRESETS[preset_name].replace(vocab_size=dataset.tokenizer.vocab_size, **arch)
        except ValueError as e:
            raise UsageError(e) from None
        model = GPT(config, dtype=settings.dtype, seed=settings.seed)
        ckpt = None
        out = Path(args.out or Path("out") / Path(args.data or "names").stem)

    from tqdm import tqdm

    start_step = ckpt.train_state["step"] if ckpt else 0
    print(f"training {model.num_params:,} parameters on {dataset.name} ({dataset.mode} mode, "
          f"vocab {dataset.tokenizer.vocab_size}) for {settings.steps} steps -> {out}", file=sys.stderr)
    bar = tqdm(total=settings.steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=0.25)
    t0 = time.perf_counter()

    def on_step(info):
        tok_s = info["tokens"] / max(time.perf_counter() - t0, 1e-9)
        post = {"loss": f"{info['loss']:.4f}", "tok/s": f"{tok_s:,.0f}"}
        if "val_loss" in info:
            post["val"] = f"{info['val_loss']:.4f}"
        bar.set_postfix(post, refresh=False)
        bar.update(1)

    try:
        result = train(model, dataset, settings, out=out, resume=ckpt, on_step=on_step)
    finally:
        bar.close()
    print(f"validation loss {result['val_loss']:.4f} | {result['tokens_per_s']:,.0f} tokens/s | "
          f"checkpoint {out}", file=sys.stderr)
    tok = dataset.tokenizer
    samples = []
    for i in range(args.samples):
        lines = dataset.mode == "lines"
        ids = generate(model, encode_prompt(tok, "", documents=lines),
                       max_new_tokens=model.config.block_size if lines else 256, temperature=0.5 if lines else 0.8,
                       seed=settings.seed + i, stop_token=tok.bos, sliding=not lines)
        samples.append(tok.decode(ids))
        if not args.json:
            print(samples[-1])
    if args.json:
        emit_json({**result, "checkpoint": str(out), "samples": samples})
    return 0


# ----------------------------------------------------------------------------- sample, eval


def unescape(text: str) -> str:
    r"""'\n', '\t' and '\\' typed on a command line as the characters they name."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)


def checkpoint_dataset(ckpt, data: str | None = None, mode: str | None = None):
    """The dataset a checkpoint was trained on (or `data`), tokenized with the checkpoint's tokenizer."""
    return load_dataset(data or ckpt.data.get("data", "names"), mode or ckpt.data.get("mode"), ckpt.tokenizer)


def load_float_checkpoint(path: str, verb: str):
    ckpt = load_checkpoint(path)
    if ckpt.qweights:
        raise UsageError(f"{path} is already quantized; {verb} its float checkpoint")
    return ckpt


def cmd_sample(args) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    model, tok = ckpt.model(), ckpt.tokenizer
    lines = ckpt.data.get("mode", "lines") == "lines"
    prompt = encode_prompt(tok, args.prompt, documents=lines)
    max_tokens = args.max_tokens or (model.config.block_size if lines else 256)
    if len(prompt) > model.config.block_size and (lines or args.draft_kind):
        raise UsageError(f"--prompt is {len(prompt) - lines} tokens; this model's context holds "
                         f"{model.config.block_size - lines}{' after BOS' if lines else ''}")
    draft = load_draft(args, ckpt)
    stats = SpecStats()

    def run(seed, sliding):
        if draft is not None:
            return speculative_generate(model, prompt, max_new_tokens=max_tokens, draft=draft, k=args.draft_k,
                                        adaptive=args.adaptive, temperature=args.temperature, top_k=args.top_k,
                                        top_p=args.top_p, seed=seed, stop_token=tok.bos, stats=stats)
        cache = None
        if args.kv_cache == "q4":
            from pocketgpt.quant.kvcache import QuantizedKVCache

            cache = QuantizedKVCache(model.config, 1, model.dtype)
        return generate(model, prompt, max_new_tokens=max_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=seed, stop_token=tok.bos, sliding=sliding, cache=cache)

    seeds = [None if args.seed is None else args.seed + i for i in range(args.count)]
    start = time.perf_counter()
    for seed in seeds:
        print(args.prompt, end="", flush=True)
        stream = TextStream(tok.decode, [unescape(s) for s in args.stop])
        for token in run(seed, sliding=not lines):
            print(stream.push(token), end="", flush=True)
            if stream.stopped:
                break
        print(stream.flush())
    if draft is not None:
        spec_rate = stats.tokens / (time.perf_counter() - start)
        start = time.perf_counter()
        plain = sum(len(list(generate(model, prompt, max_new_tokens=max_tokens, temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p, seed=seed, stop_token=tok.bos)))
                    for seed in seeds)
        speedup = spec_rate / (plain / (time.perf_counter() - start))
        per_position = " ".join(f"{a:.2f}" for a in stats.per_position)
        print(f"speculative ({args.draft_kind}, k={args.draft_k}{', adaptive' if args.adaptive else ''}): "
              f"acceptance {stats.acceptance_rate:.2f}, {stats.tokens_per_forward:.2f} tokens per target forward, "
              f"per position [{per_position}], {speedup:.2f}x the tokens/s of plain decoding (measured after it)",
              file=sys.stderr)
    return 0


def load_draft(args, ckpt):
    """The draft that --draft, --draft-quantized or --draft-ngram asks for (None without one)."""
    if args.draft_kind is None:
        return None
    if getattr(args, "kv_cache", "float") != "float":
        raise UsageError("--kv-cache q4 applies to plain decoding, not to speculative decoding")
    if args.draft_kind == "ngram":
        return NGramDraft()
    if args.draft_kind == "quantized":
        from pocketgpt.quant.model import QuantRecipe, quantize_model

        if ckpt.qweights:
            raise UsageError("--draft-quantized needs a float checkpoint to quantize")
        group = next(g for g in (64, 32, 16, 8, 4, 2, 1) if ckpt.config.n_embd % g == 0)
        return quantize_model(ckpt.model(), QuantRecipe("rtn", 4, group))
    draft = load_checkpoint(args.draft)
    if draft.tokenizer.to_dict() != ckpt.tokenizer.to_dict():
        raise UsageError(f"--draft {args.draft} has another tokenizer than {args.checkpoint}")
    return draft.model()


def cmd_eval(args) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    dataset = checkpoint_dataset(ckpt, args.data, args.mode)
    loss = evaluate(ckpt.model(), dataset)
    result = {"checkpoint": str(args.checkpoint), "data": dataset.name, "mode": dataset.mode, "val_loss": loss,
              "perplexity": math.exp(loss), "bits_per_char": loss / math.log(2)}
    return finish(f"validation loss {loss:.4f} | perplexity {result['perplexity']:.3f} | "
                  f"bits per character {result['bits_per_char']:.4f}", result, args.json)


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from pocketgpt.server import Engine, create_app
    except ImportError as e:
        raise UsageError(f"serving needs the serve extra (pip install 'pocketgpt[serve]'): {e}") from None
    from pocketgpt.speculative import SpeculativeBatcher

    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.model()
    draft = load_draft(args, ckpt)
    batcher = SpeculativeBatcher(model, draft, args.draft_k, args.adaptive, args.slots) if draft is not None else None
    name = args.name or Path(args.checkpoint).resolve().name
    engine = Engine(model, ckpt.tokenizer, name, ckpt.data.get("mode", "lines") == "lines", args.slots,
                    args.max_queue, batcher)
    print(f"serving {name} ({model.num_params:,} parameters{', ' + args.draft_kind + ' draft' if draft else ''}) "
          f"at http://{args.host}:{args.port}/v1 with {args.slots} slots", file=sys.stderr)
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="warning")
    return 0


# ----------------------------------------------------------------------------- guard


def cmd_guard(args) -> int:
    from pocketgpt.guard import audit, inventory, policy, redteam

    if args.guard_command == "verify":
        problems, last = audit.verify(args.log)
        if problems:
            for p in problems:
                print(f"{args.log}: {p}", file=sys.stderr)
            return 1
        print(f"{args.log}: intact, {0 if last is None else last['seq'] + 1} records")
        return 0
    try:
        pol = policy.load_policy(args.policy or redteam.EXAMPLE_POLICY)
    except policy.PolicyError as e:
        raise UsageError(e) from None
    if args.guard_command == "inventory":
        inv = inventory.inventory(pol, args.log)
        print(inventory.render(inv))
        if args.json:
            emit_json(inv)
        return 0
    result = redteam.redteam(pol)
    ok = result["attack_success_with_guard"] <= args.max_attack_success
    summary = (f"{result['attacks']} attacks over {result['domains']} domains: attack success "
               f"{100 * result['attack_success_with_guard']:.1f}% with the guard, "
               f"{100 * result['attack_success_without_guard']:.1f}% without; benign utility "
               f"{100 * result['benign_utility_with_guard']:.1f}% with, "
               f"{100 * result['benign_utility_without_guard']:.1f}% without; scanner detection "
               f"{100 * result['scanner_detection_rate']:.1f}%, false positives "
               f"{100 * result['scanner_false_positive_rate']:.2f}% of {result['benign_texts']} benign texts")
    print(summary if ok else summary + f" -- FAIL: attack success above {100 * args.max_attack_success:g}%")
    if args.json:
        emit_json(result)
    return 0 if ok else 1


# ----------------------------------------------------------------------------- vla


def cmd_vla(args) -> int:
    try:
        from pocketgpt.vla import env as vla_env
        from pocketgpt.vla import policy as vla_policy

        vla_env.require_minigrid()
    except ImportError as e:
        raise UsageError(str(e)) from None
    if args.vla_command == "collect":
        if args.episodes < 1:
            raise UsageError("--episodes must be >= 1")
        out = Path(args.out or f"{args.env}-{args.episodes}.npz")
        try:
            demos = vla_env.collect(args.env, args.episodes, args.seed,
                                    log=lambda n: print(f"{n} episodes", file=sys.stderr))
        except ValueError as e:
            raise UsageError(e) from None
        demos.save(out)
        return finish(f"{args.episodes} expert episodes of {args.env} ({len(demos.actions)} steps, seeds "
                      f"{args.seed}-{args.seed + args.episodes - 1}) -> {out}",
                      {"env": args.env, "episodes": args.episodes, "steps": len(demos.actions), "out": str(out)},
                      args.json)
    if args.vla_command == "train":
        try:
            demos = vla_env.Demos.load(args.data)
        except ValueError as e:
            raise UsageError(e) from None
        check_can_save(args.out)
        arch = {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head") if getattr(args, k) is not None}
        policy, info = vla_policy.train_policy(demos, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                               seed=args.seed, **arch,
                                               log=lambda r: print(f"step {r['step']}: loss {r['loss']:.4f}",
                                                                   file=sys.stderr))
        save_checkpoint(args.out, policy.checkpoint({"env": demos.env, "demos": str(args.data)}))
        return finish(f"trained on {info['samples']} expert steps for {args.steps} steps in {info['seconds']:.0f} s, "
                      f"final loss {info['final_loss']:.4f} -> {args.out}", {**info, "out": str(args.out)}, args.json)
    ckpt = load_checkpoint(args.checkpoint)
    try:
        policy = vla_policy.VLAPolicy.from_checkpoint(ckpt)
    except ValueError as e:
        raise UsageError(f"{args.checkpoint}: {e}") from None
    env_name = args.env or ckpt.data.get("env", "BabyAI-GoToLocal-v0")
    rows = vla_policy.evaluation_table(env_name, policy, args.episodes, args.budget,
                                       baselines=not args.no_baselines)
    for r in rows:
        lo, hi = r["ci95"]
        print(f"{r['agent']:<22} budget {r['budget']:>3}: success {r['success']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
    if args.json:
        emit_json({"env": env_name, "episodes": args.episodes, "rows": rows})
    return 0


# ----------------------------------------------------------------------------- interop


def cmd_export(args) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    if args.format == "hf":
        from pocketgpt.interop.hf import export_hf

        if args.type != "f32":
            raise UsageError("--type applies to --format gguf only")
        export_hf(ckpt, args.out)
        print(f"exported {args.checkpoint} as a Hugging Face GPT-2 model to {args.out}", file=sys.stderr)
        return 0
    from pocketgpt.interop.gguf import export_gguf

    report = export_gguf(ckpt, args.out, args.type)
    total = sum(nbytes for _, nbytes in report.values())
    print(f"exported {args.checkpoint} to {args.out}: {len(report)} tensors, {total / 1e6:.2f} MB of weights "
          f"({args.type}, vectors f32)", file=sys.stderr)
    return 0


def cmd_import(args) -> int:
    from pocketgpt.interop.hf import import_hf

    ckpt = import_hf(args.source)
    check_can_save(args.out)
    save_checkpoint(args.out, ckpt)
    c = ckpt.config
    print(f"imported {args.source}: GPT-2 with {c.n_layer} layers, {c.n_embd} channels, vocabulary "
          f"{c.vocab_size}, context {c.block_size} -> {args.out}", file=sys.stderr)
    return 0


def cmd_tokenizer_train(args) -> int:
    text, _ = read_text(args.data)
    start = time.perf_counter()
    tok = train_bpe(text, args.vocab_size)
    out = Path(args.out)
    check_can_save(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    n_tokens = len(tok.encode(text))
    result = {"vocab_size": tok.vocab_size, "merges": len(tok.merges), "tokens": n_tokens,
              "chars_per_token": len(text) / n_tokens, "seconds": time.perf_counter() - start, "out": str(out)}
    return finish(f"trained a byte-level BPE of {tok.vocab_size} tokens on {args.data}: "
                  f"{result['chars_per_token']:.2f} characters per token -> {out}/vocab.json, merges.txt",
                  result, args.json)


# ----------------------------------------------------------------------------- quantization


def cmd_quantize(args) -> int:
    from pocketgpt.quant.model import QuantRecipe, check_recipe, quantize_model

    ckpt = load_float_checkpoint(args.checkpoint, "quantize")
    check_can_save(args.out)
    try:
        recipe = QuantRecipe(args.method, args.bits, args.group_size, not args.asym, args.act_order, args.damp,
                             args.rotate)
        check_recipe(ckpt.config, recipe)
    except ValueError as e:
        raise UsageError(e) from None
    dataset = checkpoint_dataset(ckpt, args.data, args.mode)
    model = ckpt.model()
    start = time.perf_counter()
    if args.method == "qat":
        from pocketgpt.quant.qat import qat, qat_settings

        workers = 2 if model.num_params >= 500_000 else 1
        quantized = qat(model, recipe, dataset, qat_settings(args.steps, args.lr or 1e-4, args.seed, workers))
    elif args.method == "zeroqat":
        from pocketgpt.quant.qat import zeroqat

        quantized = zeroqat(model, recipe, dataset, steps=args.steps, lr=args.lr or 1e-5, seed=args.seed)
    else:
        calib = None
        if args.method in ("gptq", "awq", "smoothquant") or args.rotate == "learned":
            batches = Batches(dataset, min(16, args.calib), model.config.block_size, seed=args.seed)
            calib = [batches.next() for _ in range(-(-args.calib // batches.batch_size))]
        try:
            quantized = quantize_model(model, recipe, calib, rotation_steps=args.steps)
        except ValueError as e:
            raise UsageError(e) from None
    seconds = time.perf_counter() - start
    save_checkpoint(args.out, Checkpoint.of(quantized, ckpt.tokenizer, ckpt.data))
    before, after = evaluate(model, dataset), evaluate(quantized, dataset)
    result = {"method": args.method, "rotation": args.rotate, "bits": args.bits, "group_size": args.group_size,
              "val_loss_float": before, "val_loss": after, "relative_increase": (after - before) / before,
              "weight_bytes_float": model.flat.nbytes, "weight_bytes": quantized.weight_bytes, "seconds": seconds,
              "out": str(args.out)}
    return finish(f"{recipe.label} {args.bits}-bit, group {args.group_size}: validation loss {before:.4f} -> "
                  f"{after:.4f} ({100 * result['relative_increase']:+.2f}%), weights {model.flat.nbytes / 1e6:.2f} MB "
                  f"-> {quantized.weight_bytes / 1e6:.2f} MB ({quantized.weight_bytes / model.flat.nbytes:.2f}x), "
                  f"{seconds:.1f} s -> {args.out}", result, args.json)


def cmd_quant_report(args) -> int:
    from pocketgpt.quant.report import write_report

    ckpt = load_float_checkpoint(args.checkpoint, "report on")
    out = Path(args.out or f"{Path(args.checkpoint)}-quant-report")
    dataset = checkpoint_dataset(ckpt, args.data)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("the plot needs matplotlib: pip install 'pocketgpt[report]'") from None
    base, rows = write_report(ckpt.model(), dataset, out, group_size=args.group_size,
                              fine_tune_steps=args.steps)
    result = {"val_loss_float": base, "rows": [vars(r) for r in rows], "out": str(out)}
    print((out / "quant-report.md").read_text(encoding="utf-8"))
    return finish(f"wrote {out / 'quant-report.md'} and {out / 'quant-report.png'}", result, args.json)


# ----------------------------------------------------------------------------- parser


def add_draft_args(p) -> None:
    d = p.add_mutually_exclusive_group()
    d.add_argument("--draft", metavar="DRAFT_DIR",
                   help="speculative decoding with a smaller model of the same tokenizer")
    d.add_argument("--draft-quantized", dest="draft_quantized", action="store_true",
                   help="speculative decoding with a 4-bit copy of the model itself")
    d.add_argument("--draft-ngram", dest="draft_ngram", action="store_true",
                   help="speculative decoding with n-gram lookup in the context (no draft model)")
    p.add_argument("--draft-k", dest="draft_k", type=positive_int, default=4,
                   help="tokens drafted per round (default 4)")
    p.add_argument("--adaptive", action="store_true", help="grow k after a fully accepted round, shrink it otherwise")


def build_parser() -> Parser:
    p = Parser(prog="pocketgpt", description="A GPT you can read, train, shrink, serve and guard on a CPU.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train a model (default: microgpt-sized on the names data)",
                       description="Train a GPT; writes a checkpoint folder and prints samples.")
    t.add_argument("--preset", choices=list(PRESETS), help="architecture and training defaults (default microgpt)")
    t.add_argument("--data", help=f"{', '.join(BUILTIN)}, or a UTF-8 text file (default names)")
    for flag, what in (("n-layer", "blocks"), ("n-head", "attention heads"), ("n-embd", "channels"),
                       ("block-size", "context length in tokens")):
        t.add_argument(f"--{flag}", dest=flag.replace("-", "_"), type=positive_int, help=f"{what} (preset default)")
    t.add_argument("--mode", choices=MODES, help="lines: one document per line; text: continuous text")
    t.add_argument("--steps", type=positive_int, help="training steps")
    t.add_argument("--batch-size", dest="batch_size", type=positive_int, help="sequences per step")
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--min-lr", dest="min_lr", type=float, help="learning rate at the end of the decay")
    t.add_argument("--warmup", type=int, help="linear warmup steps")
    t.add_argument("--schedule", choices=SCHEDULES, help="learning-rate decay after warmup")
    t.add_argument("--weight-decay", dest="weight_decay", type=float, help="AdamW weight decay on matrices")
    t.add_argument("--beta1", type=float)
    t.add_argument("--beta2", type=float)
    t.add_argument("--eps", type=float)
    t.add_argument("--grad-clip", dest="grad_clip", type=float, help="max gradient norm (0: off)")
    t.add_argument("--seed", type=int)
    t.add_argument("--eval-interval", dest="eval_interval", type=int,
                   help="evaluate and checkpoint every N steps (0: at the end only)")
    t.add_argument("--dtype", choices=("float32", "float64"))
    t.add_argument("--workers", type=positive_int, help="threads that split each batch (preset default)")
    t.add_argument("--tokenizer", metavar="DIR", help="a BPE tokenizer (vocab.json, merges.txt) instead of characters")
    t.add_argument("--out", help="checkpoint folder (default out/<data>)")
    t.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    t.add_argument("--samples", type=int, default=10, help="samples to print after training (default 10)")
    t.add_argument("--reproduce-microgpt", action="store_true",
                   help="run microgpt's exact recipe (batch 1, float64, seed 42) on the fast engine")
    t.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate text from a checkpoint", description="Generate text; "
                       "prints tokens as they arrive.")
    s.add_argument("checkpoint", metavar="DIR")
    s.add_argument("--count", type=positive_int, default=10, help="samples (default 10)")
    s.add_argument("--prompt", default="", help="text to continue")
    s.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    s.add_argument("--top-k", dest="top_k", type=positive_int)
    s.add_argument("--top-p", dest="top_p", type=float)
    s.add_argument("--seed", type=int)
    s.add_argument("--max-tokens", dest="max_tokens", type=positive_int,
                   help="tokens per sample (default: block_size for documents, 256 for text)")
    s.add_argument("--kv-cache", dest="kv_cache", choices=("float", "q4"), default="float",
                   help="q4: keys and values stored in 4 bits (KIVI-style)")
    s.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end a sample at this text (repeatable; \\n for a newline)")
    add_draft_args(s)
    s.set_defaults(func=cmd_sample)

    v = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching",
                       description="Serve a checkpoint over an OpenAI-compatible API (/v1/models, /v1/completions, "
                       "/v1/chat/completions, /health); needs the serve extra.")
    v.add_argument("checkpoint", metavar="DIR")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--name", help="the model id clients ask for (default: the checkpoint folder's name)")
    v.add_argument("--slots", type=positive_int, default=32, help="sequences decoded together (default 32)")
    v.add_argument("--max-queue", dest="max_queue", type=int, default=64,
                   help="requests that may wait for a slot before the server answers 429 (default 64)")
    add_draft_args(v)
    v.set_defaults(func=cmd_serve)

    g = sub.add_parser("guard", help="the agent tool-call guard: verify an audit log, inventory, red team",
                       description="Tools for pocketgpt.guard, the tool-call gateway for agents.")
    gs = g.add_subparsers(dest="guard_command", required=True, parser_class=Parser)
    gv = gs.add_parser("verify", help="check an audit log's hash chain; exit 1 and name the place if broken")
    gv.add_argument("log", metavar="LOG")
    gi = gs.add_parser("inventory", help="agents, tools, permissions and models; unused tools given a log")
    gi.add_argument("policy", metavar="POLICY")
    gi.add_argument("--log", help="an audit log: flags agents holding tools they never used")
    gi.add_argument("--json", action="store_true")
    gr = gs.add_parser("redteam", help="the built-in attack suite; exit 1 if attack success is above the limit")
    gr.add_argument("policy", metavar="POLICY", nargs="?", help="default: the shipped example policy")
    gr.add_argument("--max-attack-success", dest="max_attack_success", type=float, default=0.02)
    gr.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_guard)

    x = sub.add_parser("vla", help="vision-language-action: collect demonstrations, train, evaluate (BabyAI)",
                       description="A pocketgpt transformer that reads the agent's view as 49 image patches plus "
                       "the instruction and emits an action; needs the vla extra (minigrid).")
    xs = x.add_subparsers(dest="vla_command", required=True, parser_class=Parser)
    xc = xs.add_parser("collect", help="record the BabyAI expert bot's episodes")
    xc.add_argument("--env", default="BabyAI-GoToLocal-v0")
    xc.add_argument("--episodes", type=int, default=3000)
    xc.add_argument("--seed", type=int, default=0, help="first training seed (evaluation seeds start at 1,000,000)")
    xc.add_argument("--out", help="demonstrations file (default ENV-EPISODES.npz)")
    xc.add_argument("--json", action="store_true")
    xt = xs.add_parser("train", help="behaviour cloning on collected demonstrations")
    xt.add_argument("--data", required=True, help="a file from pocketgpt vla collect")
    xt.add_argument("--out", default="out/vla")
    xt.add_argument("--steps", type=positive_int, default=3000)
    xt.add_argument("--batch-size", dest="batch_size", type=positive_int, default=64)
    xt.add_argument("--lr", type=float, default=1e-3)
    xt.add_argument("--n-layer", dest="n_layer", type=positive_int, help="default 2")
    xt.add_argument("--n-embd", dest="n_embd", type=positive_int, help="default 128")
    xt.add_argument("--n-head", dest="n_head", type=positive_int, help="default 16")
    xt.add_argument("--seed", type=int, default=0)
    xt.add_argument("--json", action="store_true")
    xe = xs.add_parser("eval", help="success rate with 95% CI on held-out seeds, with and without the instruction")
    xe.add_argument("checkpoint", metavar="CKPT")
    xe.add_argument("--env", help="default: the environment the policy was trained on")
    xe.add_argument("--episodes", type=positive_int, default=500)
    xe.add_argument("--budget", type=positive_int, default=16, help="the short step budget (default 16); the "
                    "environment's own limit is always reported too")
    xe.add_argument("--no-baselines", dest="no_baselines", action="store_true",
                    help="skip the random-action and expert-bot rows")
    xe.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_vla)

    e = sub.add_parser("eval", help="validation loss, perplexity and bits per character",
                       description="Evaluate a checkpoint on the validation split of its data (or --data).")
    e.add_argument("checkpoint", metavar="DIR")
    e.add_argument("--data", help="dataset to evaluate on (default: the one it was trained on)")
    e.add_argument("--mode", choices=MODES)
    e.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write a checkpoint in another tool's format",
                       description="Export a checkpoint: --format hf writes a folder that "
                       "transformers.GPT2LMHeadModel.from_pretrained loads, with its tokenizer; --format gguf "
                       "writes one file that llama.cpp runs (architecture gpt2).")
    x.add_argument("checkpoint", metavar="DIR")
    x.add_argument("out", metavar="OUT", help="a folder (hf) or a .gguf file (gguf)")
    x.add_argument("--format", choices=("hf", "gguf"), required=True)
    x.add_argument("--type", choices=("f32", "f16", "q8_0", "q4_0"), default="f32",
                   help="gguf weight type for matrices (default f32)")
    x.set_defaults(func=cmd_export)

    i = sub.add_parser("import", help="convert a local Hugging Face GPT-2 folder into a checkpoint",
                       description="Import a GPT-2-family model (model.safetensors or pytorch_model.bin, "
                       "config.json, vocab.json, merges.txt) from a local folder; nothing is downloaded.")
    i.add_argument("source", metavar="HF_DIR")
    i.add_argument("out", metavar="OUT")
    i.set_defaults(func=cmd_import)

    q = sub.add_parser("quantize", help="quantize a checkpoint's block linears (RTN, GPTQ, AWQ, SmoothQuant, QAT, "
                       "ZeroQAT)",
                       description="Quantize the attention and MLP weights to 2, 3, 4 or 8 bits with per-group "
                       "scales; prints the validation loss before and after and the weight bytes.")
    q.add_argument("checkpoint", metavar="DIR")
    q.add_argument("out", metavar="OUT")
    q.add_argument("--method", choices=("rtn", "gptq", "awq", "smoothquant", "qat", "zeroqat"), default="gptq",
                   help="smoothquant: W8A8 (use --bits 8); qat: backprop with a straight-through estimator; "
                   "zeroqat: forward passes only")
    q.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=4)
    q.add_argument("--group-size", dest="group_size", type=int, choices=(32, 64, 128), default=64)
    q.add_argument("--asym", action="store_true", help="asymmetric groups (scale and zero point)")
    q.add_argument("--act-order", dest="act_order", action="store_true", help="GPTQ: columns by decreasing activation")
    q.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening, fraction of the mean diagonal")
    q.add_argument("--rotate", choices=("none", "hadamard", "learned"), default="none",
                   help="rtn/gptq: rotate the residual stream first, by a random Hadamard matrix (QuaRot) or one "
                   "learned on the calibration loss (SpinQuant)")
    q.add_argument("--calib", type=positive_int, default=128,
                   help="GPTQ/AWQ/SmoothQuant/learned-rotation calibration sequences (default 128)")
    q.add_argument("--steps", type=positive_int, default=200,
                   help="qat/zeroqat: fine-tuning steps; learned rotation: Cayley SGD steps")
    q.add_argument("--lr", type=float, help="qat/zeroqat: learning rate (default 1e-4 for qat, 1e-5 for zeroqat)")
    q.add_argument("--seed", type=int, default=0, help="which training sequences calibrate or fine-tune")
    q.add_argument("--data", help="data to calibrate, fine-tune and evaluate on (default: the checkpoint's)")
    q.add_argument("--mode", choices=MODES)
    q.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    q.set_defaults(func=cmd_quantize)

    r = sub.add_parser("quant-report", help="every quantization method at 8, 4 and 3 bits: table and plot",
                       description="Quantize a float checkpoint with every method (RTN, SmoothQuant, GPTQ, AWQ, "
                       "QAT, ZeroQAT), evaluate each, and write quant-report.md and quant-report.png.")
    r.add_argument("checkpoint", metavar="DIR")
    r.add_argument("--out", help="folder for the report (default DIR-quant-report)")
    r.add_argument("--group-size", dest="group_size", type=int, choices=(32, 64, 128), default=64)
    r.add_argument("--steps", type=positive_int, default=100, help="QAT steps (ZeroQAT gets 1.5x as many)")
    r.add_argument("--data", help="data to calibrate and evaluate on (default: the checkpoint's)")
    r.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    r.set_defaults(func=cmd_quant_report)

    k = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    ksub = k.add_subparsers(dest="action", required=True, parser_class=Parser)
    kt = ksub.add_parser("train", help="learn GPT-2-style byte-level BPE merges from a text file",
                         description="Train a byte-level BPE (GPT-2's format: vocab.json + merges.txt); "
                         "use it with `pocketgpt train --tokenizer DIR`.")
    kt.add_argument("data", metavar="FILE", help=f"a UTF-8 text file, or {', '.join(BUILTIN)}")
    kt.add_argument("--vocab-size", dest="vocab_size", type=positive_int, required=True)
    kt.add_argument("--out", required=True, help="folder for vocab.json and merges.txt")
    kt.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    kt.set_defaults(func=cmd_tokenizer_train)
    return p


def check_args(args) -> None:
    if args.command in ("sample", "serve"):
        args.draft_kind = ("model" if args.draft else "quantized" if args.draft_quantized
                           else "ngram" if args.draft_ngram else None)
    if args.command == "sample":
        if args.temperature < 0:
            raise UsageError(f"--temperature must be >= 0 (got {args.temperature})")
        if args.top_p is not None and not 0 < args.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1] (got {args.top_p})")
    if args.command == "train" and args.samples < 0:
        raise UsageError("--samples must be >= 0")
    if args.command == "tokenizer" and args.vocab_size < 257:
        raise UsageError("--vocab-size must be at least 257 (256 bytes and <|endoftext|>)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        return args.func(args)
    except (UsageError, CheckpointError, DataError, UnknownCharacterError, InteropError) as e:
        print(f"pocketgpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written (a file where a folder goes, permissions)
        print(f"pocketgpt {args.command}: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # training diverged
        print(f"pocketgpt {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        note = "; the last complete checkpoint is intact" if args.command == "train" else ""
        print(f"pocketgpt {args.command}: interrupted{note}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
