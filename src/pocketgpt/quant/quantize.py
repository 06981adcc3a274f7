"""The one entry point for quantizing a model: `quantize(model, recipe, dataset, ...)`, used by the CLI's
quantize and quant-report and by Python callers alike.

The four linear layers of every block (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) are quantized;
embeddings, norms and biases stay float, as GPTQ and AWQ do. The result is a GPT whose block linears are
packed (pocketgpt.formats); it runs forward only (eval, sampling, serving).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from pocketgpt.errors import InputError
from pocketgpt.model import GPT, linear_names
from pocketgpt.quant.awq import awq_fold_scales, awq_quantize
from pocketgpt.quant.calibration import BlockInputs, calibration_batches
from pocketgpt.quant.gptq import gptq_quantize, hessian
from pocketgpt.quant.qat import QAT_LR, ZEROQAT_LR, qat, qat_settings, zeroqat
from pocketgpt.quant.recipe import QuantRecipe, check_recipe, rtn_packer
from pocketgpt.quant.rotation import hadamard_rotate, learn_rotation
from pocketgpt.quant.smoothquant import smooth_fold_scales
from pocketgpt.train import Dataset, default_workers

CALIB_SEQUENCES = 128
FINE_TUNE_STEPS = 200
MAX_CONTEXT = 512  # tokens per calibration or fine-tuning window, at most (a real model's context is far longer)


def quantize(model: GPT, recipe: QuantRecipe, dataset: Dataset | None = None, *, calib: int = CALIB_SEQUENCES,
             seed: int = 0, steps: int = FINE_TUNE_STEPS, lr: float | None = None,
             progress: Callable[[int, int], None] | None = None) -> GPT:
    """A quantized copy of a float model.

    dataset: what calibrating (GPTQ, AWQ, SmoothQuant, a learned rotation) and fine-tuning (QAT, ZeroQAT)
    read: `calib` training sequences drawn with `seed`, or `steps` fine-tuning steps at `lr` (QAT_LR or
    ZEROQAT_LR by default); a learned rotation takes `steps` Cayley steps. Windows hold the model's context,
    at most MAX_CONTEXT tokens. progress(done, total) reports layers quantized or steps taken.
    """
    window = min(model.config.block_size, MAX_CONTEXT)
    if model.packed:
        raise InputError("the model is already quantized; quantize its float checkpoint")
    check_recipe(model.config, recipe)
    needs_data = recipe.calibrated or recipe.method in ("qat", "zeroqat")
    if needs_data and dataset is None:
        verb = "fine-tune" if recipe.method.endswith("qat") else "calibrate"
        raise InputError(f"{recipe.label} needs data to {verb} on")

    def on_step(info: dict) -> None:
        if progress is not None:
            progress(info["step"], steps)

    if recipe.method == "qat":
        settings = replace(qat_settings(steps, lr or QAT_LR, seed, default_workers(model.num_params)), context=window)
        return qat(model, recipe, dataset, settings, on_step)
    if recipe.method == "zeroqat":
        return zeroqat(model, recipe, dataset, steps=steps, lr=lr or ZEROQAT_LR, seed=seed, context=window,
                       on_step=on_step)
    batches = calibration_batches(dataset, calib, window, seed) if recipe.calibrated else None
    if recipe.rotation == "hadamard":
        model = hadamard_rotate(model, seed)[0]
    elif recipe.rotation == "learned":
        model = learn_rotation(model, recipe, batches, steps=steps, seed=seed, on_step=on_step)[0]
    return quantize_weights(model, replace(recipe, rotation="none"), batches, progress)


def quantize_weights(model: GPT, recipe: QuantRecipe, calib=None,
                     progress: Callable[[int, int], None] | None = None) -> GPT:
    """Quantize the block linears of a float model with a post-training method (rtn, gptq, awq, smoothquant).
    Layers are done in forward order, each calibrated on the outputs of the already-quantized layers before it."""
    if recipe.rotation != "none":
        raise InputError("a rotation is applied before quantizing: use quantize()")
    check_recipe(model.config, recipe)
    if recipe.method in ("gptq", "awq", "smoothquant") and not calib:
        raise InputError(f"{recipe.label} needs calibration batches")
    work = GPT(model.config, {k: v.copy() for k, v in model.params.items()}, dtype=np.float32)
    pack = rtn_packer(recipe)
    r = recipe
    packed = {}
    inputs = BlockInputs(work, calib) if calib else None
    names = linear_names(model.config)
    for done, name in enumerate(names, 1):
        prefix = name.removesuffix(".weight")
        layer = int(name.split(".")[1])
        if r.method in ("rtn", "smoothquant"):
            if r.method == "smoothquant" and prefix.endswith("attn.c_attn"):
                smooth_fold_scales(work, layer, inputs)
            q = pack(work.params[name])
        elif r.method == "gptq":
            h = hessian(inputs(prefix))
            q = gptq_quantize(work.params[name], h, r.bits, r.group_size, r.symmetric, r.damp, r.act_order)
        elif r.method == "awq":
            if prefix.endswith("attn.c_attn"):  # a new block: fold its scales in before quantizing any of it
                awq_fold_scales(work, layer, inputs, r.bits, r.group_size, r.symmetric)
            ones = np.ones(work.params[name].shape[1], np.float32)  # the scales are folded in already
            q, _ = awq_quantize(work.params[name], inputs(prefix), r.bits, r.group_size,
                                r.symmetric, scales=ones)
        else:
            raise InputError(f"{r.method} fine-tunes first: use quantize()")
        packed[name] = q
        work.params[name][...] = q.dequantize()  # later layers calibrate on the quantized earlier ones
        if progress is not None:
            progress(done, len(names))
    floats = {k: v for k, v in work.params.items() if k not in packed}  # AWQ changed norms and biases
    return GPT(model.config, floats, dtype=model.dtype, packed=packed)
