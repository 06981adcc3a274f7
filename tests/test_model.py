"""The NumPy GPT: agreement with the reference engine, finite differences, KV cache, batching."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import assert_close, numerical_grad

from pocketgpt import reference
from pocketgpt.config import PRESETS, GPTConfig, preset
from pocketgpt.model import GPT, param_shapes
from pocketgpt.train.reproduce import params_from_reference

REF_RTOL = 1e-9  # float64 engine vs scalar reference: same math, different summation order


@pytest.mark.parametrize("doc", ["emma", "christopherjohnson"])  # the second is cut at block_size
def test_float64_engine_matches_reference_logits_loss_and_every_gradient(doc):
    rng = random.Random(7)
    ref = reference.init_params(rng, vocab_size=27)
    config = PRESETS["microgpt"].replace(vocab_size=27)
    model = GPT(config, params_from_reference(ref, config), dtype=np.float64)
    tokens = [26] + [ord(c) - ord("a") for c in doc] + [26]

    ref_loss, ref_logits = reference.document_loss(ref, tokens)
    ref_loss.backward()
    n = min(config.block_size, len(tokens) - 1)
    x, y = np.array([tokens[:n]]), np.array([tokens[1:n + 1]])
    logits, loss, caches = model.forward(x, y)
    flat, grads = model.new_grads()
    model.backward(caches, grads)

    assert abs(loss - ref_loss.data) / ref_loss.data < REF_RTOL
    assert_close(logits[0], [[v.data for v in row] for row in ref_logits], REF_RTOL, "logits")
    ref_grads = params_from_reference(
        {k: [[reference.Value(p.grad) for p in row] for row in m] for k, m in ref.items()}, config)
    for name in param_shapes(config):
        assert_close(grads[name], ref_grads[name], REF_RTOL, name)


def test_every_parameter_gradient_matches_finite_differences(tiny_configs):
    rng = np.random.default_rng(1)
    for label, config in tiny_configs.items():
        model = GPT(config, dtype=np.float64, seed=3)
        for p in model.params.values():  # move gains and biases away from 1 and 0 so they are tested
            p += rng.standard_normal(p.shape) * 0.1
        x = rng.integers(0, config.vocab_size, (2, 6))
        y = rng.integers(0, config.vocab_size, (2, 6))
        w = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], np.float64)  # padding mask
        _, grad = model.loss_and_grad(x, y, w)
        grad = grad.copy()
        numeric = numerical_grad(lambda m=model, x=x, y=y, w=w: m.forward(x, y, w)[1], model.flat)
        assert_close(grad, numeric, 1e-6, label)


def test_padded_batch_equals_documents_one_by_one():
    config = PRESETS["microgpt"].replace(vocab_size=10)
    model = GPT(config, dtype=np.float64, seed=0)
    docs = [np.array([9, 1, 2, 3, 9]), np.array([9, 4, 9])]
    per_doc = [model.loss_and_grad(d[None, :-1], d[None, 1:]) for d in docs]
    losses = [loss for loss, _ in per_doc]
    x = np.array([[9, 1, 2, 3], [9, 4, 9, 9]])
    y = np.array([[1, 2, 3, 9], [4, 9, 9, 9]])
    w = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float64)
    loss, _ = model.loss_and_grad(x, y, w)
    assert abs(loss - (losses[0] * 4 + losses[1] * 2) / 6) < 1e-12


def test_worker_threads_give_the_same_loss_and_gradient():
    config = preset("shakespeare-cpu").replace(n_layer=2)
    model = GPT(config, dtype=np.float64, seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 65, (6, 32)), rng.integers(0, 65, (6, 32))
    loss1, g1 = model.loss_and_grad(x, y, workers=1)
    g1 = g1.copy()
    loss2, g2 = model.loss_and_grad(x, y, workers=2)
    assert abs(loss1 - loss2) < 1e-12
    np.testing.assert_allclose(g2, g1, rtol=0, atol=1e-12)


def test_outputs_at_the_last_positions_give_the_full_loss_gradient_and_logits(tiny_configs):
    rng = np.random.default_rng(4)
    for label, config in tiny_configs.items():
        model = GPT(config, dtype=np.float64, seed=5)
        x = rng.integers(0, config.vocab_size, (3, 7))
        y = rng.integers(0, config.vocab_size, (3, 7))
        w = np.zeros((3, 7))
        w[:, 5:] = 1  # only the last two positions count
        full_loss, g_full = model.loss_and_grad(x, y, w)
        g_full = g_full.copy()
        loss, grad = model.loss_and_grad(x, y, w, outputs=2)
        assert abs(loss - full_loss) < 1e-12, label
        np.testing.assert_allclose(grad, g_full, rtol=0, atol=1e-12, err_msg=label)
        logits = model.forward(x, outputs=2)[0]
        np.testing.assert_allclose(logits, model.forward(x)[0][:, 5:], rtol=0, atol=1e-12, err_msg=label)
        with pytest.raises(ValueError, match="carry weight"):
            model.forward(x, y, np.ones((3, 7)), outputs=2)


@pytest.mark.parametrize("name", list(PRESETS))
def test_cached_decoding_gives_the_same_logits_as_a_full_forward(name):
    config = PRESETS[name].replace(vocab_size=20, block_size=12, n_layer=2, n_head=4, n_embd=32,
                                   n_kv_head=2 if PRESETS[name].n_kv_head else 0)
    model = GPT(config, dtype=np.float64, seed=2)
    tokens = np.random.default_rng(0).integers(0, 20, (2, 12))
    full, _, _ = model.forward(tokens)
    cache = model.new_cache(batch=2)
    prefill = model.forward_cached(tokens[:, :5], cache)
    steps = [model.forward_cached(tokens[:, t:t + 1], cache) for t in range(5, 12)]
    np.testing.assert_allclose(np.concatenate([prefill, *steps], axis=1), full, rtol=0, atol=1e-12)


def test_float32_is_the_default_and_float64_on_request():
    config = PRESETS["microgpt"]
    assert GPT(config).flat.dtype == np.float32
    assert GPT(config, dtype=np.float64).flat.dtype == np.float64


def test_parameter_names_follow_gpt2():
    names = param_shapes(PRESETS["shakespeare-cpu"])
    assert "h.0.attn.c_attn.weight" in names and names["h.0.attn.c_attn.weight"] == (384, 128)
    assert "ln_f.weight" in names and "lm_head.weight" not in names  # tied


def test_config_rejects_bad_values_and_presets_match_exactly():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="norm must be"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("Microgpt")
    c = preset("shakespeare-cpu")
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size) == (4, 4, 128, 64)
    assert GPTConfig.from_dict(c.to_dict()) == c


def test_loading_params_checks_names_and_shapes():
    model = GPT(PRESETS["microgpt"])
    params = {k: v.copy() for k, v in model.params.items()}
    params["wte.weight"] = params["wte.weight"][:, :3]
    with pytest.raises(ValueError, match="wte.weight has shape"):
        model.load_params(params)
    del params["wte.weight"]
    with pytest.raises(ValueError, match="missing"):
        model.load_params(params)
