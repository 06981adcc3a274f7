"""Quantization-aware training: fine-tune float weights through a fake-quantized forward, then quantize.

- QAT: backpropagation with the straight-through estimator. The forward uses dequant(quant(W)); the
  gradient that backward computes for that fake-quantized matrix is applied to the float W as if the
  rounding were the identity.
- ZeroQAT: forward passes only. Each step draws a seeded Gaussian direction z over the tuned parameters,
  measures the loss at theta + eps z and theta - eps z, and moves theta by -lr * (L+ - L-) / (2 eps) * z.
  z is never stored: it is regenerated from its seed chunk by chunk, so memory stays that of inference
  plus one chunk.
Both end with round-to-nearest quantization of the fine-tuned weights.
"""

from __future__ import annotations

import numpy as np

from pocketgpt.data import Batches, Dataset
from pocketgpt.model import GPT
from pocketgpt.quant.formats import quantize_groups
from pocketgpt.quant.model import QuantizedGPT, QuantRecipe, quantize_model, quantized_names
from pocketgpt.train import TrainSettings, train

CHUNK = 1 << 16  # parameters perturbed per regenerated piece of z


class FakeQuantGPT(GPT):
    """A float GPT whose block linears are seen through round-to-nearest quantization in the forward."""

    def __init__(self, model: GPT, recipe: QuantRecipe):
        self.recipe = recipe
        self.fake = set(quantized_names(model.config))
        super().__init__(model.config, {k: v.copy() for k, v in model.params.items()}, dtype=model.dtype)

    def weight(self, name: str) -> np.ndarray:
        w = self.params[name]
        if name not in self.fake:
            return w
        r = self.recipe
        return quantize_groups(w, r.bits, r.group_size, r.symmetric).dequantize(self.dtype)


def qat_settings(steps: int, lr: float = 1e-4, seed: int = 42, workers: int = 1) -> TrainSettings:
    """A short fine-tune: batch 16, 10% warmup, cosine to lr / 10, no weight decay."""
    return TrainSettings(steps=steps, batch_size=16, lr=lr, min_lr=lr / 10, warmup=max(1, steps // 10),
                         schedule="cosine", beta1=0.9, seed=seed, workers=workers)


def qat(model: GPT, recipe: QuantRecipe, dataset: Dataset, settings: TrainSettings) -> QuantizedGPT:
    """Fine-tune with straight-through fake quantization for settings.steps steps, then quantize (RTN)."""
    fake = FakeQuantGPT(model, recipe)
    train(fake, dataset, settings)
    return _finish(fake, recipe)


def _finish(fake: FakeQuantGPT, recipe: QuantRecipe) -> QuantizedGPT:
    """Round the fine-tuned weights to nearest (what the forward already saw) and record the method."""
    quantized = quantize_model(fake, QuantRecipe("rtn", recipe.bits, recipe.group_size, recipe.symmetric))
    quantized.recipe = recipe
    return quantized


def _perturb(arrays: list[np.ndarray], seed: int, scale: float) -> None:
    """a += scale * z for each array, z ~ N(0, I) regenerated from seed, one chunk at a time."""
    rng = np.random.default_rng(seed)
    for a in arrays:
        flat = a.reshape(-1)
        for lo in range(0, flat.size, CHUNK):
            piece = flat[lo:lo + CHUNK]
            piece += (scale * rng.standard_normal(piece.size)).astype(flat.dtype)


def zeroqat(model: GPT, recipe: QuantRecipe, dataset: Dataset, steps: int = 200, lr: float = 1e-5,
            eps: float = 1e-3, batch_size: int = 16, seed: int = 0, tune: str = "all", log=None) -> QuantizedGPT:
    """Forward-only quantization-aware fine-tuning (two-point zeroth-order estimates), then RTN.

    tune="all" perturbs every parameter; tune="float" only those that stay float (embeddings, norms,
    biases), which then learn to compensate the quantized matrices.
    """
    fake = FakeQuantGPT(model, recipe)
    names = [n for n in fake.params if tune == "all" or n not in fake.fake]
    arrays = [fake.params[n] for n in names]
    batches = Batches(dataset, batch_size, model.config.block_size, seed)
    seeds = np.random.default_rng(seed + 1)
    for step in range(steps):
        x, y, w = batches.next()
        z_seed = int(seeds.integers(2**63))
        _perturb(arrays, z_seed, eps)
        plus = fake.forward(x, y, w)[1]
        _perturb(arrays, z_seed, -2 * eps)
        minus = fake.forward(x, y, w)[1]
        projected = (plus - minus) / (2 * eps)  # directional derivative of the loss along z
        _perturb(arrays, z_seed, eps - lr * projected)  # back to theta, then the step
        if log is not None:
            log({"step": step + 1, "loss": (plus + minus) / 2})
    return _finish(fake, recipe)
