"""SmoothQuant (W8A8): move activation outliers into the weights, which quantize per group.

s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) for each input channel j of the linears that read a norm (QKV and
the MLP's input), folded into that norm's gain; the weights then go to 8 bits and, at run time, their inputs
are rounded to int8 per token (the packed weights carry act_bits = 8).
"""

from __future__ import annotations

import numpy as np

from pocketgpt.errors import InputError
from pocketgpt.model import GPT
from pocketgpt.quant.calibration import BlockInputs, fold_scales

ALPHA = 0.5


def smooth_fold_scales(work: GPT, layer: int, inputs: BlockInputs, alpha: float = ALPHA) -> None:
    if not work.config.norm_weights:
        raise InputError("SmoothQuant folds its scales into the norms' gains; this model's norms have none")
    p = f"h.{layer}"
    for norm, lin in (("ln_1", "attn.c_attn"), ("ln_2", "mlp.c_fc")):
        x_max = np.abs(inputs(f"{p}.{lin}")).max(axis=0)
        w_max = np.abs(work.params[f"{p}.{lin}.weight"]).max(axis=0)
        s = np.maximum(x_max, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
        fold_scales(work, f"{p}.{norm}", slice(None), f"{p}.{lin}", s.astype(np.float32))
