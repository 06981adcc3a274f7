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


class BlockInputs:
    """The calibration batches carried through a model one block at a time, so that a layer's inputs cost one
    block's forward, not the whole model's. Ask for layers in forward order: moving on to block i runs the
    blocks before it as the model holds them then (already quantized, when the caller quantizes in order)."""

    def __init__(self, model: GPT, batches):
        self.model = model
        self.keep = [w.reshape(-1) > 0 for _, _, w in batches]  # padding excluded
        self.stream = [model.embed(x) for x, _, _ in batches]  # entering block self.layer
        self.layer = 0

    def __call__(self, prefix: str) -> np.ndarray:
        """The inputs (N, in) that layer `prefix` (h.<i>.<linear>) sees on the calibration batches."""
        layer = int(prefix.split(".")[1])
        if layer < self.layer:
            raise ValueError(f"block {layer} was passed already (calibration runs in forward order)")
        while self.layer < layer:
            self.stream = [self.model.block_with_inputs(x, self.layer)[0] for x in self.stream]
            self.layer += 1
        parts = []
        for x, keep in zip(self.stream, self.keep):
            inputs = self.model.block_with_inputs(x, layer)[1][prefix]
            parts.append(inputs.reshape(-1, inputs.shape[-1])[keep])
        return np.concatenate(parts)


def calibration_inputs(model: GPT, batches, prefix: str) -> np.ndarray:
    """The inputs (N, in) that layer `prefix` sees on the calibration batches (padding excluded)."""
    return BlockInputs(model, batches)(prefix)


def fold_scales(work: GPT, producer: str, rows: slice, consumer: str, s: np.ndarray) -> None:
    """W[:, j] *= s_j for the consumer's weight and divide the producer's output channel j by s_j
    (its gain and bias, or the rows of a linear layer): the float model computes the same thing."""
    work.params[f"{consumer}.weight"][...] *= s
    for kind in ("weight", "bias"):
        t = work.params.get(f"{producer}.{kind}")
        if t is not None:
            t[rows] /= s if t.ndim == 1 else s[:, None]
