"""AdamW against the reference engine's scalar Adam, schedules and clipping."""

from __future__ import annotations

import math

import numpy as np

from pocketgpt import reference
from pocketgpt.train.optim import AdamW, clip_grad_norm, lr_at


def test_adamw_without_decay_matches_reference_adam():
    rng = np.random.default_rng(0)
    start = rng.standard_normal(50)
    grads = [rng.standard_normal(50) for _ in range(5)]
    values = [reference.Value(float(v)) for v in start]
    ref = reference.Adam(values, num_steps=5)
    flat = start.copy()
    ours = AdamW(flat, beta1=reference.BETA1, beta2=reference.BETA2, eps=reference.EPS_ADAM)
    for step, g in enumerate(grads):
        for v, gi in zip(values, g):
            v.grad = float(gi)
        ref.step(step)
        ours.step(g.copy(), lr_at(step, 5, reference.LEARNING_RATE, schedule="linear"))
    np.testing.assert_allclose(flat, [v.data for v in values], rtol=1e-13, atol=1e-15)


def test_weight_decay_applies_to_masked_entries_only():
    flat = np.ones(4)
    opt = AdamW(flat, np.array([1.0, 1.0, 0.0, 0.0]), weight_decay=0.5)
    opt.step(np.zeros(4), lr=0.1)  # zero gradient: only decay moves parameters
    np.testing.assert_allclose(flat, [0.95, 0.95, 1.0, 1.0])


def test_schedules():
    assert lr_at(0, 100, 1.0, warmup=10) == 1 / 11
    assert lr_at(10, 100, 1.0, warmup=10, min_lr=0.1) == 1.0
    assert math.isclose(lr_at(100, 100, 1.0, warmup=10, min_lr=0.1), 0.1)
    assert math.isclose(lr_at(55, 100, 1.0, warmup=10, min_lr=0.0), 0.5)  # cosine midpoint
    assert lr_at(25, 100, 0.01, schedule="linear") == 0.01 * (1 - 25 / 100)  # microgpt's decay
    assert lr_at(70, 100, 0.3, schedule="constant") == 0.3


def test_clip_grad_norm():
    g = np.array([3.0, 4.0])
    assert clip_grad_norm(g, 1.0) == 5.0
    np.testing.assert_allclose(np.linalg.norm(g), 1.0, rtol=1e-6)
    h = np.array([0.3, 0.4])
    clip_grad_norm(h, 1.0)
    np.testing.assert_array_equal(h, [0.3, 0.4])


def test_state_round_trip():
    flat = np.zeros(3)
    a = AdamW(flat)
    a.step(np.ones(3), 0.1)
    arrays, scalars = a.state()
    b = AdamW(np.zeros(3))
    b.load_state({k: v.copy() for k, v in arrays.items()}, scalars)
    assert b.t == 1 and np.array_equal(b.m, a.m) and np.array_equal(b.v, a.v)
