"""Every layer's backward against central finite differences of its forward, in float64.

Tolerance: 1e-6 relative to the largest gradient entry (finite differences with step 1e-6 in float64
are accurate to ~1e-9; the margin absorbs the kinks of ReLU, which the inputs avoid).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close, numerical_grad

from pocketgpt.model import layers

RTOL = 1e-6
rng = np.random.default_rng(0)


def check(forward, backward, inputs: dict, extra=()):
    """forward(**inputs) -> (out, cache); compare backward(dout, cache) with d sum(out * dout)."""
    out, cache = forward(**inputs)
    dout = rng.standard_normal(out.shape)
    analytic = backward(dout, cache)

    def f():
        return float((forward(**inputs)[0] * dout).sum())

    for name, grad in analytic.items():
        assert_close(grad, numerical_grad(f, inputs[name]), RTOL, name)


def test_linear_with_bias():
    def bwd(dy, cache):
        dx, dw, db = layers.linear_backward(dy, cache)
        return {"x": dx, "w": dw, "b": db}

    check(layers.linear_forward, bwd, {"x": rng.standard_normal((2, 3, 5)), "w": rng.standard_normal((4, 5)),
                                       "b": rng.standard_normal(4)})


@pytest.mark.parametrize("with_weight", [True, False])
def test_rmsnorm(with_weight):
    inputs = {"x": rng.standard_normal((2, 3, 6)), "w": rng.standard_normal(6) if with_weight else None,
              "eps": 1e-5}

    def bwd(dy, cache):
        dx, dw = layers.rmsnorm_backward(dy, cache)
        return {"x": dx, **({"w": dw} if with_weight else {})}

    check(layers.rmsnorm_forward, bwd, inputs)


def test_layernorm_with_weight_and_bias():
    inputs = {"x": rng.standard_normal((2, 3, 6)), "w": rng.standard_normal(6), "b": rng.standard_normal(6),
              "eps": 1e-5}

    def bwd(dy, cache):
        dx, dw, db = layers.layernorm_backward(dy, cache)
        return {"x": dx, "w": dw, "b": db}

    check(layers.layernorm_forward, bwd, inputs)


def test_layernorm_without_bias():
    def bwd(dy, cache):
        dx, dw, db = layers.layernorm_backward(dy, cache)
        assert db is None
        return {"x": dx, "w": dw}

    check(layers.layernorm_forward, bwd, {"x": rng.standard_normal((4, 6)), "w": rng.standard_normal(6),
                                          "b": None, "eps": 1e-5})


@pytest.mark.parametrize("name", ["relu", "gelu"])
def test_activation(name):
    fwd, bwd = layers.ACTIVATION[name]
    x = rng.standard_normal((3, 7))
    x[np.abs(x) < 1e-3] = 0.5  # keep finite differences away from ReLU's kink
    check(fwd, lambda dy, cache: {"x": bwd(dy, cache)}, {"x": x})


def test_gelu_is_gpt2_tanh_approximation():
    x = np.linspace(-4, 4, 17)
    expected = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(layers.gelu_forward(x)[0], expected, rtol=1e-14)


@pytest.mark.parametrize("n_kv", [4, 2, 1])  # multi-head, grouped-query, multi-query
def test_attention(n_kv):
    q = rng.standard_normal((2, 4, 5, 3))
    k, v = rng.standard_normal((2, n_kv, 5, 3)), rng.standard_normal((2, n_kv, 5, 3))

    def bwd(dy, cache):
        dq, dk, dv = layers.attention_backward(dy, cache)
        return {"q": dq, "k": dk, "v": dv}

    check(lambda q, k, v: layers.attention_forward(q, k, v, layers.causal_mask(5, 5, np.float64)), bwd,
          {"q": q, "k": k, "v": v})


def test_grouped_query_attention_equals_heads_repeated():
    """Query head h reads key/value head h // (nh / nkv): the same as multi-head attention over repeated heads."""
    q, k, v = rng.standard_normal((2, 6, 4, 3)), rng.standard_normal((2, 2, 4, 3)), rng.standard_normal((2, 2, 4, 3))
    mask = layers.causal_mask(4, 4, np.float64)
    grouped, _ = layers.attention_forward(q, k, v, mask)
    repeated, _ = layers.attention_forward(q, k.repeat(3, axis=1), v.repeat(3, axis=1), mask)
    np.testing.assert_allclose(grouped, repeated, rtol=1e-13)


def test_attention_asked_at_the_last_positions_only():
    q, k, v = rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 5, 4))
    full, _ = layers.attention_forward(q, k, v, layers.causal_mask(5, 5, np.float64))
    tail, _ = layers.attention_forward(q[:, :, 3:], k, v, layers.causal_mask(2, 5, np.float64))
    np.testing.assert_allclose(tail, full[:, :, 3:], rtol=1e-12)  # the same rows, computed alone


def test_attention_is_causal():
    q, k, v = rng.standard_normal((1, 2, 6, 2)), rng.standard_normal((1, 2, 6, 2)), rng.standard_normal((1, 2, 6, 2))
    mask = layers.causal_mask(6, 6, np.float64)
    full, _ = layers.attention_forward(q, k, v, mask)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 4:] += 1.0  # changing positions 4 and 5 must not change outputs 0..3
    v2[:, :, 4:] += 1.0
    out, _ = layers.attention_forward(q, k2, v2, mask)
    np.testing.assert_array_equal(out[:, :, :4], full[:, :, :4])


def test_rope():
    cos, sin = layers.rope_tables(6, 4, 100.0, np.float64)
    check(lambda x: layers.rope_forward(x, cos, sin), lambda dy, c: {"x": layers.rope_backward(dy, c)},
          {"x": rng.standard_normal((2, 3, 6, 4))})


def test_rope_scores_depend_on_the_distance_only():
    """A rotation by each position's angle: |x| is kept, and q_i . k_j depends on i - j alone."""
    cos, sin = layers.rope_tables(12, 8, 10000.0, np.float64)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    rq = layers.rope_forward(np.tile(q, (1, 1, 12, 1)), cos, sin)[0][0, 0]  # one sequence, one head: (12, 8)
    rk = layers.rope_forward(np.tile(k, (1, 1, 12, 1)), cos, sin)[0][0, 0]
    np.testing.assert_allclose(np.linalg.norm(rq, axis=1), np.linalg.norm(q), rtol=1e-13)
    scores = rq @ rk.T
    for d in range(-3, 4):
        diagonal = np.diagonal(scores, offset=d)
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-10)


def test_swiglu():
    fwd, bwd = layers.ACTIVATION["swiglu"]
    check(lambda x: fwd(x), lambda dy, cache: {"x": bwd(dy, cache)}, {"x": rng.standard_normal((3, 2, 10))})
    h = rng.standard_normal((4, 6))
    gate, up = h[:, :3], h[:, 3:]
    np.testing.assert_allclose(fwd(h)[0], gate / (1 + np.exp(-gate)) * up, rtol=1e-14)


def test_embedding():
    idx = np.array([[0, 2, 2], [1, 0, 3]])
    wte, wpe = rng.standard_normal((4, 5)), rng.standard_normal((6, 5))

    def bwd(dx, cache):
        dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
        layers.embedding_backward(dx, cache, dwte, dwpe)
        return {"wte": dwte, "wpe": dwpe}

    check(lambda wte, wpe: layers.embedding_forward(idx, wte, wpe), bwd, {"wte": wte, "wpe": wpe})


def test_embedding_scatter_path_matches_onehot_path():
    idx = rng.integers(0, 3000, (2, 4))
    dx = rng.standard_normal((2, 4, 3))
    big = np.zeros((3000, 3)), np.zeros((4, 3))
    layers.embedding_backward(dx, (idx, 3000, np.arange(4)), *big)
    expected = np.zeros((3000, 3))
    for (b, t), i in np.ndenumerate(idx):
        expected[i] += dx[b, t]
    np.testing.assert_allclose(big[0], expected, rtol=1e-15)


def test_cross_entropy_with_padding_weights():
    logits = rng.standard_normal((2, 3, 5))
    targets = np.array([[1, 4, 0], [2, 2, 3]])
    weights = np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])

    def fwd(logits):
        loss, cache = layers.cross_entropy_forward(logits, targets, weights, weights.sum())
        return np.array(loss), cache

    check(fwd, lambda d, cache: {"logits": layers.cross_entropy_backward(cache) * d}, {"logits": logits})
    loss, _ = layers.cross_entropy_forward(logits, targets, weights, weights.sum())
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(logp[0, 0, 1] + logp[0, 1, 4] + logp[1, 0, 2]) / 3
    assert abs(loss - expected) < 1e-12
