"""microgpt's exact recipe on the fast engine: the bridge between the reference and the NumPy GPT.

The same Python `random` stream draws the shuffle, the weights (through the reference's own
initializer, so the order is microgpt's) and the samples; the NumPy engine runs in float64 with
batch 1, Adam with microgpt's constants and a linear decay to zero, through the training loop every
trainer uses. Samples are drawn microgpt's way (random.choices over softmax(logits / temperature)), over
the engine's KV cache. Not a general trainer: that is `pocketgpt.train.train`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from pocketgpt import reference
from pocketgpt.config import PRESETS, GPTConfig
from pocketgpt.model import GPT
from pocketgpt.train.loop import TrainSettings, adamw_step, loop
from pocketgpt.train.optim import AdamW


def params_from_reference(ref_params: dict, config: GPTConfig) -> dict[str, np.ndarray]:
    """The reference engine's weights under the NumPy engine's names (q, k, v fused into c_attn)."""
    def arr(name):
        return np.array([[p.data for p in row] for row in ref_params[name]], dtype=np.float64)

    params = {"wte.weight": arr("wte"), "wpe.weight": arr("wpe"), "lm_head.weight": arr("lm_head")}
    for i in range(config.n_layer):
        r = f"layer{i}"
        params[f"h.{i}.attn.c_attn.weight"] = np.concatenate([arr(f"{r}.attn_wq"), arr(f"{r}.attn_wk"),
                                                              arr(f"{r}.attn_wv")])
        params[f"h.{i}.attn.c_proj.weight"] = arr(f"{r}.attn_wo")
        params[f"h.{i}.mlp.c_fc.weight"] = arr(f"{r}.mlp_fc1")
        params[f"h.{i}.mlp.c_proj.weight"] = arr(f"{r}.mlp_fc2")
    return params


class Documents:
    """microgpt's batches: one document per step, in the shuffled order, cut at the context."""

    def __init__(self, docs: list[str], chars: list[str], block_size: int):
        self.docs, self.chars, self.block_size, self.step = docs, chars, block_size, 0

    def next(self):
        bos = len(self.chars)
        doc = self.docs[self.step % len(self.docs)]
        self.step += 1
        tokens = np.array([[bos] + [self.chars.index(ch) for ch in doc] + [bos]])[:, :self.block_size + 1]
        return tokens[:, :-1], tokens[:, 1:], np.ones(tokens[:, 1:].shape)


def reproduce_microgpt(steps: int = 1000, seed: int = 42, num_samples: int = 20,
                       path: str = reference.NAMES, log: Callable[[str], None] = print,
                       stop_after: int | None = None):
    """Train and sample exactly as microgpt does, on the NumPy engine. Returns (losses, samples).

    stop_after ends training early (the learning-rate schedule still spans `steps`) and skips sampling.
    """
    rng = random.Random(seed)
    docs = reference.load_docs(path)
    rng.shuffle(docs)
    chars = sorted(set("".join(docs)))
    bos = len(chars)
    config = PRESETS["microgpt"].replace(vocab_size=len(chars) + 1)
    model = GPT(config, params_from_reference(reference.init_params(rng, config.vocab_size), config),
                dtype=np.float64)
    settings = TrainSettings(steps=steps, batch_size=1, lr=reference.LEARNING_RATE, schedule="linear",
                             beta1=reference.BETA1, beta2=reference.BETA2, eps=reference.EPS_ADAM, grad_clip=0.0,
                             dtype="float64")
    optimizer = AdamW(model.flat, beta1=reference.BETA1, beta2=reference.BETA2, eps=reference.EPS_ADAM)
    step = adamw_step(model, settings, Documents(docs, chars, config.block_size), optimizer)
    losses = []

    def record(info: dict) -> None:
        losses.append(info["loss"])
        log(f"step {info['step']:4d} / {steps:4d} | loss {info['loss']:.4f}")

    loop(settings, step, stop=stop_after, on_step=record)
    samples = []
    for i in range(num_samples if stop_after is None else 0):
        samples.append("".join(chars[t] for t in sample(model, bos, rng)))
        log(f"sample {i + 1:2d}: {samples[-1]}")
    return losses, samples


def sample(model: GPT, bos: int, rng: random.Random, temperature: float = reference.TEMPERATURE) -> list[int]:
    """One document's ids, drawn as microgpt draws them, until BOS or the context is full."""
    cache, token, out = model.new_cache(1), bos, []
    for _ in range(model.config.block_size):
        logits = model.forward_cached(np.array([[token]]), cache)[0, -1] / temperature
        probs = np.exp(logits - logits.max())
        token = rng.choices(range(probs.size), weights=(probs / probs.sum()).tolist())[0]
        if token == bos:
            break
        out.append(token)
    return out
