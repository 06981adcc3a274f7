"""Training: the one loop (`loop`), AdamW steps for any loss (`adamw_step`), and language-model training with
evaluation and checkpoints that resume exactly (`train`).

`loop` runs steps start..settings.steps - 1 with the learning rate of the schedule, refuses a non-finite
loss, evaluates every eval_interval steps and at the end, and reports each step. What a step does is the
caller's: `adamw_step` builds the usual one (a loss and its gradient, clipping, AdamW); the VLA policy, QAT,
ZeroQAT (forward passes only) and SpinQuant's rotation search bring their own losses or updates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pocketgpt.config import GPTConfig
from pocketgpt.errors import InputError, SettingsError, check_settings
from pocketgpt.model import GPT, count_params
from pocketgpt.model.runtime import check_memory, retain_freed_memory
from pocketgpt.train.batches import Batches, Dataset
from pocketgpt.train.checkpoint import Checkpoint, CheckpointError, check_can_save, save_checkpoint
from pocketgpt.train.evaluate import evaluate
from pocketgpt.train.optim import SCHEDULES, AdamW, clip_grad_norm, lr_at

MAX_SEED = 2**63 - 1


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
    context: int = 0  # tokens per training and validation window; 0: the model's whole context

    def __post_init__(self) -> None:
        check_settings([
            (self.steps >= 1, "steps", f"must be >= 1 (got {self.steps})"),
            (self.batch_size >= 1, "batch_size", f"must be >= 1 (got {self.batch_size})"),
            (self.lr > 0, "lr", f"must be > 0 (got {self.lr})"),
            (0 <= self.min_lr <= self.lr, "min_lr", f"must be in [0, lr] (got {self.min_lr})"),
            (self.warmup >= 0, "warmup", f"must be >= 0 (got {self.warmup})"),
            (self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}"),
            (self.weight_decay >= 0, "weight_decay", f"must be >= 0 (got {self.weight_decay})"),
            (0 <= self.beta1 < 1, "beta1", f"must be in [0, 1) (got {self.beta1})"),
            (0 <= self.beta2 < 1, "beta2", f"must be in [0, 1) (got {self.beta2})"),
            (self.eps > 0, "eps", f"must be > 0 (got {self.eps})"),
            (self.grad_clip >= 0, "grad_clip", f"must be >= 0 (got {self.grad_clip})"),
            (0 <= self.seed <= MAX_SEED, "seed", f"must be in 0..{MAX_SEED} (got {self.seed})"),
            (self.eval_interval >= 0, "eval_interval", f"must be >= 0 (got {self.eval_interval})"),
            (self.dtype in ("float32", "float64"), "dtype", f"must be float32 or float64 (got {self.dtype})"),
            (self.workers >= 1, "workers", f"must be >= 1 (got {self.workers})"),
            (self.context >= 0, "context", f"must be >= 0 (got {self.context})"),
        ])

    def window(self, model: GPT) -> int:
        """Tokens per window for this model: the context asked for, at most the model's own."""
        return min(self.context or model.config.block_size, model.config.block_size)


# Training defaults per preset. shakespeare-cpu is nanoGPT's shakespeare_char recipe for a CPU.
TRAIN_DEFAULTS: dict[str, TrainSettings] = {
    "microgpt": TrainSettings(),
    "shakespeare-cpu": TrainSettings(steps=2000, batch_size=12, lr=1e-3, min_lr=1e-4, warmup=100,
                                     schedule="cosine", weight_decay=0.1, beta1=0.9, beta2=0.99,
                                     grad_clip=1.0, eval_interval=250, workers=2),
}
TRAIN_DEFAULTS["shakespeare-deep"] = TRAIN_DEFAULTS["shakespeare-cpu"]  # the same recipe, for a fair comparison
# Fine-tuning a checkpoint on new text (train --init-from): a short run at a small learning rate.
FINETUNE = TrainSettings(steps=200, batch_size=4, lr=1e-4, min_lr=1e-5, warmup=20, schedule="cosine",
                         beta1=0.9, beta2=0.95, eval_interval=50, context=256)
WORKERS_FROM = 500_000  # parameters from which splitting the batch over two threads pays


RESUMABLE = ("steps", "eval_interval")  # what a resumed run may change


def resume_settings(ckpt: Checkpoint, **changes) -> TrainSettings:
    """The saved run's settings, with only RESUMABLE fields changed."""
    fixed = sorted(set(changes) - set(RESUMABLE))
    if fixed:
        raise SettingsError([(f, "cannot change when resuming a run")
                             for f in fixed])
    try:
        return TrainSettings(**{**ckpt.train_state["settings"], **changes})
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"train_state.json is invalid: {e}") from None


def default_workers(num_params: int) -> int:
    """Threads that split a batch: 2 for models of WORKERS_FROM parameters and up, else 1."""
    return 2 if num_params >= WORKERS_FROM else 1


def settings_for(preset: str | None, num_params: int, **given) -> TrainSettings:
    """A preset's training defaults (fine-tuning's, FINETUNE, for preset None) with the given fields replaced;
    without a preset of its own, workers default by the model's size."""
    base = TRAIN_DEFAULTS[preset] if preset in TRAIN_DEFAULTS else FINETUNE if preset is None else TrainSettings()
    if "workers" not in given and preset not in TRAIN_DEFAULTS:
        given["workers"] = default_workers(num_params)
    return replace(base, **given)


def activation_bytes(config: GPTConfig, tokens: int, window: int, itemsize: int) -> int:
    """About what a training forward keeps for backward over `tokens` tokens in windows of `window`: per token
    and block its normed and projected streams (about 12 C), the MLP's widths (3 fc outputs and an activation)
    and a row of attention probabilities per head; per token the head's logits, probabilities and gradient."""
    c = config
    fc = 2 * c.ffn if c.activation == "swiglu" else c.ffn
    per_token = c.n_layer * (12 * c.n_embd + 3 * fc + c.ffn + c.n_head * window) + 3 * c.vocab_size
    return tokens * per_token * itemsize


def check_training_memory(config: GPTConfig, s: TrainSettings) -> None:
    """MemoryError (with the figures) unless the weights, gradients, AdamW moments, each worker's gradient buffer
    and a batch's activations fit in the memory available now."""
    n, itemsize = count_params(config), np.dtype(s.dtype).itemsize
    window = min(s.context or config.block_size, config.block_size)
    check_memory(n * itemsize * (4 + s.workers) + activation_bytes(config, s.batch_size * window, window, itemsize),
                 f"training {n:,} parameters on batches of {s.batch_size} x {window} tokens")


def decay_mask(model: GPT) -> np.ndarray:
    """1 for matrices (decayed), 0 for biases and norm gains, laid out like model.flat."""
    return np.concatenate([np.full(math.prod(s), float(len(s) >= 2)) for s in model.shapes.values()])


def make_optimizer(model: GPT, s: TrainSettings) -> AdamW:
    return AdamW(model.flat, decay_mask(model), beta1=s.beta1, beta2=s.beta2, eps=s.eps, weight_decay=s.weight_decay)


def lm_tokens(batch) -> int:
    """Target tokens of a language-model batch (inputs, targets, weights)."""
    return int(np.sum(batch[2]))


def adamw_step(model: GPT, s: TrainSettings, batches, optimizer: AdamW, loss_and_grad=None,
               tokens: Callable = lm_tokens):
    """The usual step: the next batch, its loss and gradient (model.loss_and_grad unless given), clipping at
    s.grad_clip, an AdamW update. tokens(batch) counts what the step trained on. Returns step(step, lr) -> info
    for `loop`."""
    grad_of = loss_and_grad or (lambda batch: model.loss_and_grad(*batch, workers=s.workers))

    def step(_: int, lr: float) -> dict:
        batch = batches.next()
        loss, grad = grad_of(batch)
        if not math.isfinite(loss):
            return {"loss": loss}
        grad_norm = clip_grad_norm(grad, s.grad_clip)
        optimizer.step(grad, lr)
        return {"loss": loss, "grad_norm": grad_norm, "tokens": tokens(batch)}

    return step


def loop(s: TrainSettings, step: Callable[[int, float], dict], *, start: int = 0, stop: int | None = None,
         at_eval: Callable[[int], float | None] | None = None,
         on_step: Callable[[dict], None] | None = None) -> dict:
    """Steps start..s.steps - 1 (or up to `stop`, the schedule still spanning s.steps); step(step, lr) returns
    at least {"loss"}. at_eval(steps done) runs every s.eval_interval steps and after the last, and its value
    is reported as val_loss. on_step(info) after each step. Returns {steps, train_loss, val_loss, tokens,
    seconds, tokens_per_s}."""
    tokens, t0, loss, val_loss = 0, time.perf_counter(), float("nan"), None
    for i in range(start, s.steps if stop is None else min(stop, s.steps)):
        lr = lr_at(i, s.steps, s.lr, warmup=s.warmup, schedule=s.schedule, min_lr=s.min_lr)
        info = step(i, lr)
        loss = info["loss"]
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} at step {i + 1}; lower the learning rate or clip "
                                     "the gradient harder")
        tokens += info.get("tokens", 0)
        done = i + 1
        info = {**info, "step": done, "lr": lr, "tokens": tokens}
        if at_eval is not None and ((s.eval_interval and done % s.eval_interval == 0) or done == s.steps):
            val_loss = at_eval(done)
            if val_loss is not None:
                info["val_loss"] = val_loss
        if on_step is not None:
            on_step(info)
    elapsed = time.perf_counter() - t0
    return {"steps": s.steps, "train_loss": loss, "val_loss": val_loss, "tokens": tokens, "seconds": elapsed,
            "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0}


def make_checkpoint(model: GPT, dataset: Dataset, settings: TrainSettings, step: int, optimizer: AdamW,
                    batches: Batches, history: dict, base: dict | None = None) -> Checkpoint:
    arrays, scalars = optimizer.state()
    state = {"step": step, "settings": asdict(settings), "optimizer": scalars, "batches": batches.state(),
             "history": history}
    data = {**(base or {}), **dataset.spec()}
    return Checkpoint(model.config, model.params, dataset.tokenizer, settings.dtype, data, state, arrays)


def train(model: GPT, dataset: Dataset, settings: TrainSettings, *, out: str | Path | None = None,
          resume: Checkpoint | None = None, overwrite: bool = False, data: dict | None = None,
          on_start: Callable[[int], None] | None = None, on_step: Callable[[dict], None] | None = None) -> dict:
    """Train `model` in place for settings.steps steps (continuing `resume` if given); returns a summary.

    out: the checkpoint folder, written at every evaluation and at the end; an existing checkpoint there is
    replaced only when resuming that run or with overwrite=True. data: extra fields for the checkpoint's
    "data" record (e.g. where the starting weights came from). on_start(first step) runs once every check has
    passed, before the first step; on_step receives {step, loss, lr, grad_norm, tokens, val_loss?} after each
    step (a progress bar, for instance).
    """
    s = settings
    check_training_memory(model.config, s)
    if out is not None:
        check_can_save(out, overwrite=overwrite or resume is not None)  # fail now, not after training
    retain_freed_memory()
    batches = Batches(dataset, s.batch_size, s.window(model), s.seed)
    optimizer = make_optimizer(model, s)
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
            raise InputError(f"the checkpoint is at step {start}, beyond the {s.steps} steps asked for; "
                             f"ask for at least {start}")
    if on_start is not None:
        on_start(start)

    def at_eval(done: int) -> float:
        val_loss = evaluate(model, dataset, context=s.window(model))
        history["val_loss"].append([done, val_loss])
        if out is not None:
            save_checkpoint(out, make_checkpoint(model, dataset, s, done, optimizer, batches, history, data),
                            overwrite=True)
        return val_loss

    result = loop(s, adamw_step(model, s, batches, optimizer), start=start, at_eval=at_eval, on_step=on_step)
    if result["val_loss"] is None:  # a resumed run that had nothing left to do
        result["val_loss"] = evaluate(model, dataset, context=s.window(model))
    return result
