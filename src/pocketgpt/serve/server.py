"""An OpenAI-compatible HTTP server (Starlette + uvicorn, the `serve` extra) with continuous batching.

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions, with "stream": true
for server-sent events that end with `data: [DONE]`. One thread runs a scheduler (pocketgpt.generate's
Batcher, or its SpeculativeBatcher with a draft) step after step while there is work; requests join at the
next step and leave when done, and a client that disconnects has its sequence cancelled, which frees its slot.
Each request is parsed into the library's own Request and Sampling, so it is validated by the same rules as
a Python caller's; a rule that fails becomes a 400 naming the JSON parameter.

Chat template: each message becomes "ROLE:\\n<content>\\n\\n" with the role in capitals (SYSTEM, USER,
ASSISTANT), and the prompt ends with "ASSISTANT:\\n" -- the layout of a speech in tinyshakespeare. A blank
line ("\\n\\n") ends the reply unless the request gives its own stop strings.

Errors are OpenAI-shaped ({"error": {"message", "type", "param", "code"}}): 400 for malformed JSON and bad
parameters (max_tokens beyond the context, a temperature outside [0, 2], characters outside the vocabulary),
404 for an unknown model, 429 when the running and waiting requests already fill the slots and the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
import time
import uuid

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from pocketgpt.errors import InputError, SettingsError
from pocketgpt.generate import Batcher, Request, Sampling, Sequence, TextStream, encode_prompt
from pocketgpt.generate.chat import chat_ids
from pocketgpt.serve import MAX_QUEUE, SLOTS


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


FIELDS = {"max_new_tokens": "max_tokens"}  # library field -> JSON parameter, where the names differ


class Engine:
    """A batcher, the thread that steps it, and what the HTTP handlers need to know about the model."""

    def __init__(self, model, tokenizer, name: str, documents: bool, slots: int = SLOTS, max_queue: int = MAX_QUEUE,
                 batcher=None):
        self.model, self.tokenizer, self.name, self.documents = model, tokenizer, name, documents
        self.slots, self.max_queue = slots, max_queue
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
                           "retry later", code="rate_limit_exceeded", kind="rate_limit_error")
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


def parse(engine: Engine, body: dict, chat: bool) -> tuple[Request, bool]:
    """Validate a request body into a generation Request and whether to stream (APIError 400/404 otherwise)."""
    model = body.get("model")
    if model != engine.name:
        raise APIError(404, f"the model {model!r} does not exist; this server has {engine.name!r}", "model",
                       "model_not_found")
    where = "messages" if chat else "prompt"
    if body_field(body, "n", (int,), 1) != 1:
        raise APIError(400, "n must be 1", "n")
    template_stops: tuple[str, ...] = ()
    try:
        if chat:
            prompt, template_stops = chat_ids(engine.tokenizer, body.get("messages"), engine.documents)
        else:
            text = body.get("prompt", "")
            if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
                text = text[0]
            if not isinstance(text, str):
                raise APIError(400, "prompt must be a string (or a list of one string)", "prompt")
            prompt = encode_prompt(engine.tokenizer, text, engine.documents)
    except InputError as e:
        raise APIError(400, f"{where}: {e}", where) from None
    block = engine.context
    room = block - len(prompt)
    if room < 1:
        raise APIError(400, f"this model's maximum context length is {block} tokens; the prompt has {len(prompt)}",
                       where, "context_length_exceeded")
    max_tokens = body_field(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens",
                             (int,), room if chat else 16)
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
    return request, bool(body_field(body, "stream", (bool,), False))


async def read_json(request: HTTPRequest) -> dict:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise APIError(400, "the body must be a JSON object")
    return body


class Completion:
    """One request's sequence. Its tokens become text in the batcher's thread (where a stop string also
    cancels the sequence); the event loop hears of each new piece of text when streaming, and of the end."""

    def __init__(self, engine: Engine, request: Request, stream: bool):
        self.engine, self.request, self.streaming = engine, request, stream
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()
        self.text = TextStream(engine.tokenizer.decode, request.sampling.stop)
        self.pieces_done: list[str] = []
        self.speculative = None  # a speculative batcher's statistics for this request, once it has finished
        self.seq = Sequence(request, on_token=self._on_token, on_finish=self._on_finish)
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

    async def stream(self):
        """Text pieces as they become safe to send; afterwards self.finish_reason is set."""
        while (piece := await self.queue.get()) is not None:
            yield piece

    async def result(self, request: HTTPRequest) -> str:
        """The whole text, once the sequence has finished (cancelled if the client goes away meanwhile)."""
        end = asyncio.ensure_future(self.queue.get())
        while not (await asyncio.wait({end}, timeout=1.0))[0]:
            if await request.is_disconnected():
                self.cancel()
                end.cancel()
                return ""
        return "".join(self.pieces_done)

    @property
    def finish_reason(self) -> str:
        return "stop" if self.text.stopped else (self.seq.finish_reason or "stop")

    def cancel(self) -> None:
        if not self.seq.done:
            self.engine.batcher.cancel(self.seq)
            self.engine.wake.set()

    def extras(self) -> dict:
        """Fields beyond OpenAI's: "speculative", the request's speculative decoding statistics (SpecStats)."""
        return {"speculative": self.speculative} if self.speculative is not None else {}

    def usage(self) -> dict:
        n, m = len(self.request.prompt), len(self.seq.tokens)
        return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}


def create_app(engine: Engine) -> Starlette:
    async def health(request: HTTPRequest):
        stats = getattr(engine.batcher, "stats", None)
        return JSONResponse({"status": "ok", "model": engine.name, "running": engine.batcher.load(),
                             **({"speculative": stats.to_dict()} if stats is not None else {})})

    async def models(request: HTTPRequest):
        return JSONResponse({"object": "list", "data": [
            {"id": engine.name, "object": "model", "created": engine.created, "owned_by": "pocketgpt"}]})

    async def complete(request: HTTPRequest, chat: bool):
        try:
            gen_request, stream = parse(engine, await read_json(request), chat)
            job = Completion(engine, gen_request, stream)
        except APIError as e:
            return e.response()
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": engine.name}
        if not stream:
            text = await job.result(request)
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
        Route("/health", health), Route("/v1/models", models),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ], lifespan=lifespan)
