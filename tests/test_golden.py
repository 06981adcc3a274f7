"""The golden run: one seeded tiny model whose greedy continuation is pinned here once, and reproduced by every
path that can run it: the reference engine, the NumPy engine (plain, batched and speculative decoding), the CLI
and the server. A change anywhere on those paths that changes what the model says fails here first.

The model is microgpt's architecture with the reference engine's own initialization (random.Random(7)), in
float64, on the names alphabet; the prompt is BOS + "em", and greedy decoding ends at BOS after 11 tokens.
"""

from __future__ import annotations

import random

import httpx
import numpy as np
import pytest
from conftest import Served

from pocketgpt import reference
from pocketgpt.cli import main
from pocketgpt.config import PRESETS
from pocketgpt.generate import Sampling, generate, generate_batch, make_draft, speculative_generate
from pocketgpt.model import GPT
from pocketgpt.serve.server import Engine
from pocketgpt.tokenizers import CharTokenizer
from pocketgpt.train import Checkpoint, save_checkpoint
from pocketgpt.train.reproduce import params_from_reference

CHARS = "abcdefghijklmnopqrstuvwxyz"
PROMPT = "em"
PINNED_IDS = [19, 6, 4, 14, 4, 14, 4, 14, 4, 14, 3]
PINNED_TEXT = "tgeoeoeoeod"
GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def golden():
    ref = reference.init_params(random.Random(7), len(CHARS) + 1)
    config = PRESETS["microgpt"].replace(vocab_size=len(CHARS) + 1)
    model = GPT(config, params_from_reference(ref, config), dtype=np.float64)
    tok = CharTokenizer(CHARS, bos=True)
    return ref, model, tok, [tok.bos, *tok.encode(PROMPT)]


def test_the_pin_is_the_text_of_its_ids(golden):
    _, _, tok, _ = golden
    assert tok.decode(PINNED_IDS) == PINNED_TEXT


def test_reference_engine(golden):
    ref, model, tok, prompt = golden
    keys, values = [[] for _ in range(model.config.n_layer)], [[] for _ in range(model.config.n_layer)]
    tokens = list(prompt)
    for pos in range(model.config.block_size):
        logits = reference.gpt(ref, tokens[pos], pos, keys, values)
        if pos == len(tokens) - 1:
            best = max(range(len(logits)), key=lambda i: logits[i].data)
            if best == tok.bos:
                break
            tokens.append(best)
    assert tokens[len(prompt):] == PINNED_IDS


def test_numpy_engine_plain_batched_and_speculative(golden):
    _, model, tok, prompt = golden
    assert list(generate(model, prompt, max_new_tokens=16, sampling=GREEDY, stop_tokens={tok.bos})) == PINNED_IDS
    assert generate_batch(model, [prompt, prompt[:1]], max_new_tokens=16, sampling=GREEDY, stop_tokens={tok.bos},
                          slots=2)[0] == PINNED_IDS
    for draft in (make_draft("ngram"), make_draft("quantized", model, group_size=16)):
        assert list(speculative_generate(model, prompt, max_new_tokens=16, draft=draft, sampling=GREEDY,
                                         stop_tokens={tok.bos})) == PINNED_IDS


def test_cli(golden, tmp_path, capsys):
    _, model, tok, _ = golden
    save_checkpoint(tmp_path / "golden", Checkpoint.of(model, tok, {"data": "names", "mode": "lines"}))
    assert main(["sample", str(tmp_path / "golden"), "--prompt", PROMPT, "--temperature", "0", "--count", "1"]) == 0
    assert capsys.readouterr().out == PROMPT + PINNED_TEXT + "\n"


def test_server(golden):
    _, model, tok, _ = golden
    s = Served(Engine(model, tok, "golden", documents=True, slots=2, max_queue=2))
    try:
        r = httpx.post(f"{s.url}/v1/completions", json={"model": "golden", "prompt": PROMPT, "max_tokens": 13,
                                                        "temperature": 0}).json()
        assert r["choices"][0]["text"] == PINNED_TEXT and r["choices"][0]["finish_reason"] == "stop"
        assert r["usage"]["completion_tokens"] == len(PINNED_IDS)
    finally:
        s.close()
