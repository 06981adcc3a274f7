"""Quantization-aware training: fine-tune float weights through a fake-quantized forward, then quantize.

- QAT: backpropagation with the straight-through estimator (pocketgpt.quant.fake): the forward uses
  dequant(quant(W)); the gradient computed for that matrix is applied to the float W.
- ZeroQAT: forward passes only. Each step draws a seeded Gaussian direction z over the tuned parameters,
  measures the loss at theta + eps z and theta - eps z, and moves theta by -lr * (L+ - L-) / (2 eps) * z.
  z is never stored: it is regenerated from its seed chunk by chunk, so memory stays that of inference
  plus one chunk.
Both run in the training loop every trainer uses and end with round-to-nearest of the tuned weights.
"""

from __future__ import annotations

import numpy as np

from pocketgpt.model import GPT, packed_copy
from pocketgpt.quant.fake import FakeQuantGPT
from pocketgpt.quant.recipe import QuantRecipe, rtn_packer
from pocketgpt.train import Batches, Dataset, TrainSettings, loop, train

CHUNK = 1 << 16  # parameters perturbed per regenerated piece of z
QAT_LR, ZEROQAT_LR = 1e-4, 1e-5


def qat_settings(steps: int, lr: float = QAT_LR, seed: int = 42, workers: int = 1) -> TrainSettings:
    """A short fine-tune: batch 16, 10% warmup, cosine to lr / 10, no weight decay."""
    return TrainSettings(steps=steps, batch_size=16, lr=lr, min_lr=lr / 10, warmup=max(1, steps // 10),
                         schedule="cosine", beta1=0.9, seed=seed, workers=workers)


def qat(model: GPT, recipe: QuantRecipe, dataset: Dataset, settings: TrainSettings, on_step=None) -> GPT:
    """Fine-tune with straight-through fake quantization for settings.steps steps, then quantize (RTN)."""
    fake = FakeQuantGPT(model, recipe)
    train(fake, dataset, settings, on_step=on_step)
    return packed_copy(fake, rtn_packer(recipe))


def _perturb(arrays: list[np.ndarray], seed: int, scale: float) -> None:
    """a += scale * z for each array, z ~ N(0, I) regenerated from seed, one chunk at a time."""
    rng = np.random.default_rng(seed)
    for a in arrays:
        flat = a.reshape(-1)
        for lo in range(0, flat.size, CHUNK):
            piece = flat[lo:lo + CHUNK]
            piece += (scale * rng.standard_normal(piece.size)).astype(flat.dtype)


def zeroqat(model: GPT, recipe: QuantRecipe, dataset: Dataset, steps: int = 200, lr: float = ZEROQAT_LR,
            eps: float = 1e-3, batch_size: int = 16, seed: int = 0, tune: str = "all", context: int | None = None,
            on_step=None) -> GPT:
    """Forward-only quantization-aware fine-tuning (two-point zeroth-order estimates), then RTN.

    tune="all" perturbs every parameter; tune="float" only those that stay float (embeddings, norms,
    biases), which then learn to compensate the quantized matrices.
    """
    fake = FakeQuantGPT(model, recipe)
    names = [n for n in fake.params if tune == "all" or n not in fake.fake]
    arrays = [fake.params[n] for n in names]
    batches = Batches(dataset, batch_size, min(context or model.config.block_size, model.config.block_size), seed)
    seeds = np.random.default_rng(seed + 1)

    def step(_: int, rate: float) -> dict:
        x, y, w = batches.next()
        z_seed = int(seeds.integers(2**63))
        _perturb(arrays, z_seed, eps)
        plus = fake.forward(x, y, w, keep=False)[1]
        _perturb(arrays, z_seed, -2 * eps)
        minus = fake.forward(x, y, w, keep=False)[1]
        projected = (plus - minus) / (2 * eps)  # directional derivative of the loss along z
        _perturb(arrays, z_seed, eps - rate * projected)  # back to theta, then the step
        return {"loss": (plus + minus) / 2, "tokens": int(w.sum())}

    loop(TrainSettings(steps=steps, batch_size=batch_size, lr=lr, schedule="constant", seed=seed), step,
         on_step=on_step)
    return packed_copy(fake, rtn_packer(recipe))
