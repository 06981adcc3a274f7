"""Calibration: the batches a method calibrates on, the inputs one layer sees on them, and folding per-channel
scales into a producer and its consumer so that the float model computes the same function."""

from __future__ import annotations

import numpy as np

from pocketgpt.model import GPT
from pocketgpt.train import Batches, Dataset

CALIB_BATCH = 16  # sequences per calibration batch


def calibration_batches(dataset: Dataset, sequences: int, block_size: int, seed: int = 0) -> list:
    """`sequences` training sequences (rounded up to whole batches of CALIB_BATCH), drawn with `seed`."""
    batches = Batches(dataset, min(CALIB_BATCH, sequences), block_size, seed=seed)
    return batches.take(-(-sequences // batches.batch_size))


def calibration_inputs(model: GPT, batches, prefix: str) -> np.ndarray:
    """The inputs (N, in) that layer `prefix` sees on the calibration batches (padding excluded)."""
    parts = []
    for x, _, w in batches:
        _, _, caches = model.forward(x, np.zeros_like(x), w)
        inputs = caches[prefix][0]  # a linear layer's cache starts with its input
        parts.append(inputs.reshape(-1, inputs.shape[-1])[w.reshape(-1) > 0])
    return np.concatenate(parts)


def fold_scales(work: GPT, producer: str, rows: slice, consumer: str, s: np.ndarray) -> None:
    """W[:, j] *= s_j for the consumer's weight and divide the producer's output channel j by s_j
    (its gain and bias, or the rows of a linear layer): the float model computes the same thing."""
    work.params[f"{consumer}.weight"][...] *= s
    for kind in ("weight", "bias"):
        t = work.params.get(f"{producer}.{kind}")
        if t is not None:
            t[rows] /= s if t.ndim == 1 else s[:, None]
