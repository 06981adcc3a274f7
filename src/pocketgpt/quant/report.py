"""The quantization report: every method at 8, 4 and 3 bits on one float checkpoint, as a Markdown table and a
plot of validation loss against bits per weight (PNG, drawn with matplotlib from the `report` extra).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pocketgpt.data import Batches, Dataset
from pocketgpt.generate import generate
from pocketgpt.model import GPT
from pocketgpt.quant.model import QuantRecipe, quantize_model
from pocketgpt.quant.qat import qat, qat_settings, zeroqat
from pocketgpt.train import evaluate

RUNS = [("rtn", 8), ("smoothquant", 8), ("rtn", 4), ("gptq", 4), ("awq", 4), ("rtn", 4, "hadamard"),
        ("gptq", 4, "hadamard"), ("rtn", 3), ("gptq", 3), ("awq", 3), ("rtn", 3, "hadamard"), ("rtn", 3, "learned"),
        ("gptq", 3, "learned"), ("qat", 3), ("zeroqat", 3)]  # (method, bits[, rotation])


@dataclass
class Row:
    method: str  # with its rotation, e.g. gptq+hadamard
    bits: int
    val_loss: float
    increase: float  # relative to float32
    bytes_ratio: float  # resident weight bytes vs float32
    bits_per_weight: float  # over every parameter of the model
    seconds: float
    decode_ratio: float  # tokens/s vs the float model, measured side by side


def decode_rate(model: GPT, tokens: int = 63, rounds: int = 3) -> float:
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        n = len(list(generate(model, [0], max_new_tokens=tokens, temperature=0)))
        best = max(best, n / (time.perf_counter() - t))
    return best


def quantization_report(model: GPT, dataset: Dataset, group_size: int = 64, calib_batches: int = 8,
                        fine_tune_steps: int = 100, runs=RUNS) -> tuple[float, list[Row]]:
    """(float validation loss, one Row per (method, bits))."""
    base = evaluate(model, dataset)
    batches = Batches(dataset, 16, model.config.block_size, seed=0)
    calib = [batches.next() for _ in range(calib_batches)]
    float_rate = decode_rate(model)
    rows = []
    for method, bits, *rotation in runs:
        recipe = QuantRecipe(method, bits, group_size, rotation=rotation[0] if rotation else "none")
        t = time.perf_counter()
        if method == "qat":
            q = qat(model, recipe, dataset, qat_settings(fine_tune_steps))
        elif method == "zeroqat":
            q = zeroqat(model, recipe, dataset, steps=int(fine_tune_steps * 1.5))
        else:
            q = quantize_model(model, recipe, calib, rotation_steps=fine_tune_steps)
        seconds = time.perf_counter() - t
        loss = evaluate(q, dataset)
        rows.append(Row(recipe.label, bits, loss, (loss - base) / base, q.weight_bytes / model.flat.nbytes,
                        8 * q.weight_bytes / model.num_params, seconds, decode_rate(q) / float_rate))
    return base, rows


def markdown(base: float, rows: list[Row], group_size: int) -> str:
    lines = [f"Float32: validation loss {base:.4f}, 32 bits per weight. Groups of {group_size}, symmetric.", "",
             "| method | bits | validation loss | increase | bits per weight | weight bytes vs float32 | "
             "quantization time | decode tokens/s vs float32 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.method} | {r.bits} | {r.val_loss:.4f} | {100 * r.increase:+.2f}% | {r.bits_per_weight:.2f} | "
              f"{r.bytes_ratio:.3f}x | {r.seconds:.1f} s | {r.decode_ratio:.2f}x |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(base: float, rows: list[Row], path: str | Path) -> None:
    """Validation loss against bits per weight, one marker per method, float32 as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        ax.plot([r.bits_per_weight for r in mine], [r.val_loss for r in mine], "o-", label=method)
    ax.axhline(base, color="grey", linestyle="--", label="float32")
    ax.set_xlabel("bits per weight (whole model)")
    ax.set_ylabel("validation loss")
    ax.set_title("pocketgpt quantization: loss vs size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(model: GPT, dataset: Dataset, out: str | Path, **kwargs) -> tuple[float, list[Row]]:
    """Run the report and write quant-report.md and quant-report.png into the folder `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base, rows = quantization_report(model, dataset, **kwargs)
    (out / "quant-report.md").write_text(markdown(base, rows, kwargs.get("group_size", 64)), encoding="utf-8")
    plot(base, rows, out / "quant-report.png")
    return base, rows

