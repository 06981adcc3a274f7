"""Rotations of the residual stream, folded into the weights (QuaRot), and learned on the quantized loss
(SpinQuant).

For an orthogonal R (C, C), a model whose residual stream is x computes exactly the same function as one
whose stream is x R, if every matrix that reads the stream is rotated on its input side (W R), every
matrix that writes it on its output side (R^T W), and the embeddings too (wte R, wpe R, lm_head R). That
holds only if the norms commute with R: RMSNorm without a gain does (it sees ||x R|| = ||x||), so the
model is made rotatable first:
  1. norm gains are folded into the linears that read the norm (W[:, j] *= g_j; lm_head absorbs ln_f's gain,
     which unties it from wte);
  2. LayerNorm becomes RMSNorm: every writer of the residual stream is centred (its outputs made mean-zero
     over channels), so the stream has zero mean and LayerNorm's mean subtraction has nothing to remove.
Outlier channels of the stream are then spread over all channels by R (a Hadamard matrix with random
signs), which makes both weights and activations easier to quantize. A second, per-head Hadamard rotates
each attention head's values and the matching input columns of attn.c_proj (QuaRot's R2).

SpinQuant starts from the same Hadamard and learns R1 by Cayley SGD: the gradient G of the fake-quantized
model's loss with respect to R is turned into the skew-symmetric A = G R^T - R G^T, and
R <- (I + lr/2 A)^-1 (I - lr/2 A) R, which stays exactly orthogonal. Rotary positions act on queries and
keys after their projections, so they are untouched by either rotation.
"""

from __future__ import annotations

import numpy as np

from pocketgpt.config import GPTConfig
from pocketgpt.model import GPT, views
from pocketgpt.quant.fake import FakeQuantGPT
from pocketgpt.quant.recipe import QuantRecipe, check_rotatable
from pocketgpt.train import TrainSettings, check_training_memory, loop

READERS = ("attn.c_attn", "mlp.c_fc")  # read the (normed) residual stream
WRITERS = ("attn.c_proj", "mlp.c_proj")  # add into it


def random_hadamard(n: int, rng: np.random.Generator) -> np.ndarray:
    """An orthogonal (n, n) matrix: a Sylvester Hadamard matrix / sqrt(n) with random row signs. When n is
    not a power of two, the odd factor m (n = 2^k m) gets a random orthogonal m x m block (Kronecker)."""
    k = n & -n  # the largest power of two dividing n
    h = np.ones((1, 1))
    while h.shape[0] < k:
        h = np.block([[h, h], [h, -h]])
    h /= np.sqrt(k)
    m = n // k
    if m > 1:
        q, r = np.linalg.qr(rng.standard_normal((m, m)))
        h = np.kron(q * np.sign(np.diag(r)), h)
    return h * rng.choice([-1.0, 1.0], size=(n, 1))


def rotatable(model: GPT) -> GPT:
    """The same function as a float64 GPT with gain-free RMSNorms and an untied lm_head (steps 1 and 2 above)."""
    c = model.config
    check_rotatable(c)
    p = {k: np.array(v, np.float64) for k, v in model.params.items()}
    lm_head = p["wte.weight"].copy() if c.tie_embeddings else p.pop("lm_head.weight")
    if c.norm_weights:
        for i in range(c.n_layer):
            p[f"h.{i}.attn.c_attn.weight"] *= p.pop(f"h.{i}.ln_1.weight")
            p[f"h.{i}.mlp.c_fc.weight"] *= p.pop(f"h.{i}.ln_2.weight")
        if c.final_norm:
            lm_head *= p.pop("ln_f.weight")
    if c.norm == "layernorm":  # centre every writer of the residual stream
        for name in ("wte.weight", "wpe.weight"):
            if name in p:
                p[name] -= p[name].mean(axis=1, keepdims=True)
        for i in range(c.n_layer):
            for lin in WRITERS:
                w = p[f"h.{i}.{lin}.weight"]  # (C, in): output channels are rows
                w -= w.mean(axis=0, keepdims=True)
    p["lm_head.weight"] = lm_head
    config = c.replace(norm="rmsnorm", norm_weights=False, tie_embeddings=False)
    return GPT(config, p, dtype=np.float64)


def head_rotation(config: GPTConfig, seed: int = 0) -> np.ndarray:
    """QuaRot's R2: one random Hadamard (hs, hs) shared by every head of every layer."""
    return random_hadamard(config.head_size, np.random.default_rng(seed + 1))


def rotate_heads(params: dict[str, np.ndarray], config: GPTConfig, r2: np.ndarray) -> None:
    """Rotate each value head by r2 (its rows of c_attn's value part) and, to match, the input columns of
    c_proj that every query head reading it writes from (one r2 for all heads, so shared value heads work)."""
    hs = config.head_size
    q_size, kv_size = config.qkv_sizes
    for i in range(config.n_layer):
        qkv, proj = params[f"h.{i}.attn.c_attn.weight"], params[f"h.{i}.attn.c_proj.weight"]
        for h in range(config.n_kv):
            rows = slice(q_size + kv_size + h * hs, q_size + kv_size + (h + 1) * hs)
            qkv[rows] = r2.T @ qkv[rows]
        for h in range(config.n_head):
            cols = slice(h * hs, (h + 1) * hs)
            proj[:, cols] = proj[:, cols] @ r2


def rotated_params(base: dict[str, np.ndarray], config: GPTConfig, r1: np.ndarray) -> dict[str, np.ndarray]:
    """The parameters of a rotatable model with its residual stream rotated by r1 (C, C)."""
    out = dict(base)
    for name in ("wte.weight", "wpe.weight", "lm_head.weight"):
        if name in base:
            out[name] = base[name] @ r1
    for i in range(config.n_layer):
        for lin in READERS:
            out[f"h.{i}.{lin}.weight"] = base[f"h.{i}.{lin}.weight"] @ r1
        for lin in WRITERS:
            out[f"h.{i}.{lin}.weight"] = r1.T @ base[f"h.{i}.{lin}.weight"]
    return out


def rotation_grad(base: dict[str, np.ndarray], config: GPTConfig, grads: dict[str, np.ndarray]) -> np.ndarray:
    """dL/dr1 from the loss gradients of the rotated parameters (chain rule through rotated_params)."""
    g = sum(base[n].T @ grads[n] for n in ("wte.weight", "wpe.weight", "lm_head.weight") if n in base)
    for i in range(config.n_layer):
        for lin in READERS:  # W' = W R  ->  W^T G
            g += base[f"h.{i}.{lin}.weight"].T @ grads[f"h.{i}.{lin}.weight"]
        for lin in WRITERS:  # W' = R^T W  ->  W G^T
            g += base[f"h.{i}.{lin}.weight"] @ grads[f"h.{i}.{lin}.weight"].T
    return g


def cayley_step(r: np.ndarray, g: np.ndarray, lr: float) -> np.ndarray:
    """One Cayley SGD step on the orthogonal group: a descent direction that keeps r orthogonal."""
    a = g @ r.T - r @ g.T
    eye = np.eye(r.shape[0])
    return np.linalg.solve(eye + lr / 2 * a, (eye - lr / 2 * a) @ r)


def hadamard_rotate(model: GPT, seed: int = 0) -> tuple[GPT, np.ndarray]:
    """QuaRot: the model with a random-Hadamard residual rotation and per-head value rotations folded in,
    in the model's dtype, and the residual rotation R1."""
    base = rotatable(model)
    c = base.config
    rotate_heads(base.params, c, head_rotation(c, seed))
    r1 = random_hadamard(c.n_embd, np.random.default_rng(seed))
    return GPT(c, rotated_params(base.params, c, r1), dtype=model.dtype), r1


def learn_rotation(model: GPT, recipe: QuantRecipe, calib, steps: int = 100, lr: float = 0.05, seed: int = 0,
                   on_step=None) -> tuple[GPT, np.ndarray]:
    """SpinQuant: R1 learned by Cayley SGD on the calibration batches' loss of the model with its block
    linears fake-quantized by `recipe` (straight-through), starting from QuaRot's Hadamard. Returns the
    rotated float model (the model's dtype) and R1."""
    x = calib[0][0]
    check_training_memory(model.config, TrainSettings(batch_size=len(x), context=x.shape[1]))  # back-propagates
    base = rotatable(model)
    c = base.config
    rotate_heads(base.params, c, head_rotation(c, seed))
    r1 = random_hadamard(c.n_embd, np.random.default_rng(seed))
    fake = FakeQuantGPT(GPT(c, base.params, dtype=np.float32), recipe)

    def step(i: int, rate: float) -> dict:
        nonlocal r1
        fake.load_params(rotated_params(base.params, c, r1))
        x, y, w = calib[i % len(calib)]
        loss, flat = fake.loss_and_grad(x, y, w)
        g = rotation_grad(base.params, c, views(flat, fake.shapes))
        r1 = cayley_step(r1, g / max(np.abs(g).max(), 1e-12), rate)
        return {"loss": loss}

    loop(TrainSettings(steps=steps, lr=lr, schedule="constant", seed=seed), step, on_step=on_step)
    return GPT(c, rotated_params(base.params, c, r1), dtype=model.dtype), r1
