"""The OpenAI-compatible server, through the official `openai` client: completions (plain and streamed),
chat, concurrent requests that match single-request output, usage counts, disconnects that free their
slot, and OpenAI-shaped 4xx errors after which the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import openai
import pytest
from conftest import Served

from pocketgpt.generate import NGramDraft, Request, Sampling, Sequence, SpeculativeBatcher, encode_prompt, generate
from pocketgpt.serve.server import Engine
from pocketgpt.tokenizers.chat import plain_prompt as chat_prompt


@pytest.fixture(scope="module")
def served(request):
    trained = request.getfixturevalue("trained")
    model, ds, _, _ = trained
    s = Served(Engine(model, ds.tokenizer, "tiny", documents=False, slots=4, max_queue=2))
    yield s, model, ds.tokenizer
    s.close()


def greedy_text(model, tok, text: str, n: int) -> str:
    return tok.decode(generate(model, encode_prompt(tok, text, False), max_new_tokens=n,
                               sampling=Sampling(temperature=0)))


def test_models_and_health(served):
    s, _, _ = served
    assert [m.id for m in s.client.models.list()] == ["tiny"]
    assert httpx.get(f"{s.url}/health").json()["status"] == "ok"


def test_completion_equals_greedy_generation_with_usage(served):
    s, model, tok = served
    r = s.client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0)
    assert r.choices[0].text == greedy_text(model, tok, "ROMEO:", 20)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 20, 26)


def test_streamed_completion_is_the_same_text(served):
    s, model, tok = served
    pieces, reasons = [], []
    for chunk in s.client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=20, temperature=0,
                                             stream=True):
        pieces.append(chunk.choices[0].text)
        reasons.append(chunk.choices[0].finish_reason)
    assert "".join(pieces) == greedy_text(model, tok, "ROMEO:", 20)
    assert reasons[-1] == "length" and set(reasons[:-1]) == {None}
    raw = httpx.post(f"{s.url}/v1/completions", json={"model": "tiny", "prompt": "A", "max_tokens": 3,
                                                      "stream": True}).text
    assert raw.rstrip().endswith("data: [DONE]")


def test_stop_string_ends_the_text_before_it(served):
    s, model, tok = served
    full = greedy_text(model, tok, "ROMEO:", 40)
    stop = full[10:12]
    r = s.client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=40, temperature=0, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_chat_uses_the_documented_template(served):
    s, model, tok = served
    messages = [{"role": "user", "content": "Speak."}]
    assert chat_prompt(messages) == "USER:\nSpeak.\n\nASSISTANT:\n"
    r = s.client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, temperature=0)
    expected = greedy_text(model, tok, chat_prompt(messages), 20).split("\n\n")[0]
    assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in s.client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=20, temperature=0, stream=True))
    assert streamed == expected


def test_concurrent_requests_get_what_each_gets_alone(served):
    s, model, tok = served
    prompts = ["ROMEO:", "JULIET:\nO", "First Citizen", "KING", "A", "Be", "What say", "Now"]

    def ask(i: int) -> str:
        return s.client.completions.create(model="tiny", prompt=prompts[i], max_tokens=15, temperature=0.8,
                                           seed=i).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # 6 clients, 4 slots, a queue of 2
        got = list(pool.map(ask, range(len(prompts))))
    expected = [tok.decode(generate(model, encode_prompt(tok, p, False), max_new_tokens=15,
                                    sampling=Sampling(0.8, seed=i))) for i, p in enumerate(prompts)]
    assert got == expected


def test_a_client_that_disconnects_frees_its_slot(served):
    s, _, _ = served
    with httpx.stream("POST", f"{s.url}/v1/completions",
                      json={"model": "tiny", "prompt": "A", "max_tokens": 60, "stream": True}) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 10
    while s.engine.batcher.load():
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.05)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"model": "nope", "prompt": "A"}, openai.NotFoundError, "does not exist"),
    ({"model": "tiny", "prompt": "A", "max_tokens": 1000}, openai.BadRequestError, "maximum context length"),
    ({"model": "tiny", "prompt": "A", "temperature": -0.5}, openai.BadRequestError, "temperature"),
    ({"model": "tiny", "prompt": "\u00e9t\u00e9"}, openai.BadRequestError, "not in the vocabulary"),
    ({"model": "tiny", "prompt": "A", "top_p": 0}, openai.BadRequestError, "top_p"),
])
def test_bad_requests_get_openai_errors(served, kwargs, error, message):
    s, _, _ = served
    with pytest.raises(error, match=message) as e:
        s.client.completions.create(**kwargs)
    assert e.value.body["type"] == "invalid_request_error"
    assert s.client.completions.create(model="tiny", prompt="A", max_tokens=2).choices[0].text  # still serving


def test_malformed_json_is_a_400(served):
    s, _, _ = served
    r = httpx.post(f"{s.url}/v1/completions", content=b'{"model": "tiny",',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{s.url}/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_requests_beyond_the_queue_get_429(trained):
    """A sequence holds the only slot (its first token blocks the batcher until released), so the next request
    finds the slots and the queue full; once the holder is cancelled and released, requests run again."""
    model, ds, _, _ = trained
    s = Served(Engine(model, ds.tokenizer, "tiny", documents=False, slots=1, max_queue=0))
    holding, release = threading.Event(), threading.Event()

    def hold(token: int) -> None:
        holding.set()
        release.wait(timeout=30)

    try:
        holder = Sequence(Request((0,), 60), on_token=hold)
        s.engine.submit(holder)
        assert holding.wait(timeout=30)
        with pytest.raises(openai.RateLimitError, match="capacity"):
            s.client.completions.create(model="tiny", prompt="A", max_tokens=2)
        s.engine.batcher.cancel(holder)
        release.set()
        deadline = time.monotonic() + 30
        while s.engine.batcher.load():  # the cancelled holder leaves at the batcher's next step
            assert time.monotonic() < deadline, "the slot was not freed"
            time.sleep(0.01)
        assert holder.finish_reason == "cancelled"
        assert s.client.completions.create(model="tiny", prompt="A", max_tokens=2).choices[0].text
    finally:
        release.set()
        s.close()


def test_speculative_server_matches_greedy(trained):
    model, ds, _, _ = trained
    batcher = SpeculativeBatcher(model, NGramDraft(), k=4, slots=2)
    s = Served(Engine(model, ds.tokenizer, "tiny", documents=False, slots=2, max_queue=4, batcher=batcher))
    try:
        r = s.client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=30, temperature=0)
        assert r.choices[0].text == greedy_text(model, ds.tokenizer, "ROMEO:", 30)
        assert batcher.stats.tokens == 30 and batcher.stats.target_forwards <= 30
        stats = r.model_extra["speculative"]  # the request's own statistics, beside usage
        assert stats["tokens"] == 30 and stats["target_forwards"] == batcher.stats.target_forwards
        assert stats["tokens_per_forward"] == 30 / stats["target_forwards"]
        assert len(stats["per_position_acceptance"]) >= 1
        health = httpx.get(f"{s.url}/health").json()["speculative"]  # every request so far
        assert health["tokens"] == 30 and health["accepted"] == stats["accepted"]
    finally:
        s.close()
