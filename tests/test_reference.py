"""The reference engine: its autograd against finite differences, and microgpt's published run."""

from __future__ import annotations

import math
import random

import pytest

from pocketgpt import reference
from pocketgpt.reference import Value

# microgpt.py (Karpathy's gist) run with num_steps = 20 on names.txt: its losses printed with repr().
MICROGPT_20_STEP_LOSSES = [3.3659669475848504, 3.4242727838717717, 3.1775778689839966, 3.0694754014077628,
                           3.225968038718591, 2.9733895136754294, 3.3074609142446727, 3.3192663081782916,
                           2.945580229236262, 3.232530084610307]
MICROGPT_20_STEP_SAMPLES = ["orhx", "pdi", "zoqnadn", "kdri", "zueiia", "oas", "hry", "qdi", "clyl", "hyin",
                            "xqle", "g", "o", "hren", "w", "pilm", "uqai", "ael", "sn", "jare"]


def test_value_ops_match_finite_differences():
    def f(a, b):
        return ((a * b + a**2) / (b - 0.3)).exp().log() * (-a).relu() + (a * 3.0).relu() - 1 / b

    a0, b0, h = 0.7, 1.9, 1e-6
    a, b = Value(a0), Value(b0)
    out = f(a, b)
    out.backward()
    def at(x, y):
        return f(Value(x), Value(y)).data

    da = (at(a0 + h, b0) - at(a0 - h, b0)) / (2 * h)
    db = (at(a0, b0 + h) - at(a0, b0 - h)) / (2 * h)
    assert math.isclose(a.grad, da, rel_tol=1e-7) and math.isclose(b.grad, db, rel_tol=1e-7)


def test_backward_of_a_deep_graph_has_no_recursion_limit():
    x = Value(1.0)
    y = x
    for _ in range(50_000):
        y = y * 1.0 + 0.0
    y.backward()
    assert x.grad == 1.0


def test_gradient_of_a_shared_node_is_summed():
    x = Value(3.0)
    y = x * x + x  # dy/dx = 2x + 1
    y.backward()
    assert x.grad == 7.0


def test_reproduces_microgpt_bit_for_bit():
    """Same losses as microgpt (exact floats) and the same samples, for a 20-step run with seed 42."""
    losses, samples = reference.run(steps=20, log=lambda s: None)
    assert losses[:10] == MICROGPT_20_STEP_LOSSES
    assert samples == MICROGPT_20_STEP_SAMPLES


def test_initialization_draws_in_microgpt_order():
    rng = random.Random(0)
    params = reference.init_params(rng, vocab_size=5, n_layer=2, n_embd=4, block_size=3)
    assert list(params) == ["wte", "wpe", "lm_head", *[f"layer{i}.{n}" for i in range(2) for n in
                            ("attn_wq", "attn_wk", "attn_wv", "attn_wo", "mlp_fc1", "mlp_fc2")]]
    check = random.Random(0)
    assert params["wte"][0][0].data == check.gauss(0, 0.08)
    assert params["wte"][0][1].data == check.gauss(0, 0.08)  # row by row


def test_command_line_runs(capsys):
    assert reference.main(["--steps", "2", "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert "step    1 /    2 | loss 3.3660" in out and "sample  1:" in out


def test_command_line_rejects_bad_values():
    with pytest.raises(SystemExit) as e:
        reference.main(["--steps", "0"])
    assert e.value.code == 2


def test_runs_with_the_standard_library_only():
    """The reference must not need NumPy or anything else installed: block third-party imports and run it."""
    import subprocess
    import sys

    code = ("import sys, runpy\n"
            "for name in ('numpy', 'safetensors', 'tqdm', 'threadpoolctl'): sys.modules[name] = None\n"
            "sys.argv = ['reference', '--steps', '1', '--samples', '1']\n"
            "runpy.run_module('pocketgpt.reference', run_name='__main__')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "step    1 /    1 | loss 3.3660" in r.stdout
