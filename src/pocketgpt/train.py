"""Training: the loop (batches, AdamW, schedule, clipping), evaluation and checkpoints with exact resume.

A run's settings live in TrainSettings; the CLI's flags map one-to-one onto its fields. A checkpoint
is written at every evaluation and at the end; resuming from it continues the very same run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketgpt.checkpoint import Checkpoint, CheckpointError, check_can_save, save_checkpoint
from pocketgpt.data import Batches, Dataset, eval_batches
from pocketgpt.model import GPT
from pocketgpt.optim import SCHEDULES, AdamW, clip_grad_norm, lr_at
from pocketgpt.runtime import retain_freed_memory


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-2
    min_lr: float = 0.0
    warmup: int = 0
    schedule: str = "linear"  # cosine | linear | constant
    weight_decay: float = 0.0
    beta1: float = 0.85
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 42
    eval_interval: int = 0  # evaluate and checkpoint every this many steps; 0: only at the end
    dtype: str = "float32"
    workers: int = 1  # threads that split each batch (see GPT.loss_and_grad); pays off from ~1M parameters

    def __post_init__(self) -> None:
        checks = [(self.steps >= 1, "steps must be >= 1"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.lr > 0, "lr must be > 0"), (0 <= self.min_lr <= self.lr, "min_lr must be in [0, lr]"),
                  (self.warmup >= 0, "warmup must be >= 0"),
                  (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
                  (self.weight_decay >= 0, "weight_decay must be >= 0"),
                  (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must be in [0, 1)"),
                  (self.grad_clip >= 0, "grad_clip must be >= 0"),
                  (self.eval_interval >= 0, "eval_interval must be >= 0"),
                  (self.dtype in ("float32", "float64"), "dtype must be float32 or float64"),
                  (self.workers >= 1, "workers must be >= 1")]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise ValueError("; ".join(problems))


# Training defaults per preset. shakespeare-cpu is nanoGPT's shakespeare_char recipe for a CPU.
TRAIN_DEFAULTS: dict[str, TrainSettings] = {
    "microgpt": TrainSettings(),
    "shakespeare-cpu": TrainSettings(steps=2000, batch_size=12, lr=1e-3, min_lr=1e-4, warmup=100,
                                     schedule="cosine", weight_decay=0.1, beta1=0.9, beta2=0.99,
                                     grad_clip=1.0, eval_interval=250, workers=2),
}


def decay_mask(model: GPT) -> np.ndarray:
    """1 for matrices (decayed), 0 for biases and norm gains, laid out like model.flat."""
    return np.concatenate([np.full(math.prod(s), float(len(s) >= 2)) for s in model.shapes.values()])


def evaluate(model: GPT, dataset: Dataset, batch_size: int = 64) -> float:
    """Mean loss per target token over the whole validation split (deterministic)."""
    total, count = 0.0, 0.0
    for x, y, w in eval_batches(dataset, model.config.block_size, batch_size):
        n = float(w.sum())
        _, loss, _ = model.forward(x, y, w, denom=n)
        total, count = total + loss * n, count + n
    return total / count


def train_step(model: GPT, optimizer: AdamW, batch, lr: float, grad_clip: float,
               workers: int = 1) -> tuple[float, float]:
    """One optimization step on batch (inputs, targets, weights); returns (loss, gradient norm before clipping)."""
    x, y, w = batch
    loss, grad = model.loss_and_grad(x, y, w, workers=workers)
    if not math.isfinite(loss):
        raise FloatingPointError(f"loss became {loss}; lower --lr or raise --grad-clip")
    grad_norm = clip_grad_norm(grad, grad_clip)
    optimizer.step(grad, lr)
    return loss, grad_norm


def make_checkpoint(model: GPT, dataset: Dataset, settings: TrainSettings, step: int, optimizer: AdamW,
                    batches: Batches, history: dict) -> Checkpoint:
    arrays, scalars = optimizer.state()
    state = {"step": step, "settings": dataclasses.asdict(settings), "optimizer": scalars,
             "batches": batches.state(), "history": history}
    return Checkpoint(model.config, model.params, dataset.tokenizer, settings.dtype, dataset.spec(), state, arrays)


def train(model: GPT, dataset: Dataset, settings: TrainSettings, *, out: str | Path | None = None,
          resume: Checkpoint | None = None, on_step: Callable[[dict], None] | None = None) -> dict:
    """Train `model` in place for settings.steps steps (continuing `resume` if given); returns a summary.

    on_step receives {step, loss, lr, grad_norm, tokens, val_loss?} after each step (e.g. a progress bar).
    """
    s = settings
    if out is not None:
        check_can_save(out)  # fail now, not after the first stretch of training
    retain_freed_memory()
    batches = Batches(dataset, s.batch_size, model.config.block_size, s.seed)
    optimizer = AdamW(model.flat, decay_mask(model), beta1=s.beta1, beta2=s.beta2, eps=s.eps,
                      weight_decay=s.weight_decay)
    start, history = 0, {"val_loss": []}
    if resume is not None:
        state = resume.train_state
        try:
            optimizer.load_state(resume.train_arrays, state["optimizer"])
            batches.load_state(state["batches"])
            start, history = int(state["step"]), state.get("history", history)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"train_state of the checkpoint is invalid: {e}") from None
        if start > s.steps:
            raise ValueError(f"the checkpoint is at step {start}, beyond --steps {s.steps}")
    tokens_seen, t0, loss, val_loss = 0, time.perf_counter(), float("nan"), None
    for step in range(start, s.steps):
        batch = batches.next()
        lr = lr_at(step, s.steps, s.lr, warmup=s.warmup, schedule=s.schedule, min_lr=s.min_lr)
        loss, grad_norm = train_step(model, optimizer, batch, lr, s.grad_clip, s.workers)
        tokens_seen += int(batch[2].sum())
        done = step + 1
        info = {"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens": tokens_seen}
        if (s.eval_interval and done % s.eval_interval == 0) or done == s.steps:
            val_loss = evaluate(model, dataset)
            history["val_loss"].append([done, val_loss])
            info["val_loss"] = val_loss
            if out is not None:
                save_checkpoint(out, make_checkpoint(model, dataset, s, done, optimizer, batches, history))
        if on_step is not None:
            on_step(info)
    elapsed = time.perf_counter() - t0
    if val_loss is None:
        val_loss = evaluate(model, dataset)
    return {"steps": s.steps, "train_loss": loss, "val_loss": val_loss, "tokens": tokens_seen,
            "seconds": elapsed, "tokens_per_s": tokens_seen / elapsed if elapsed > 0 else 0.0}
