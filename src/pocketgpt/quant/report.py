"""The quantization report: every method at 8, 4 and 3 bits on one float checkpoint, as a Markdown table and a
plot of validation loss against bits per weight (PNG, drawn with matplotlib from the `report` extra).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from pocketgpt.files import atomic_file, write_text
from pocketgpt.generate import Sampling, generate
from pocketgpt.model import GPT
from pocketgpt.quant.quantize import quantize
from pocketgpt.quant.recipe import QuantRecipe
from pocketgpt.train import Dataset, evaluate

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
    """Greedy decode tokens/s, best of `rounds` (this machine is noisy: the best run is the least disturbed)."""
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        n = len(list(generate(model, [0], max_new_tokens=min(tokens, model.config.block_size - 1),
                              sampling=Sampling(temperature=0))))
        best = max(best, n / (time.perf_counter() - t))
    return best


def quantization_report(model: GPT, dataset: Dataset, group_size: int = 64, calib: int = 128,
                        fine_tune_steps: int = 100, runs=RUNS, progress=None) -> tuple[float, list[Row]]:
    """(float validation loss, one Row per (method, bits)); ZeroQAT gets 1.5x the fine-tuning steps.
    progress(done, total) after each run."""
    base = evaluate(model, dataset)
    float_rate = decode_rate(model)
    rows = []
    for done, (method, bits, *rotation) in enumerate(runs, 1):
        recipe = QuantRecipe(method, bits, group_size, rotation=rotation[0] if rotation else "none")
        steps = int(fine_tune_steps * 1.5) if method == "zeroqat" else fine_tune_steps
        t = time.perf_counter()
        q = quantize(model, recipe, dataset, calib=calib, steps=steps)
        seconds = time.perf_counter() - t
        loss = evaluate(q, dataset)
        rows.append(Row(recipe.label, bits, loss, (loss - base) / base, q.weight_bytes / model.weight_bytes,
                        8 * q.weight_bytes / model.num_params, seconds, decode_rate(q) / float_rate))
        if progress is not None:
            progress(done, len(runs))
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
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(model: GPT, dataset: Dataset, out: str | Path, **kwargs) -> tuple[float, list[Row]]:
    """Run the report and write quant-report.md and quant-report.png into the folder `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base, rows = quantization_report(model, dataset, **kwargs)
    write_text(out / "quant-report.md", markdown(base, rows, kwargs.get("group_size", 64)))
    plot(base, rows, out / "quant-report.png")
    return base, rows

