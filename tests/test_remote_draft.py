"""Two-process speculative decoding: the draft service (pocketgpt.serve.draft) against a draft in process, the
remote draft over HTTP token-identical to plain decoding, its distributions carried exactly, a draft that is not
there, and bad requests."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import numpy as np
import pytest
from conftest import Served

from pocketgpt.cli import main
from pocketgpt.config import PRESETS
from pocketgpt.generate import Sampling, SpecStats, generate, make_draft, probs_from_logits, speculative_generate
from pocketgpt.model import GPT
from pocketgpt.serve.draft import DraftService, create_draft_app

GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def models():
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=7, block_size=32, n_layer=2, n_embd=32, init_std=0.5)
    return GPT(config, dtype=np.float64, seed=1), GPT(config.replace(n_layer=1), dtype=np.float64, seed=2)


@pytest.fixture(scope="module")
def served(models):
    service = DraftService(models[1], "draft")
    server = Served(app=create_draft_app(service))
    yield server, service
    server.close()


def local_greedy(draft: GPT, context: list[int], k: int) -> list[int]:
    return list(generate(draft, context, max_new_tokens=k, sampling=GREEDY))


def test_the_service_proposes_what_the_draft_would_and_drafts_ahead(models):
    _, draft = models
    service = DraftService(draft, "draft")
    held = service.held("s")
    context = [0, 1, 2, 3]
    tokens, _ = service.propose(held, context, 3, GREEDY)
    assert tokens == local_greedy(draft, context, 3)
    service.worker.submit(lambda: None).result()  # the look-ahead has run
    guess = local_greedy(draft, context + tokens, 1)  # what the target adds when it accepts everything
    following, _ = service.propose(held, context + tokens + guess, 3, GREEDY)
    assert following == local_greedy(draft, context + tokens + guess, 3) and service.hits == 1
    service.worker.submit(lambda: None).result()
    other = context + tokens[:1] + [(tokens[1] + 1) % 7]  # a rejection: the block drafted ahead does not apply
    assert service.propose(held, other, 3, GREEDY)[0] == local_greedy(draft, other, 3) and service.hits == 1
    service.worker.shutdown()


@pytest.mark.parametrize("k", [1, 4])
def test_remote_draft_over_http_is_token_identical_to_plain_decoding(models, served, k):
    target, _ = models
    server, service = served
    prompt = [0, 1, 2, 0, 1]
    stats = SpecStats()
    draft = make_draft("remote", target, url=server.url)
    got = list(speculative_generate(target, prompt, max_new_tokens=25, draft=draft, k=k, sampling=GREEDY,
                                    stats=stats))
    assert got == list(generate(target, prompt, max_new_tokens=25, sampling=GREEDY))
    assert stats.drafted > 0 and draft.failures == []
    health = json.loads(urllib.request.urlopen(f"{server.url}/health").read())
    assert health["role"] == "draft" and health["requests"] >= stats.rounds - 1


def test_distributions_cross_the_wire_exactly(models, served):
    target, draft_model = models
    server, _ = served
    sampling = Sampling(temperature=1.0, top_k=5)
    session = make_draft("remote", target, url=server.url).session()
    context = [3, 1, 4, 1, 5]
    tokens, dists = session.propose(context, 2, sampling, None)
    assert len(tokens) == 2
    logits = draft_model.forward(np.array([context + tokens[:1]]))[0][0]  # the draft's own, recomputed here
    for i, (x, q) in enumerate(zip(tokens, dists)):
        expected = probs_from_logits(logits[len(context) - 1 + i], sampling)
        np.testing.assert_allclose(q, expected, rtol=0, atol=1e-12)  # float64 sent as float64
        assert q[x] > 0


def test_a_draft_that_is_not_there_leaves_the_target_alone(models):
    target, _ = models
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    heard = []
    draft = make_draft("remote", target, url=f"http://127.0.0.1:{port}", timeout=2.0, on_failure=heard.append)
    prompt = [0, 1, 2]
    got = list(speculative_generate(target, prompt, max_new_tokens=12, draft=draft, sampling=GREEDY))
    assert got == list(generate(target, prompt, max_new_tokens=12, sampling=GREEDY))
    assert len(heard) == 1 and "goes on alone" in heard[0] and draft.failures == heard


@pytest.mark.parametrize("body, param", [({"session": "a", "context": [0, 9], "k": 2}, "context"),
                                         ({"session": "a", "context": [0], "k": 0}, "k"),
                                         ({"session": "a", "context": [0], "k": 2, "temperature": -1}, "temperature"),
                                         ({"context": [0], "k": 2}, "session")])
def test_bad_draft_requests_are_400s_naming_the_parameter(served, body, param):
    server, _ = served
    request = urllib.request.Request(f"{server.url}/v1/draft", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request)
    assert e.value.code == 400 and json.loads(e.value.read())["error"]["param"] == param


def test_a_draft_server_refuses_the_flags_that_name_another_draft(tmp_path, capsys):
    for flags in (["--draft-ngram"], ["--draft-url", "http://127.0.0.1:1"], ["--draft", "other"]):
        assert main(["serve", "no-such-model", "--role", "draft", *flags]) == 2
        err = capsys.readouterr().err
        assert "a draft server drafts with MODEL itself" in err and len(err.strip().splitlines()) == 1


def test_a_draft_that_answers_late_is_left_behind(models):
    target, draft_model = models

    class Slow(DraftService):
        def propose(self, *args):
            time.sleep(1.0)
            return super().propose(*args)

    server = Served(app=create_draft_app(Slow(draft_model, "slow")))
    try:
        draft = make_draft("remote", target, url=server.url, timeout=0.2)
        got = list(speculative_generate(target, [0, 1, 2], max_new_tokens=12, draft=draft, sampling=GREEDY))
    finally:
        server.close()
    assert got == list(generate(target, [0, 1, 2], max_new_tokens=12, sampling=GREEDY))
    assert len(draft.failures) == 1 and "timed out" in draft.failures[0]
