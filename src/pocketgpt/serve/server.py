"""An OpenAI-compatible HTTP server (Starlette + uvicorn, the `serve` extra) with continuous batching.

Endpoints: GET / (the chat page, chat.html: one static file, its script and style inline, allowed by their hashes
in its Content-Security-Policy and nothing else), GET /health, GET /v1/models, POST /v1/completions,
POST /v1/chat/completions, with "stream": true for server-sent events that end with `data: [DONE]`. One thread
runs a scheduler (pocketgpt.generate's Batcher, or its SpeculativeBatcher with a draft) step after step while
there is work; requests join at the next step and leave when done, and a client that disconnects has its
sequence cancelled, which frees its slot.
Each request is parsed into the library's own Request and Sampling, so it is validated by the same rules as
a Python caller's; a rule that fails becomes a 400 naming the JSON parameter.

Chat template: each message becomes "ROLE:\\n<content>\\n\\n" with the role in capitals (SYSTEM, USER,
ASSISTANT), and the prompt ends with "ASSISTANT:\\n" -- the layout of a speech in tinyshakespeare. A blank
line ("\\n\\n") ends the reply unless the request gives its own stop strings.

Prompts: a completion's prompt is a string, a list of one string, or token ids (a list of ints, or a list of one
such list); a chat message's content is a string or a list of text parts. A prompt whose characters could not
fit the context even at the tokenizer's longest token is refused before it is tokenized, unless the server prunes
prompts (prune_to): then a text prompt or conversation longer than prune_to tokens, or than the context leaves
room for, loses its passages least relevant to its question (pocketgpt.generate.prune), and the response says so
in a "pruned" field.

Errors are OpenAI-shaped ({"error": {"message", "type", "param", "code"}}): 400 for malformed JSON (or JSON
nested deeper than MAX_DEPTH) and bad parameters (max_tokens beyond the context, a temperature outside [0, 2],
characters outside the vocabulary, logprobs and echo, which this server does not compute), 404 for an unknown
model, 429 with Retry-After when the running and waiting requests already fill the slots and the queue, 504 for
a request that ran past the server's request timeout (it is cancelled, and its slot freed). Who may call, and
how large a body may be, is pocketgpt.serve.access's (401, 403, 413).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import sys
import threading
import time
import uuid
from functools import cache
from importlib import resources

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from pocketgpt.errors import InputError, SettingsError
from pocketgpt.generate import Batcher, Request, Sampling, Sequence, TextStream, encode_prompt
from pocketgpt.generate.chat import chat_ids
from pocketgpt.generate.prune import PromptTooLong, Pruned, prune_messages, prune_text
from pocketgpt.serve import MAX_QUEUE, SLOTS
from pocketgpt.serve.access import Access, AccessMiddleware
from pocketgpt.tokenizers.chat import check_messages

MAX_DEPTH = 32  # nesting of a request's JSON
RETRY_AFTER = 1  # seconds a client told 429 should wait


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


FIELDS = {"max_new_tokens": "max_tokens"}  # library field -> JSON parameter, where the names differ


class Engine:
    """A batcher, the thread that steps it, and what the HTTP handlers need to know about the model."""

    def __init__(self, model, tokenizer, name: str, documents: bool, slots: int = SLOTS, max_queue: int = MAX_QUEUE,
                 batcher=None, request_timeout: float | None = None, prune_to: int | None = None):
        self.model, self.tokenizer, self.name, self.documents = model, tokenizer, name, documents
        self.slots, self.max_queue, self.request_timeout = slots, max_queue, request_timeout
        self.prune_to = prune_to  # prune prompts longer than this many tokens (or than the context), else refuse
        self.token_chars = max(len(tokenizer.decode([i])) for i in range(tokenizer.vocab_size))  # the longest
        self.batcher = batcher if batcher is not None else Batcher(model, slots)
        self.context = self.batcher.context  # positions a request may fill
        self.created = int(time.time())
        self.wake = threading.Event()
        self.stopping = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="pocketgpt-batcher", daemon=True)

    def start(self) -> None:
        # Hand the GIL over every 0.5 ms (Python's default is 5 ms): the batcher thread otherwise waits
        # behind the event loop after each NumPy call.
        sys.setswitchinterval(0.0005)
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout=5)

    def _loop(self) -> None:
        while not self.stopping:
            if self.batcher.busy:
                self.batcher.step()
            else:
                self.wake.wait(0.5)
                self.wake.clear()

    def submit(self, seq: Sequence) -> None:
        if self.batcher.load() >= self.slots + self.max_queue:
            raise APIError(429, f"the server is at capacity ({self.slots} running, {self.max_queue} waiting); "
                           "retry later", code="rate_limit_exceeded", kind="rate_limit_error",
                           headers={"Retry-After": str(RETRY_AFTER)})
        self.batcher.submit(seq)
        self.wake.set()


def body_field(body: dict, name: str, kinds, default=None):
    value = body.get(name, default)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
        raise APIError(400, f"{name} must be {' or '.join(k.__name__ for k in kinds)}", name)
    return value


def sampling_fields(body: dict) -> dict:
    """The sampling parameters a request body gives (temperature, top_p, top_k, seed), type-checked."""
    values = {k: body_field(body, k, kinds) for k, kinds in
              (("temperature", (int, float)), ("top_p", (int, float)), ("top_k", (int,)), ("seed", (int,)))}
    return {k: v for k, v in values.items() if v is not None}


def parse(engine: Engine, body: dict, chat: bool) -> tuple[Request, bool, Pruned | None]:
    """Validate a request body into a generation Request, whether to stream and what pruning did to the prompt
    (APIError 400/404 otherwise)."""
    model = body.get("model")
    if model != engine.name:
        raise APIError(404, f"the model {model!r} does not exist; this server has {engine.name!r}", "model",
                       "model_not_found")
    where = "messages" if chat else "prompt"
    if body_field(body, "n", (int,), 1) != 1:
        raise APIError(400, "n must be 1", "n")
    for name in ("logprobs", "top_logprobs", "echo"):
        if body.get(name) not in (None, False, 0):
            raise APIError(400, f"{name} is not supported by this server", name)
    block = engine.context
    length_field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = body_field(body, length_field, (int,))
    budget = None if engine.prune_to is None else min(engine.prune_to, block - max(1, asked or (0 if chat else 16)))
    if budget is not None and budget < 1:
        raise APIError(400, f"max_tokens must be below this model's maximum context length of {block} tokens",
                       "max_tokens", "context_length_exceeded")
    template_stops: tuple[str, ...] = ()
    pruned = None
    try:
        if chat:
            messages = check_messages(body.get("messages"))  # content parts joined
            if budget is None:
                _check_length(engine, [m["content"] for m in messages], where)
                prompt, template_stops = chat_ids(engine.tokenizer, messages, engine.documents)
            else:  # any length the body limit lets in
                prompt, template_stops, pruned = prune_messages(engine.tokenizer, messages, budget, engine.documents)
        else:
            prompt, pruned = _completion_prompt(engine, body.get("prompt", ""), budget)
    except PromptTooLong as e:
        raise APIError(400, f"{where}: {e}", where, "context_length_exceeded") from None
    except InputError as e:
        raise APIError(400, f"{where}: {e}", where) from None
    room = block - len(prompt)
    if room < 1:
        raise APIError(400, f"this model's maximum context length is {block} tokens; the prompt has {len(prompt)}",
                       where, "context_length_exceeded")
    max_tokens = asked if asked is not None else room if chat else 16
    if max_tokens < 1 or max_tokens > room:
        raise APIError(400, f"max_tokens must be between 1 and {room}: this model's maximum context length is "
                       f"{block} tokens and the prompt has {len(prompt)}", "max_tokens", "context_length_exceeded")
    stops = body_field(body, "stop", (str, list))
    stops = [stops] if isinstance(stops, str) else stops
    if stops is not None and not all(isinstance(s, str) for s in stops):
        raise APIError(400, "stop must be a string or a list of strings", "stop")
    try:
        sampling = Sampling(**sampling_fields(body), stop=tuple(stops) if stops is not None else template_stops)
        request = Request(tuple(prompt), max_tokens, sampling, engine.tokenizer.stop_tokens)
    except SettingsError as e:
        param = FIELDS.get(e.fields[0], e.fields[0])
        raise APIError(400, e.named(lambda f: FIELDS.get(f, f)), param) from None
    return request, bool(body_field(body, "stream", (bool,), False)), pruned


def _completion_prompt(engine: Engine, prompt, budget: int | None) -> tuple[list[int], Pruned | None]:
    """A completion's prompt ids: from text (a string or a list of one; pruned to `budget` tokens unless None),
    or token ids (a list, or a list of one; never pruned)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if budget is not None:
            return prune_text(engine.tokenizer, prompt, budget, engine.documents)
        _check_length(engine, [prompt], "prompt")
        return encode_prompt(engine.tokenizer, prompt, engine.documents), None
    V = engine.tokenizer.vocab_size
    if (isinstance(prompt, list) and prompt
            and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V for t in prompt)):
        return list(prompt), None
    raise APIError(400, f"prompt must be a string, token ids in 0..{V - 1}, or a list of one of them", "prompt")


def _check_length(engine: Engine, texts: list[str], where: str) -> None:
    """Refuse, before tokenizing, a prompt too long for the context at any tokenization: more characters than the
    context's tokens times the tokenizer's longest token."""
    chars = sum(map(len, texts))
    if chars > engine.context * engine.token_chars:
        raise APIError(400, f"this model's maximum context length is {engine.context} tokens; the prompt has "
                       f"{chars} characters, more than that many tokens can hold", where, "context_length_exceeded")


async def read_json(request: HTTPRequest) -> dict:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the body is not valid JSON: {e}") from None
    except RecursionError:  # nested past what the parser itself takes
        raise APIError(400, f"the body is nested more than {MAX_DEPTH} levels deep") from None
    if _depth(body) > MAX_DEPTH:
        raise APIError(400, f"the body is nested more than {MAX_DEPTH} levels deep")
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    return body


def _depth(value) -> int:
    """How deeply lists and objects nest in a parsed JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


class Completion:
    """One request's sequence. Its tokens become text in the batcher's thread (where a stop string also
    cancels the sequence); the event loop hears of each new piece of text when streaming, and of the end."""

    def __init__(self, engine: Engine, request: Request, stream: bool, pruned: Pruned | None = None):
        self.engine, self.request, self.streaming, self.pruned = engine, request, stream, pruned
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.text = TextStream(engine.tokenizer.decode, request.sampling.stop)
        self.pieces_done: list[str] = []
        self.speculative = None  # a speculative batcher's statistics for this request, once it has finished
        self.seq = Sequence(request, on_token=self._on_token, on_finish=self._on_finish)
        timeout = engine.request_timeout
        self.deadline = None if timeout is None else self.loop.time() + timeout
        engine.submit(self.seq)

    def _on_token(self, token: int) -> None:  # in the batcher's thread
        piece = self.text.push(token)
        if self.text.stopped:
            self.engine.batcher.cancel(self.seq)
        if piece:
            self._post(piece)

    def _on_finish(self, seq: Sequence) -> None:  # in the batcher's thread
        stats_of = getattr(self.engine.batcher, "stats_of", None)
        if stats_of is not None and (stats := stats_of(seq)) is not None:
            self.speculative = stats.to_dict()
        rest = self.text.flush()
        if rest:
            self._post(rest)
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    def _post(self, piece: str) -> None:
        if self.streaming:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, piece)
        else:
            self.pieces_done.append(piece)

    async def _next(self, wait: float | None = None):
        """The next item of the queue (a piece, or None at the end); TimeoutError after `wait` seconds; APIError 504
        (the sequence cancelled) once the request's deadline has passed."""
        left = None if self.deadline is None else self.deadline - self.loop.time()
        limits = [t for t in (wait, left) if t is not None]
        try:
            return await asyncio.wait_for(self.queue.get(), max(0.0, min(limits)) if limits else None)
        except TimeoutError:
            if self.deadline is not None and self.loop.time() >= self.deadline:
                self.cancel()
                raise APIError(504, f"the request ran past the server's timeout of {self.engine.request_timeout:g} s "
                               "and was cancelled", code="timeout", kind="timeout_error") from None
            raise

    async def stream(self):
        """Text pieces as they become safe to send; afterwards self.finish_reason is set. APIError 504 past the
        deadline."""
        while (piece := await self._next()) is not None:
            yield piece

    async def result(self, request: HTTPRequest) -> str:
        """The whole text, once the sequence has finished (cancelled if the client goes away meanwhile; APIError 504
        past the deadline)."""
        while True:
            try:
                await self._next(1.0)
                return "".join(self.pieces_done)
            except TimeoutError:
                if await request.is_disconnected():
                    self.cancel()
                    return ""

    @property
    def finish_reason(self) -> str:
        return "stop" if self.text.stopped else (self.seq.finish_reason or "stop")

    def cancel(self) -> None:
        if not self.seq.done:
            self.engine.batcher.cancel(self.seq)
            self.engine.wake.set()

    def extras(self) -> dict:
        """Fields beyond OpenAI's: "speculative", the request's speculative decoding statistics (SpecStats), and
        "pruned", what context pruning did to its prompt (generate.prune.Pruned)."""
        return ({"speculative": self.speculative} if self.speculative is not None else {}) | (
            {"pruned": self.pruned.as_dict()} if self.pruned is not None else {})

    def usage(self) -> dict:
        n, m = len(self.request.prompt), len(self.seq.tokens)
        return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


@cache
def chat_page() -> tuple[str, dict]:
    """The chat page and its headers: a policy that lets the page run its own inline script and style (by their
    SHA-256) and talk to this server, and nothing else."""
    html = (resources.files("pocketgpt.serve") / "chat.html").read_text(encoding="utf-8")

    def digest(tag: str) -> str:
        body = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S).group(1)
        return f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"

    policy = (f"default-src 'none'; script-src {digest('script')}; style-src {digest('style')}; connect-src 'self'; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                  "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def create_app(engine: Engine, access: Access | None = None) -> Starlette:
    """The OpenAI-compatible app over `engine`, behind pocketgpt.serve.access (default: no key, no other origin)."""
    async def page(request: HTTPRequest):
        html, headers = chat_page()
        return HTMLResponse(html, headers=headers)

    async def health(request: HTTPRequest):
        stats = getattr(engine.batcher, "stats", None)
        return JSONResponse({"status": "ok", "model": engine.name, "running": engine.batcher.load(),
                             **({"speculative": stats.to_dict()} if stats is not None else {})})

    async def models(request: HTTPRequest):
        return JSONResponse({"object": "list", "data": [
            {"id": engine.name, "object": "model", "created": engine.created, "owned_by": "pocketgpt"}]})

    async def complete(request: HTTPRequest, chat: bool):
        try:
            gen_request, stream, pruned = parse(engine, await read_json(request), chat)
            job = Completion(engine, gen_request, stream, pruned)
        except APIError as e:
            return e.response()
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": engine.name}
        if not stream:
            try:
                text = await job.result(request)
            except APIError as e:
                return e.response()
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat
                      else {"index": 0, "text": text, "logprobs": None})
            choice["finish_reason"] = job.finish_reason
            return JSONResponse({**head, "choices": [choice], "usage": job.usage(), **job.extras()})
        head["object"] = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: str | None, finish: str | None = None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant", "content": ""} if first else ({"content": piece} if piece else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}
            extra = {"usage": job.usage(), **job.extras()} if finish else {}
            return f"data: {json.dumps({**head, 'choices': [choice], **extra})}\n\n"

        async def events():
            try:
                if chat:
                    yield chunk(None, first=True)
                async for piece in job.stream():
                    yield chunk(piece)
                yield chunk(None, job.finish_reason)
            except APIError as e:  # past the deadline: the stream ends with the error, as OpenAI's do
                yield f"data: {json.dumps(e.body())}\n\n"
            else:
                yield "data: [DONE]\n\n"
            finally:  # the client went away (the task is cancelled) or the stream ended
                job.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def completions(request: HTTPRequest):
        return await complete(request, chat=False)

    async def chat_completions(request: HTTPRequest):
        return await complete(request, chat=True)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        engine.start()
        yield
        engine.stop()

    return Starlette(routes=[
        Route("/", page), Route("/health", health), Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ], lifespan=lifespan, middleware=[Middleware(AccessMiddleware, access=access or Access())])
