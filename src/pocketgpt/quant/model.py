"""Quantized models: which weights are quantized, how (RTN, GPTQ or AWQ), and running them without ever
holding the whole model in float.

The four linear layers of every block (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) are quantized;
embeddings, norms and biases stay float, as GPTQ and AWQ do. A QuantizedGPT keeps those weights packed
and dequantizes one matrix at a time, just before its matmul. It runs forward only (eval, sampling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pocketgpt.config import GPTConfig
from pocketgpt.model import GPT, param_shapes
from pocketgpt.quant.awq import awq_quantize, search_scales
from pocketgpt.quant.formats import GroupQuantized, check_format, quantize_groups
from pocketgpt.quant.gptq import gptq_quantize, hessian
from pocketgpt.quant.rotation import check_rotatable, hadamard_rotate, learn_rotation

METHODS = ("rtn", "gptq", "awq", "smoothquant", "qat", "zeroqat")  # the last two train first (quant.qat)
ROTATIONS = ("none", "hadamard", "learned")  # QuaRot, SpinQuant (quant.rotation); with rtn and gptq
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # in the order a block uses them


@dataclass(frozen=True)
class QuantRecipe:
    method: str = "rtn"
    bits: int = 4
    group_size: int = 64
    symmetric: bool = True
    act_order: bool = False  # GPTQ only
    damp: float = 0.01  # GPTQ only: dampening as a fraction of the mean Hessian diagonal
    rotation: str = "none"  # rotate the residual stream first: hadamard (QuaRot) or learned (SpinQuant)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} (got {self.method!r})")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {', '.join(ROTATIONS)} (got {self.rotation!r})")
        if self.rotation != "none" and self.method not in ("rtn", "gptq"):
            raise ValueError(f"rotation works with rtn and gptq (got {self.method}): the others fold scales into "
                             "norm gains, which a rotated model no longer has")

    @property
    def label(self) -> str:
        return self.method if self.rotation == "none" else f"{self.method}+{self.rotation}"

    def to_dict(self) -> dict:
        return asdict(self)


def quantized_names(config: GPTConfig) -> list[str]:
    return [f"h.{i}.{lin}.weight" for i in range(config.n_layer) for lin in LINEARS]


def check_recipe(config: GPTConfig, recipe: QuantRecipe) -> None:
    """Raise ValueError unless every quantized matrix of this architecture fits the recipe's format."""
    if recipe.rotation != "none":
        check_rotatable(config)
    shapes = param_shapes(config)
    for name in quantized_names(config):
        check_format(recipe.bits, recipe.group_size, shapes[name][1])


class QuantizedGPT(GPT):
    """A GPT whose block linears are GroupQuantized; everything else is float in self.flat."""

    def __init__(self, config: GPTConfig, params: dict[str, np.ndarray], qweights: dict[str, GroupQuantized],
                 recipe: QuantRecipe, dtype=np.float32):
        self.qweights, self.recipe = qweights, recipe
        super().__init__(config, params, dtype=dtype)

    def float_shapes(self, config: GPTConfig) -> dict[str, tuple[int, ...]]:
        return {k: v for k, v in param_shapes(config).items() if k not in self.qweights}

    def weight(self, name: str) -> np.ndarray:
        q = self.qweights.get(name)
        return self.params[name] if q is None else q.dequantize(self.dtype)

    def _linear_forward(self, x, prefix):
        if self.recipe.method == "smoothquant":  # W8A8: the inputs of quantized layers go to int8 per token
            x = quantize_per_token(x).astype(x.dtype, copy=False)
        return super()._linear_forward(x, prefix)

    @property
    def weight_bytes(self) -> int:
        """Bytes of resident weights: packed codes, scales and the float remainder."""
        return self.flat.nbytes + sum(q.nbytes for q in self.qweights.values())

    def backward(self, caches, grads) -> None:
        raise TypeError("a quantized model runs forward only; fine-tune the float model instead (see quant.qat)")


def calibration_inputs(model: GPT, batches, prefix: str) -> np.ndarray:
    """The inputs (N, in) that layer `prefix` sees on the calibration batches (padding excluded)."""
    parts = []
    for x, _, w in batches:
        _, _, caches = model.forward(x, np.zeros_like(x), w)
        inputs = caches[prefix][0]
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


def awq_fold_scales(work: GPT, layer: int, calib, recipe: QuantRecipe) -> None:
    """Search AWQ scales for the block's linears and fold them in."""
    c, p = work.config, f"h.{layer}"
    args = (recipe.bits, recipe.group_size, recipe.symmetric)

    def fold_into(producer: str, rows: slice, lin: str) -> None:
        s, _ = search_scales(work.params[f"{p}.{lin}.weight"], calibration_inputs(work, calib, f"{p}.{lin}"), *args)
        fold_scales(work, producer, rows, f"{p}.{lin}", s)

    if c.norm_weights:  # a norm without a gain has nothing to absorb 1/s
        fold_into(f"{p}.ln_1", slice(None), "attn.c_attn")
    fold_into(f"{p}.attn.c_attn", slice(2 * c.n_embd, 3 * c.n_embd), "attn.c_proj")  # through the values
    if c.norm_weights:
        fold_into(f"{p}.ln_2", slice(None), "mlp.c_fc")
    if c.activation == "relu":  # relu(z) / s = relu(z / s) for s > 0; GELU has no such identity
        fold_into(f"{p}.mlp.c_fc", slice(None), "mlp.c_proj")


def smooth_fold_scales(work: GPT, layer: int, calib, alpha: float = 0.5) -> None:
    """SmoothQuant: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), folded into the norms before QKV and MLP,
    moving activation outliers into the weights (which quantize per group)."""
    if not work.config.norm_weights:
        raise ValueError("SmoothQuant folds its scales into the norms' gains; this model's norms have none")
    p = f"h.{layer}"
    for norm, lin in (("ln_1", "attn.c_attn"), ("ln_2", "mlp.c_fc")):
        x_max = np.abs(calibration_inputs(work, calib, f"{p}.{lin}")).max(axis=0)
        w_max = np.abs(work.params[f"{p}.{lin}.weight"]).max(axis=0)
        s = np.maximum(x_max, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
        fold_scales(work, f"{p}.{norm}", slice(None), f"{p}.{lin}", s.astype(np.float32))


def quantize_per_token(x: np.ndarray, bits: int = 8) -> np.ndarray:
    """Dynamic symmetric per-token quantization of activations (..., C), returned dequantized."""
    levels = 2 ** (bits - 1) - 1
    scale = np.abs(x).max(axis=-1, keepdims=True) / levels
    safe = np.where(scale == 0, 1, scale)
    return np.clip(np.round(x / safe), -levels, levels) * safe


def quantize_model(model: GPT, recipe: QuantRecipe, calib=None, rotation_steps: int = 100) -> QuantizedGPT:
    """Quantize the block linears of a float model. GPTQ needs `calib`, a list of (inputs, targets, weights)
    batches; its layers are done in forward order, each calibrated on the outputs of the already-quantized
    layers before it. With a rotation the model is rotated first (quant.rotation); the quantized model then
    has the rotated architecture (gain-free RMSNorm, untied lm_head), which computes the same function."""
    check_recipe(model.config, recipe)
    if recipe.method not in ("rtn", "gptq", "awq", "smoothquant"):
        raise ValueError(f"{recipe.method} trains the model first: use pocketgpt.quant.qat")
    if (recipe.method in ("gptq", "awq", "smoothquant") or recipe.rotation == "learned") and not calib:
        raise ValueError(f"{recipe.label.upper()} needs calibration batches")
    if recipe.rotation == "hadamard":
        model = hadamard_rotate(model)[0]
    elif recipe.rotation == "learned":
        model = learn_rotation(model, recipe, calib, steps=rotation_steps)[0]
    config = model.config
    work = GPT(config, {k: v.copy() for k, v in model.params.items()}, dtype=np.float32)
    qweights = {}
    for name in quantized_names(config):
        prefix = name.removesuffix(".weight")
        layer = int(name.split(".")[1])
        if recipe.method in ("rtn", "smoothquant"):
            if recipe.method == "smoothquant" and prefix.endswith("attn.c_attn"):
                smooth_fold_scales(work, layer, calib)
            q = quantize_groups(work.params[name], recipe.bits, recipe.group_size, recipe.symmetric)
        elif recipe.method == "gptq":
            h = hessian(calibration_inputs(work, calib, prefix))
            q = gptq_quantize(work.params[name], h, recipe.bits, recipe.group_size, recipe.symmetric,
                              recipe.damp, recipe.act_order)
        else:
            if prefix.endswith("attn.c_attn"):  # a new block: fold its scales in before quantizing any of it
                awq_fold_scales(work, layer, calib, recipe)
            ones = np.ones(work.params[name].shape[1], np.float32)  # the scales are folded in already
            q, _ = awq_quantize(work.params[name], calibration_inputs(work, calib, prefix), recipe.bits,
                                recipe.group_size, recipe.symmetric, scales=ones)
        qweights[name] = q
        work.params[name][...] = q.dequantize()  # later layers calibrate on the quantized earlier ones
    floats = {k: v for k, v in work.params.items() if k not in qweights}  # AWQ changed norms and biases
    return QuantizedGPT(config, floats, qweights, recipe, dtype=model.dtype)
