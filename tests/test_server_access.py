"""The server safe by default: API keys, web origins, body and nesting limits, prompts bounded before they are
tokenized, the OpenAI request shapes it accepts (token ids) and refuses (logprobs, echo), Retry-After, request
timeouts, and the CLI's one-line errors for its serving flags."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from conftest import Served

from pocketgpt.cli import main
from pocketgpt.generate import Request, Sampling, Sequence, encode_prompt, generate
from pocketgpt.serve.access import Access
from pocketgpt.serve.server import MAX_DEPTH, Engine

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def guarded(request):
    model, ds, _, _ = request.getfixturevalue("trained")
    s = Served(Engine(model, ds.tokenizer, "tiny", documents=False, slots=2, max_queue=2),
               access=Access(api_key=KEY, allowed_origins=("https://app.example",), max_body=4096))
    yield s, model, ds.tokenizer
    s.close()


def post(s, path="/v1/completions", key=KEY, **kwargs):
    headers = {**({"authorization": f"Bearer {key}"} if key else {}), **kwargs.pop("headers", {})}
    return httpx.post(f"{s.url}{path}", headers=headers, **kwargs)


ASK = {"model": "tiny", "prompt": "A", "max_tokens": 2}


def test_the_api_key_is_needed_everywhere_but_health(guarded):
    s, _, _ = guarded
    with pytest.raises(openai.AuthenticationError, match="API key"):
        s.client.completions.create(**ASK)  # the fixture's client sends "unused"
    client = openai.OpenAI(base_url=f"{s.url}/v1", api_key=KEY, max_retries=0)
    assert client.completions.create(**ASK).choices[0].text
    assert client.models.list().data[0].id == "tiny"
    for key in (None, KEY + "x", KEY[:-1]):
        r = post(s, key=key, json=ASK)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{s.url}/v1/models").status_code == 401
    assert httpx.get(f"{s.url}/health").json()["status"] == "ok"


def test_other_web_pages_are_refused_and_listed_origins_get_cors(guarded):
    s, _, _ = guarded
    port = s.url.rsplit(":", 1)[1]
    # a page elsewhere posting text/plain (no preflight) is refused before the body is read, key or not
    for key in (None, KEY):
        r = post(s, key=key, content=b'{"model": "tiny", "prompt": "A"}',
                 headers={"origin": "https://evil.example", "content-type": "text/plain"})
        assert r.status_code == 403 and "--allowed-origins https://evil.example" in r.json()["error"]["message"]
        assert "access-control-allow-origin" not in r.headers
    # a name that resolves here (DNS rebinding) is not the server's own page
    r = post(s, json=ASK, headers={"origin": f"http://evil.example:{port}", "host": f"evil.example:{port}"})
    assert r.status_code == 403
    # the server's own page, and a listed origin with its preflight
    assert post(s, json=ASK, headers={"origin": s.url}).status_code == 200
    pre = httpx.options(f"{s.url}/v1/completions", headers={"origin": "https://app.example",
                                                              "access-control-request-method": "POST"})
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in pre.headers["access-control-allow-headers"]
    r = post(s, json=ASK, headers={"origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = post(s, key=None, json=ASK, headers={"origin": "https://app.example"})  # CORS does not replace the key
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "https://app.example"


def test_bodies_over_the_limit_get_413_with_or_without_a_length(guarded):
    s, _, _ = guarded
    big = {**ASK, "prompt": "A" * 5000}
    r = post(s, json=big)
    assert r.status_code == 413 and "4096 bytes" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it is read
        for _ in range(10):
            yield b" " * 1000

    r = post(s, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert post(s, json=ASK).status_code == 200  # still serving


def test_deep_json_and_unsupported_fields_are_400s(guarded):
    s, _, _ = guarded
    for body in (b"[" * 1900 + b"]" * 1900, b'{"a": ' + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1) + b"}"):
        r = post(s, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested" in r.json()["error"]["message"]
    for field, value in (("logprobs", 2), ("echo", True), ("top_logprobs", 3)):
        r = post(s, json={**ASK, field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field
        assert "not supported" in r.json()["error"]["message"]
    assert post(s, json={**ASK, "logprobs": None, "echo": False}).status_code == 200


def test_token_id_prompts_are_the_text_they_encode(guarded):
    s, model, tok = guarded
    ids = encode_prompt(tok, "ROMEO:", False)
    want = tok.decode(generate(model, ids, max_new_tokens=8, sampling=Sampling(temperature=0)))
    for prompt in (ids, [ids], "ROMEO:"):
        r = post(s, json={"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == want
    for prompt in ([tok.vocab_size], [-1], [], [1.5], [[1], [2]]):
        r = post(s, json={"model": "tiny", "prompt": prompt})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_a_prompt_too_long_for_any_tokenization_is_refused_before_tokenizing(trained, monkeypatch):
    model, ds, _, _ = trained
    engine = Engine(model, ds.tokenizer, "tiny", documents=False, slots=1, max_queue=0)
    assert engine.token_chars == 1  # a character tokenizer
    s = Served(engine)
    calls = []
    monkeypatch.setattr(ds.tokenizer, "encode", lambda text, _real=ds.tokenizer.encode: calls.append(text) or
                        _real(text))
    try:
        for path, body in (("/v1/completions", {"model": "tiny", "prompt": "A" * (engine.context + 1)}),
                           ("/v1/chat/completions", {"model": "tiny", "messages": [
                               {"role": "user", "content": [{"type": "text", "text": "A" * (engine.context + 1)}]}]})):
            r = httpx.post(f"{s.url}{path}", json=body)
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
            assert "characters" in r.json()["error"]["message"]
        assert calls == []
    finally:
        s.close()


def holding_engine(trained, **kwargs):
    """A one-slot server whose slot is held by a sequence that blocks the batcher at its first token until
    released (so that requests wait)."""
    model, ds, _, _ = trained
    s = Served(Engine(model, ds.tokenizer, "tiny", documents=False, slots=1, **kwargs))
    holding, release = threading.Event(), threading.Event()
    holder = Sequence(Request((0,), 60), on_token=lambda token: holding.set() or release.wait(timeout=30))
    s.engine.submit(holder)
    assert holding.wait(timeout=30)
    return s, holder, release


def test_429_says_when_to_retry(trained):
    s, holder, release = holding_engine(trained, max_queue=0)
    try:
        r = httpx.post(f"{s.url}/v1/completions", json=ASK)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    finally:
        s.engine.batcher.cancel(holder)
        release.set()
        s.close()


def test_a_request_past_the_timeout_is_cancelled_and_its_slot_freed(trained):
    s, holder, release = holding_engine(trained, max_queue=4, request_timeout=0.5)
    try:
        r = httpx.post(f"{s.url}/v1/completions", json=ASK, timeout=30)
        assert r.status_code == 504 and "timeout" in r.json()["error"]["message"]
        with httpx.stream("POST", f"{s.url}/v1/completions", json={**ASK, "stream": True}, timeout=30) as r:
            lines = [line for line in r.iter_lines() if line]
        assert r.status_code == 200 and "timeout" in lines[-1] and "[DONE]" not in lines[-1]
        waiting = list(s.engine.batcher.waiting)  # both timed-out requests, cancelled (they leave at the next step)
        assert len(waiting) == 2 and all(seq.cancelled for seq in waiting)
    finally:
        s.engine.batcher.cancel(holder)
        release.set()
    deadline = time.monotonic() + 30
    while s.engine.batcher.load():
        assert time.monotonic() < deadline, "the slots were not freed"
        time.sleep(0.02)
    s.close()


@pytest.mark.parametrize("flags, message", [
    (["--port", "99999"], "TCP port"),
    (["--api-key-file", "/no/such/file"], "cannot read the API key file"),
    (["--api-key", " "], "the API key is empty"),
    (["--api-key", "k", "--api-key-file", "f"], "give the API key once"),
    (["--role", "draft", "--api-key", "k"], "a draft server takes no API key"),
    (["--request-timeout", "0"], "positive number"),
])
def test_serve_flags_fail_in_one_line(flags, message, capsys):
    try:
        code = main(["serve", "no-such-model", *flags])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
