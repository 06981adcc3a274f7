"""microgpt's exact recipe on the fast engine: the bridge between the reference and the NumPy GPT.

The same Python `random` stream draws the shuffle, the weights (through the reference's own
initializer, so the order is microgpt's) and the samples; the NumPy engine runs in float64 with
batch 1, Adam with microgpt's constants and a linear decay to zero. Not a general trainer: that
is `pocketgpt.train`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from pocketgpt import reference
from pocketgpt.config import PRESETS, GPTConfig
from pocketgpt.generate import generate
from pocketgpt.model import GPT
from pocketgpt.optim import AdamW, lr_at


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
    optimizer = AdamW(model.flat, beta1=reference.BETA1, beta2=reference.BETA2, eps=reference.EPS_ADAM)
    losses = []
    for step in range(min(steps, stop_after or steps)):
        doc = docs[step % len(docs)]
        tokens = np.array([[bos] + [chars.index(ch) for ch in doc] + [bos]])[:, :config.block_size + 1]
        loss, grad = model.loss_and_grad(tokens[:, :-1], tokens[:, 1:])
        optimizer.step(grad, lr_at(step, steps, reference.LEARNING_RATE, schedule="linear"))
        losses.append(loss)
        log(f"step {step + 1:4d} / {steps:4d} | loss {loss:.4f}")
    samples = []
    for i in range(num_samples if stop_after is None else 0):
        ids = generate(model, [bos], max_new_tokens=config.block_size, temperature=reference.TEMPERATURE,
                            stop_token=bos, rng=rng)
        samples.append("".join(chars[t] for t in ids))
        log(f"sample {i + 1:2d}: {samples[-1]}")
    return losses, samples
