"""The quantization report: every method at 8, 4, 3 and 2 bits on one float model, as a Markdown table and a
plot of its score (validation loss, or perplexity with llama.cpp's protocol) against bits per weight (PNG,
drawn with matplotlib from the `report` extra).
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
from pocketgpt.train import Dataset, evaluate, perplexity

RUNS = [("rtn", 8), ("smoothquant", 8), ("rtn", 4), ("gptq", 4), ("awq", 4), ("rtn", 4, "hadamard"),
        ("gptq", 4, "hadamard"), ("rtn", 3), ("gptq", 3), ("awq", 3), ("rtn", 3, "hadamard"), ("gptq", 3, "hadamard"),
        ("rtn", 3, "learned"), ("gptq", 3, "learned"), ("qat", 3), ("zeroqat", 3), ("rtn", 2),
        ("gptq", 2)]  # (method, bits[, rotation])
FINE_TUNED = ("qat", "zeroqat", "learned")  # runs whose every step is a forward (and backward) of the whole model


@dataclass
class Row:
    method: str  # with its rotation, e.g. gptq+hadamard
    bits: int
    score: float  # the report's metric: validation loss or perplexity
    increase: float  # relative to float32
    bytes_ratio: float  # resident weight bytes vs float32
    bits_per_weight: float  # over every parameter of the model
    seconds: float
    decode_ratio: float  # tokens/s vs the float model, measured side by side


@dataclass(frozen=True)
class Score:
    """What the report scores a model by: the mean validation loss (`evaluate`), or perplexity with
    llama.cpp's protocol on the validation tokens (`perplexity`, `chunks` chunks of `context`, all by default)."""
    dataset: Dataset
    metric: str = "loss"
    context: int = 512
    chunks: int | None = None

    def __call__(self, model: GPT) -> float:
        if self.metric == "loss":
            return evaluate(model, self.dataset)
        return perplexity(model, self.dataset.val, self.context, self.chunks)["perplexity"]

    @property
    def label(self) -> str:
        return "validation loss" if self.metric == "loss" else "perplexity"

    def describe(self) -> str:
        if self.metric == "loss":
            return "validation loss (every validation token once)"
        n = min(len(self.dataset.val) // self.context, self.chunks or len(self.dataset.val))
        return f"perplexity (llama.cpp's protocol: {n} validation chunks of {self.context} tokens)"


def decode_rate(model: GPT, tokens: int = 63) -> float:
    """Greedy decode tokens/s of one run from a one-token prompt."""
    t = time.perf_counter()
    n = len(list(generate(model, [0], max_new_tokens=min(tokens, model.config.block_size - 1),
                          sampling=Sampling(temperature=0))))
    return n / (time.perf_counter() - t)


def decode_ratio(model: GPT, reference: GPT, rounds: int = 3) -> float:
    """Decode tokens/s of model over reference's, the two run alternately `rounds` times and the best of each
    taken (this machine is noisy: the best run is the least disturbed)."""
    ours, theirs = 0.0, 0.0
    for _ in range(rounds):
        theirs = max(theirs, decode_rate(reference))
        ours = max(ours, decode_rate(model))
    return ours / theirs


def quantization_report(model: GPT, dataset: Dataset, group_size: int = 64, calib: int = 128,
                        fine_tune_steps: int = 100, runs=RUNS, score: Score | None = None,
                        progress=None) -> tuple[float, list[Row]]:
    """(the float model's score, one Row per run); ZeroQAT gets 1.5x the fine-tuning steps. Decode speed is
    measured once per packed format (method and rotation leave it unchanged), after every run has been scored.
    progress(done, total) after each run."""
    score = score or Score(dataset)
    base = score(model)
    rows, speed_of = [], {}  # speed_of: format -> a model in it, then its decode ratio
    for done, (method, bits, *rotation) in enumerate(runs, 1):
        recipe = QuantRecipe(method, bits, group_size, rotation=rotation[0] if rotation else "none")
        steps = int(fine_tune_steps * 1.5) if method == "zeroqat" else fine_tune_steps
        t = time.perf_counter()
        q = quantize(model, recipe, dataset, calib=calib, steps=steps)
        seconds = time.perf_counter() - t
        value = score(q)
        rows.append(Row(recipe.label, bits, value, (value - base) / base, q.weight_bytes / model.weight_bytes,
                        8 * q.weight_bytes / model.num_params, seconds, 0.0))
        speed_of.setdefault((bits, method == "smoothquant"), q)
        if progress is not None:
            progress(done, len(runs))
    speed_of = {key: decode_ratio(q, model) for key, q in speed_of.items()}
    for row, (method, bits, *_) in zip(rows, runs):
        row.decode_ratio = speed_of[bits, method == "smoothquant"]
    return base, rows


def markdown(base: float, rows: list[Row], group_size: int, score: Score) -> str:
    lines = [f"Scored by {score.describe()}. Float32: {score.label} {base:.4f}, 32 bits per weight. "
             f"Groups of {group_size}, symmetric.", "",
             f"| method | bits | {score.label} | increase | bits per weight | weight bytes vs float32 | "
             "quantization time | decode tokens/s vs float32 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.method} | {r.bits} | {r.score:.4f} | {100 * r.increase:+.2f}% | {r.bits_per_weight:.2f} | "
              f"{r.bytes_ratio:.3f}x | {r.seconds:.1f} s | {r.decode_ratio:.2f}x |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(base: float, rows: list[Row], path: str | Path, label: str = "validation loss") -> None:
    """The score (`label`) against bits per weight, one marker per method, float32 as a dashed line (perplexity
    on a log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in dict.fromkeys(r.method for r in rows):
        mine = [r for r in rows if r.method == method]
        ax.plot([r.bits_per_weight for r in mine], [r.score for r in mine], "o-", label=method)
    ax.axhline(base, color="grey", linestyle="--", label="float32")
    ax.set_xlabel("bits per weight (whole model)")
    ax.set_ylabel(label)
    if label == "perplexity":  # a method that fails multiplies it many times over
        ax.set_yscale("log")
    ax.set_title(f"pocketgpt quantization: {label} vs size")
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
    score = kwargs.pop("score", None) or Score(dataset)
    base, rows = quantization_report(model, dataset, score=score, **kwargs)
    write_text(out / "quant-report.md", markdown(base, rows, kwargs.get("group_size", 64), score))
    plot(base, rows, out / "quant-report.png", score.label)
    return base, rows

