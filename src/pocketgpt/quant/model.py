"""Quantized models: which weights are quantized, how (RTN or GPTQ), and running them without ever
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
from pocketgpt.quant.formats import GroupQuantized, check_format, quantize_groups
from pocketgpt.quant.gptq import gptq_quantize, hessian

METHODS = ("rtn", "gptq")
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # in the order a block uses them


@dataclass(frozen=True)
class QuantRecipe:
    method: str = "rtn"
    bits: int = 4
    group_size: int = 64
    symmetric: bool = True
    act_order: bool = False  # GPTQ only
    damp: float = 0.01  # GPTQ only: dampening as a fraction of the mean Hessian diagonal

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)} (got {self.method!r})")

    def to_dict(self) -> dict:
        return asdict(self)


def quantized_names(config: GPTConfig) -> list[str]:
    return [f"h.{i}.{lin}.weight" for i in range(config.n_layer) for lin in LINEARS]


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

    @property
    def weight_bytes(self) -> int:
        """Bytes of resident weights: packed codes, scales and the float remainder."""
        return self.flat.nbytes + sum(q.nbytes for q in self.qweights.values())

    def backward(self, caches, grads) -> None:
        raise NotImplementedError("a quantized model runs forward only; fine-tune the float model instead")


def calibration_hessians(model: GPT, batches, prefix: str) -> np.ndarray:
    """H = 2 X X^T / N of the inputs that layer `prefix` sees on the calibration batches."""
    h, n = None, 0
    for x, _, w in batches:
        _, _, caches = model.forward(x, np.zeros_like(x), w)
        inputs = caches[prefix][0].reshape(-1, caches[prefix][0].shape[-1])[w.reshape(-1) > 0]
        part = hessian(inputs) * len(inputs)
        h, n = (part if h is None else h + part), n + len(inputs)
    return h / n


def quantize_model(model: GPT, recipe: QuantRecipe, calib=None) -> QuantizedGPT:
    """Quantize the block linears of a float model. GPTQ needs `calib`, a list of (inputs, targets, weights)
    batches; its layers are done in forward order, each calibrated on the outputs of the already-quantized
    layers before it."""
    config = model.config
    for name in quantized_names(config):
        check_format(recipe.bits, recipe.group_size, model.params[name].shape[1])
    if recipe.method == "gptq" and not calib:
        raise ValueError("GPTQ needs calibration batches")
    work = GPT(config, {k: v.copy() for k, v in model.params.items()}, dtype=np.float32)
    qweights = {}
    for name in quantized_names(config):
        prefix = name.removesuffix(".weight")
        if recipe.method == "rtn":
            q = quantize_groups(work.params[name], recipe.bits, recipe.group_size, recipe.symmetric)
        else:
            h = calibration_hessians(work, calib, prefix)
            q = gptq_quantize(work.params[name], h, recipe.bits, recipe.group_size, recipe.symmetric,
                              recipe.damp, recipe.act_order)
        qweights[name] = q
        work.params[name][...] = q.dequantize()  # later layers calibrate on the quantized earlier ones
    floats = {k: v for k, v in model.params.items() if k not in qweights}
    return QuantizedGPT(config, floats, qweights, recipe, dtype=model.dtype)
