"""AdamW over one flat parameter buffer, learning-rate schedules and gradient-norm clipping.

Decoupled weight decay applies to matrices only (embeddings and linear weights), as in GPT-2 and
nanoGPT; biases and norm gains are not decayed. With weight_decay=0 this is microgpt's Adam.
"""

from __future__ import annotations

import math

import numpy as np

from pocketgpt import kernels

SCHEDULES = ("cosine", "linear", "constant")


def lr_at(step: int, total: int, lr: float, *, warmup: int = 0, schedule: str = "cosine",
          min_lr: float = 0.0) -> float:
    """Learning rate for 0-based `step` of `total`: linear warmup, then decay to min_lr.

    Warmup is nanoGPT's: lr * (step + 1) / (warmup + 1). The linear schedule with warmup 0 and
    min_lr 0 is microgpt's lr * (1 - step / total).
    """
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if schedule == "constant":
        return lr
    ratio = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return min_lr + (lr - min_lr) * (1.0 - ratio)
    if schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def clip_grad_norm(grad: np.ndarray, max_norm: float) -> float:
    """Scale grad in place so that its L2 norm is at most max_norm; returns the norm before clipping."""
    norm = float(np.sqrt(np.dot(grad, grad)))
    if max_norm > 0 and norm > max_norm:
        grad *= max_norm / (norm + 1e-6)
    return norm


class AdamW:
    """Adam with bias correction and decoupled weight decay, updating `flat` in place."""

    def __init__(self, flat: np.ndarray, decay_mask: np.ndarray | None = None, *, beta1: float = 0.9,
                 beta2: float = 0.95, eps: float = 1e-8, weight_decay: float = 0.0):
        self.flat = flat
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.decay = None if decay_mask is None or weight_decay == 0 else decay_mask.astype(flat.dtype)
        self.m = np.zeros_like(flat)
        self.v = np.zeros_like(flat)
        self.t = 0  # steps taken

    def step(self, grad: np.ndarray, lr: float) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        c1 = 1.0 / (1.0 - b1**self.t)  # bias corrections
        c2 = 1.0 / (1.0 - b2**self.t)
        kernels.adamw(self.flat, grad, self.m, self.v, self.decay, lr, b1, b2, c1, c2, self.eps, self.weight_decay)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and scalars needed to continue exactly where this optimizer stands."""
        return {"adam.m": self.m, "adam.v": self.v}, {"t": self.t}

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict) -> None:
        for name, buf in (("adam.m", self.m), ("adam.v", self.v)):
            if arrays[name].shape != buf.shape:
                raise ValueError(f"optimizer state {name} has {arrays[name].size} values, the model {buf.size}")
            buf[...] = arrays[name]
        self.t = int(scalars["t"])
