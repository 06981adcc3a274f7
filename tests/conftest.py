"""Shared test helpers: central finite differences in float64, small model configurations, a small trained
model, a server on a free local port, and a headless browser."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import threading
import time

import numpy as np
import pytest

from pocketgpt.config import PRESETS
from pocketgpt.model import GPT
from pocketgpt.train import TRAIN_DEFAULTS, Batches, evaluate, load_dataset, train

FD_EPS = 1e-6  # central difference step; with float64 the truncation + rounding error is ~1e-9 relative


def numerical_grad(f, x: np.ndarray, eps: float = FD_EPS) -> np.ndarray:
    """d f() / d x by central differences, perturbing x in place one element at a time."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def assert_close(actual, expected, rtol: float, what: str = "") -> None:
    """Max-abs error relative to the largest expected magnitude must be below rtol."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = max(np.abs(expected).max(), 1e-12)
    err = np.abs(actual - expected).max() / scale
    assert err < rtol, f"{what}: relative error {err:.3e} >= {rtol:.0e}"


@pytest.fixture
def tiny_configs():
    """Both presets shrunk to a size where finite differences over every parameter are quick."""
    small = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8)
    return {
        "microgpt": PRESETS["microgpt"].replace(**small),
        "shakespeare-cpu": PRESETS["shakespeare-cpu"].replace(**small),
        "biased-rmsnorm-weights": PRESETS["microgpt"].replace(**small, bias=True, norm_weights=True,
                                                               activation="gelu", tie_embeddings=True),
        "layernorm-bias": PRESETS["shakespeare-cpu"].replace(**small, bias=True, embed_norm=True),
        "gpt2": PRESETS["gpt2"].replace(**small),
        "llama-gqa": PRESETS["smollm2-135m"].replace(**{**small, "n_head": 4}, n_kv_head=2, ffn_size=12),
        "llama-mqa-untied": PRESETS["smollm2-135m"].replace(**small, n_kv_head=1, ffn_size=10, tie_embeddings=False),
        "llama-deep-preset": PRESETS["shakespeare-deep"].replace(vocab_size=11, block_size=8, n_layer=2, n_embd=12,
                                                                 n_head=3, n_kv_head=1, ffn_size=6),
    }


@pytest.fixture(scope="session")
def trained():
    """A small shakespeare-cpu model trained for 200 steps, 4 calibration batches, its validation loss."""
    ds = load_dataset("shakespeare")
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=ds.tokenizer.vocab_size, n_layer=2, n_embd=64)
    model = GPT(config, seed=0)
    train(model, ds, dataclasses.replace(TRAIN_DEFAULTS["shakespeare-cpu"], steps=200, eval_interval=0, warmup=20))
    calib = Batches(ds, 16, config.block_size, seed=1)
    return model, ds, [calib.next() for _ in range(4)], evaluate(model, ds)


class Served:
    """A uvicorn server on a free local port, in a thread: the OpenAI-compatible app over `engine`, or `app`."""

    def __init__(self, engine=None, app=None, access=None):
        import openai
        import uvicorn

        from pocketgpt.serve.server import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.engine = engine
        self.server = uvicorn.Server(uvicorn.Config(app or create_app(engine, access), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def browser_or_skip():
    """A headless Chromium driven by Selenium (Debian's chromium and chromium-driver); skipped without them,
    except where POCKETGPT_BROWSER_TESTS=required (.ci/run), where it fails."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
        if os.environ.get("POCKETGPT_BROWSER_TESTS") == "required":
            pytest.fail(f"chromium ({CHROMIUM}) and chromedriver ({DRIVER}) are required here")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must not try to download a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(DRIVER))


def until(condition, timeout=30.0, every=0.01):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)
    return value


@pytest.fixture
def float_activations():
    """Products with llama.cpp's blocks take activations as they are during the test (no 8-bit rounding for integer
    dot products: pocketgpt.kernels.int8_dots), so that they compare with a float reference."""
    from pocketgpt import kernels

    before = kernels.int8_dots()
    kernels.set_int8_dots(False)
    yield
    kernels.set_int8_dots(before)


@pytest.fixture
def int8_activations():
    """Integer dot products on during the test (skipped where the machine has no AVX2)."""
    from pocketgpt import kernels
    from pocketgpt.kernels import interleaved

    if not interleaved.HOST_AVX2:
        pytest.skip("the integer-dot kernels run on AVX2 only")
    before = kernels.int8_dots()
    kernels.set_int8_dots(True)
    yield
    kernels.set_int8_dots(before)
