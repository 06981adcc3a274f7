"""AWQ (activation-aware weight quantization): protect the input channels that carry large activations.

For a linear layer y = W x, scaling input channel j of W by s_j and dividing x_j by s_j leaves y unchanged
but lets channel j's weights use more of the quantization grid. AWQ takes s = mean|x|^alpha (normalized so
that max(s) * min(s) = 1), searches alpha over a grid of 20 values in [0, 1) (alpha = 0 is plain RTN) by
the layer's output error on calibration inputs, and folds 1/s into the operation that produces x (a
norm's gain and bias, or the value projection before attention). Then each (row, group)'s range is
clipped to the ratio in CLIP_GRID that minimizes that group's output error, and the result is quantized
to nearest. `awq_fold_scales` does the search and the folding for one block of a model.
"""

from __future__ import annotations

import numpy as np

from pocketgpt.formats.groups import (
    GroupQuantized,
    check_format,
    group_params,
    pack_bits,
    quantize_codes,
    quantize_groups,
)
from pocketgpt.model import GPT
from pocketgpt.quant.calibration import BlockInputs, fold_scales

ALPHAS = np.arange(20) / 20  # 0, 0.05, ..., 0.95
CLIP_GRID = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
MAX_TOKENS = 2048  # calibration tokens used in the searches


def _sample(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32).reshape(-1, x.shape[-1])
    return x[:: max(1, len(x) // MAX_TOKENS)][:MAX_TOKENS]


def search_scales(w: np.ndarray, x: np.ndarray, bits: int, group_size: int, symmetric: bool):
    """(s, alpha): the per-input-channel scales of W (out, in) that minimize ||x W^T - x Q(W s)^T / s||^2."""
    x = _sample(x)
    mean_abs = np.abs(x).mean(axis=0) + 1e-8
    y = x @ w.T
    best = (np.inf, None, None)
    for alpha in ALPHAS:
        s = mean_abs**alpha
        s = s / np.sqrt(s.max() * s.min())
        q = quantize_groups(w * s, bits, group_size, symmetric).dequantize() / s
        err = float(np.mean((x @ q.T - y) ** 2))
        if err < best[0]:
            best = (err, s.astype(np.float32), float(alpha))
    return best[1], best[2]


def search_clip(w: np.ndarray, x: np.ndarray, bits: int, group_size: int, symmetric: bool) -> np.ndarray:
    """Per-(row, group) clip ratios (out, G) minimizing each group's contribution to the output error."""
    x = _sample(x)
    out, n = w.shape
    groups = n // group_size
    xg = np.ascontiguousarray(x.reshape(len(x), groups, group_size).transpose(1, 2, 0))  # (G, gs, N)
    wg = w.reshape(out, groups, group_size).transpose(1, 0, 2)  # (G, out, gs)
    best_err = np.full((out, groups), np.inf)
    best = np.ones((out, groups), np.float32)
    for ratio in CLIP_GRID:
        q = quantize_groups(w, bits, group_size, symmetric, clip=ratio).dequantize()
        diff = wg - q.reshape(out, groups, group_size).transpose(1, 0, 2)  # (G, out, gs)
        err = np.stack([np.mean((diff[g] @ xg[g]) ** 2, axis=1) for g in range(groups)], axis=1)  # (out, G)
        better = err < best_err
        best_err[better], best[better] = err[better], ratio
    return best


def awq_quantize(w: np.ndarray, x: np.ndarray, bits: int = 4, group_size: int = 64, symmetric: bool = True,
                 scales: np.ndarray | None = None) -> tuple[GroupQuantized, np.ndarray]:
    """Quantize W (out, in) given its inputs x: returns (Q of W * s, s); the effective weight is Q / s.

    Pass scales=np.ones(in) where 1/s cannot be folded into the producer of x (then only clipping applies).
    """
    w = np.asarray(w, np.float32)
    check_format(bits, group_size, w.shape[1])
    s = search_scales(w, x, bits, group_size, symmetric)[0] if scales is None else scales
    ws = w * s
    clip = search_clip(ws, np.asarray(x, np.float32).reshape(-1, w.shape[1]) / s, bits, group_size, symmetric)
    params, zeros = group_params(ws, bits, group_size, symmetric, clip)
    codes = quantize_codes(ws, params, zeros, bits)
    return GroupQuantized(pack_bits(codes, bits), params, zeros, w.shape, bits, group_size), s


def awq_fold_scales(work: GPT, layer: int, inputs: BlockInputs, bits: int, group_size: int, symmetric: bool) -> None:
    """Search AWQ scales for block `layer`'s linears on their calibration inputs and fold them in wherever the
    producer of a linear's input can absorb 1/s exactly."""
    c, p = work.config, f"h.{layer}"
    q_size, kv_size = c.qkv_sizes

    def fold_into(producer: str, rows: slice, lin: str) -> None:
        x = inputs(f"{p}.{lin}")
        s, _ = search_scales(work.params[f"{p}.{lin}.weight"], x, bits, group_size, symmetric)
        fold_scales(work, producer, rows, f"{p}.{lin}", s)

    if c.norm_weights:  # a norm without a gain has nothing to absorb 1/s
        fold_into(f"{p}.ln_1", slice(None), "attn.c_attn")
    if c.n_kv == c.n_head:  # through the values; with shared value heads one scale would serve several columns
        fold_into(f"{p}.attn.c_attn", slice(q_size + kv_size, q_size + 2 * kv_size), "attn.c_proj")
    if c.norm_weights:
        fold_into(f"{p}.ln_2", slice(None), "mlp.c_fc")
    if c.activation == "relu":  # relu(z) / s = relu(z / s) for s > 0; GELU has no such identity
        fold_into(f"{p}.mlp.c_fc", slice(None), "mlp.c_proj")
    elif c.activation == "swiglu":  # silu(gate) * up / s = silu(gate) * (up / s): through the up rows
        fold_into(f"{p}.mlp.c_fc", slice(c.ffn, 2 * c.ffn), "mlp.c_proj")
