"""GPTQ for one linear layer: quantize W column by column, pushing each column's rounding error onto the
columns not yet quantized, weighted by the inverse Hessian of the layer's squared output error.

For y = W x with calibration inputs X (n_in, N), the output error ||(W - Q) X||^2 has Hessian
H = 2 X X^T / N. With U the upper Cholesky factor of H^-1 (H^-1 = U^T U), quantizing column j with
error e_j = (w_j - q_j) / U[j, j] is compensated by w_k -= e_j * U[j, k] for every later column k.
Columns are processed in blocks of 128 (the updates inside a block first, then one matrix product for
the rest). Group scales come from the error-updated weights when a group starts; with act_order the
columns go in order of decreasing H[j, j] and the groups' scales are fixed up front from W (so that the
stored groups stay contiguous in the original column order).
"""

from __future__ import annotations

import numpy as np

from pocketgpt.formats.groups import GroupQuantized, check_format, group_params, pack_bits, quantize_codes


def hessian(x: np.ndarray) -> np.ndarray:
    """H = 2 X X^T / N from inputs x (N, n_in), in float64."""
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return 2.0 * (x.T @ x) / x.shape[0]


def inverse_cholesky(h: np.ndarray, damp: float) -> tuple[np.ndarray, float]:
    """Upper U with U^T U = (H + lambda I)^-1, lambda = damp * mean(diag H), raised x10 until H is positive definite."""
    n = h.shape[0]
    lam = damp * float(np.mean(np.diag(h)))
    for _ in range(8):
        try:
            lower = np.linalg.cholesky(h + lam * np.eye(n))
            inv = np.linalg.inv(lower)  # L^-1, so H^-1 = L^-T L^-1
            return np.linalg.cholesky(inv.T @ inv).T, lam
        except np.linalg.LinAlgError:
            lam = max(lam * 10, 1e-8)
    raise np.linalg.LinAlgError("the Hessian stays singular even with heavy dampening")


def gptq_quantize(w: np.ndarray, h: np.ndarray, bits: int = 4, group_size: int = 64, symmetric: bool = True,
                  damp: float = 0.01, act_order: bool = False, block: int = 128) -> GroupQuantized:
    """Quantize w (out, in) against the Hessian h (in, in) of its inputs."""
    w = np.array(w, dtype=np.float64)
    out, n = w.shape
    check_format(bits, group_size, n)
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) == 0  # inputs that are always zero: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(n)
    n_groups = n // group_size
    scales = np.zeros((out, n_groups), np.float16)
    zeros = None if symmetric else np.zeros((out, n_groups), np.uint8)
    if act_order:
        scales, zeros = group_params(w, bits, group_size, symmetric)
    u, _ = inverse_cholesky(h[np.ix_(order, order)], damp)
    wp = w[:, order]  # columns in processing order
    codes = np.zeros((out, n), np.uint8)
    for b0 in range(0, n, block):
        b1 = min(b0 + block, n)
        err = np.zeros((out, b1 - b0))
        for i in range(b0, b1):
            col = order[i]
            g = col // group_size
            if not act_order and col % group_size == 0:  # a group starts: scales from the updated weights
                s, z = group_params(wp[:, i:i + group_size], bits, group_size, symmetric)
                scales[:, g] = s[:, 0]
                if zeros is not None:
                    zeros[:, g] = z[:, 0]
            z_g = None if zeros is None else zeros[:, g:g + 1]
            q = quantize_codes(wp[:, i:i + 1], scales[:, g:g + 1], z_g, bits)  # (out, 1)
            codes[:, col] = q[:, 0]
            offset = 2 ** (bits - 1) if z_g is None else z_g[:, 0].astype(np.float64)
            dq = (q[:, 0].astype(np.float64) - offset) * scales[:, g].astype(np.float64)
            e = (wp[:, i] - dq) / u[i, i]
            wp[:, i + 1:b1] -= np.outer(e, u[i, i + 1:b1])
            err[:, i - b0] = e
        wp[:, b1:] -= err @ u[b0:b1, b1:]
    return GroupQuantized(pack_bits(codes, bits), scales, zeros, (out, n), bits, group_size)
