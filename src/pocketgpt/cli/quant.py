"""`pocketgpt quantize` and `pocketgpt quant-report`: flags map one-to-one onto QuantRecipe and quantize()."""

from __future__ import annotations

import time
from pathlib import Path

from pocketgpt.cli.common import UsageError, defaults, distinct, finish, positive_int, progress_bar
from pocketgpt.data import MODES
from pocketgpt.interop import load
from pocketgpt.quant import FORMATS, METHODS, ROTATIONS, QuantRecipe, quantize
from pocketgpt.quant.quantize import CALIB_SEQUENCES, FINE_TUNE_STEPS
from pocketgpt.quant.report import FINE_TUNED, RUNS, Score, quantization_report, write_report
from pocketgpt.train import Checkpoint, check_can_save, dataset_of, evaluate, save_checkpoint


def add(sub) -> None:
    r = QuantRecipe()
    q = sub.add_parser("quantize", help="quantize a checkpoint's block linears (RTN, GPTQ, AWQ, SmoothQuant, QAT, "
                       "ZeroQAT)", description="Quantize the attention and MLP weights (pocketgpt's integer groups "
                       "of 2-8 bits, or llama.cpp's Q8_0, Q4_0, MXFP4 blocks); prints the validation loss before "
                       "and after and the weight bytes.")
    q.add_argument("checkpoint", metavar="MODEL",
                   help="a float checkpoint folder, a GGUF file or a Hugging Face folder")
    q.add_argument("out", metavar="OUT", help="the checkpoint folder to write")
    q.add_argument("--method", choices=METHODS, default=r.method,
                   help="smoothquant: W8A8 (use --bits 8); qat: backprop with a straight-through estimator; "
                   f"zeroqat: forward passes only (default {r.method})")
    q.add_argument("--format", choices=FORMATS, default=r.format,
                   help=f"int: integer groups; the others are llama.cpp's blocks, rtn only (default {r.format})")
    q.add_argument("--bits", type=int, choices=(2, 3, 4, 8), default=r.bits, help=f"bits per weight of the int "
                   f"format (default {r.bits})")
    q.add_argument("--group-size", dest="group_size", type=positive_int, default=r.group_size,
                   help=f"weights per scale of the int format; must divide every row (default {r.group_size})")
    q.add_argument("--asym", action="store_true", help="asymmetric groups (scale and zero point)")
    q.add_argument("--act-order", dest="act_order", action="store_true", help="GPTQ: columns by decreasing activation")
    q.add_argument("--damp", type=float, default=r.damp, help=f"GPTQ dampening, fraction of the mean diagonal "
                   f"(default {r.damp})")
    q.add_argument("--rotate", dest="rotation", choices=ROTATIONS, default=r.rotation,
                   help="rtn/gptq: rotate the residual stream first, by a random Hadamard matrix (QuaRot) or one "
                   "learned on the calibration loss (SpinQuant) (default none)")
    q.add_argument("--calib", type=positive_int, default=CALIB_SEQUENCES,
                   help=f"calibration sequences for GPTQ, AWQ, SmoothQuant, a learned rotation (default "
                   f"{CALIB_SEQUENCES})")
    q.add_argument("--steps", type=positive_int, default=FINE_TUNE_STEPS,
                   help=f"qat/zeroqat: fine-tuning steps; learned rotation: Cayley steps (default {FINE_TUNE_STEPS})")
    q.add_argument("--lr", type=float, help="qat/zeroqat: learning rate (default 1e-4 for qat, 1e-5 for zeroqat)")
    seed = defaults(quantize)["seed"]
    q.add_argument("--seed", type=int, default=seed, help=f"which training sequences calibrate or fine-tune (default "
                   f"{seed})")
    q.add_argument("--data", help="data to calibrate, fine-tune and evaluate on (default: the checkpoint's)")
    q.add_argument("--mode", choices=MODES, help="lines or text (default: the checkpoint's)")
    q.add_argument("--force", action="store_true", help="replace an existing checkpoint at OUT")
    q.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    q.set_defaults(func=run_quantize, parser=q)

    p = sub.add_parser("quant-report", help="every quantization method at 8, 4, 3 and 2 bits: table and plot",
                       description="Quantize a float model with every method (RTN, SmoothQuant, GPTQ, AWQ, "
                       "rotations, QAT, ZeroQAT), score each, and write quant-report.md and quant-report.png.")
    p.add_argument("checkpoint", metavar="MODEL",
                   help="a float checkpoint folder, a GGUF file or a Hugging Face folder")
    p.add_argument("--out", help="folder for the report (default MODEL-quant-report)")
    p.add_argument("--group-size", dest="group_size", type=positive_int, default=r.group_size,
                   help=f"weights per scale (default {r.group_size})")
    p.add_argument("--calib", type=positive_int, default=CALIB_SEQUENCES,
                   help=f"calibration sequences (default {CALIB_SEQUENCES})")
    steps = defaults(quantization_report)["fine_tune_steps"]
    p.add_argument("--steps", type=positive_int, default=steps, help=f"QAT steps and the learned rotation's Cayley "
                   f"steps; ZeroQAT gets 1.5x as many (default {steps})")
    p.add_argument("--no-fine-tune", dest="fine_tune", action="store_false",
                   help="leave out the runs whose every step passes through the whole model (QAT, ZeroQAT, the "
                   "learned rotation; default: run them)")
    p.add_argument("--metric", choices=("loss", "perplexity"),
                   help="validation loss, or perplexity with llama.cpp's protocol on the validation text (default: "
                   "loss for a model trained here, perplexity for an imported one)")
    context = defaults(Score)["context"]
    p.add_argument("--context", type=positive_int, default=context,
                   help=f"perplexity: tokens per chunk (default {context})")
    p.add_argument("--chunks", type=positive_int, help="perplexity: score the first N chunks (default all)")
    p.add_argument("--data", help="data to calibrate and evaluate on (default: the checkpoint's)")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.set_defaults(func=run_report, parser=p)


def float_checkpoint(path: str, verb: str) -> Checkpoint:
    ckpt = load(path, packed=False)
    if ckpt.packed:
        raise UsageError(f"{path} is already quantized; {verb} its float checkpoint")
    return ckpt


def run_quantize(args) -> int:
    distinct(args.checkpoint, args.out)
    check_can_save(args.out, overwrite=args.force)
    ckpt = float_checkpoint(args.checkpoint, "quantize")
    recipe = QuantRecipe(args.method, args.bits, args.group_size, not args.asym, args.act_order, args.damp,
                         args.rotation, args.format)
    dataset = dataset_of(ckpt.data, ckpt.tokenizer, args.data, args.mode)
    model = ckpt.model()
    start = time.perf_counter()
    with progress_bar(f"quantizing ({recipe.label})") as progress:
        quantized = quantize(model, recipe, dataset, calib=args.calib, seed=args.seed, steps=args.steps, lr=args.lr,
                             progress=progress)
    seconds = time.perf_counter() - start
    save_checkpoint(args.out, Checkpoint.of(quantized, ckpt.tokenizer, ckpt.data, recipe.to_dict()),
                    overwrite=args.force)
    with progress_bar("evaluating", "batch") as progress:
        before, after = evaluate(model, dataset, progress=progress), evaluate(quantized, dataset, progress=progress)
    result = {"method": args.method, "format": args.format, "rotation": args.rotation, "bits": args.bits,
              "group_size": args.group_size, "val_loss_float": before, "val_loss": after,
              "relative_increase": (after - before) / before, "weight_bytes_float": model.weight_bytes,
              "weight_bytes": quantized.weight_bytes, "seconds": seconds, "out": str(args.out)}
    return finish(f"{recipe.label}: validation loss {before:.4f} -> {after:.4f} "
                  f"({100 * result['relative_increase']:+.2f}%), weights {model.weight_bytes / 1e6:.2f} MB -> "
                  f"{quantized.weight_bytes / 1e6:.2f} MB ({quantized.weight_bytes / model.weight_bytes:.2f}x), "
                  f"{seconds:.1f} s -> {args.out}", result, args.json)


def run_report(args) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("the plot needs matplotlib: pip install 'pocketgpt[report]'") from None
    ckpt = float_checkpoint(args.checkpoint, "report on")
    out = Path(args.out or f"{Path(args.checkpoint)}-quant-report")
    dataset = dataset_of(ckpt.data, ckpt.tokenizer, args.data)
    metric = args.metric or ("loss" if ckpt.data.get("data") else "perplexity")
    if metric == "perplexity" and dataset.mode != "text":
        raise UsageError(f"perplexity reads running text; {dataset.name} is in {dataset.mode} mode")
    score = Score(dataset, metric, args.context, args.chunks)
    runs = [run for run in RUNS if args.fine_tune or not set(run) & set(FINE_TUNED)]
    with progress_bar("quantization report", "run") as progress:
        base, rows = write_report(ckpt.model(), dataset, out, group_size=args.group_size, calib=args.calib,
                                  fine_tune_steps=args.steps, runs=runs, score=score, progress=progress)
    result = {"metric": metric, "float": base, "rows": [vars(r) for r in rows], "out": str(out)}
    print((out / "quant-report.md").read_text(encoding="utf-8"))
    return finish(f"wrote {out / 'quant-report.md'} and {out / 'quant-report.png'}", result, args.json)
