"""The draft side of two-process speculative decoding: `pocketgpt serve DRAFT --role draft` answers POST /v1/draft
(the wire format is pocketgpt.generate.remote's) with the draft model's proposals.

Each session keeps the draft's KV cache and the tokens it holds; a request rolls the cache back to the longest
prefix it shares with the context sent and drafts from there. After answering, the service drafts on: it
assumes the target accepts every token it just proposed, guesses the token the target adds after them (its own
next token) and drafts the following block, while the target is still verifying. When the next request's context
is that guess, the block is already there; otherwise the work is dropped (stopped at the next token) and the
draft starts again from the shared prefix. All drafting runs on one worker thread, so the draft process keeps
to one core beside the target's.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from pocketgpt.errors import SettingsError
from pocketgpt.generate import Sampling
from pocketgpt.generate.remote import encode_dist
from pocketgpt.generate.speculative import ModelDraft
from pocketgpt.model import GPT
from pocketgpt.serve.access import Access, AccessMiddleware
from pocketgpt.serve.server import APIError, body_field, read_json, sampling_fields

SESSIONS = 64  # sessions kept (the least recently used is dropped)


@dataclass
class Ahead:
    """A block drafted before it was asked for: for `context`, these tokens and their distributions."""
    context: list[int]
    tokens: list[int]
    dists: list


class Held:
    """One session: the draft's cache, the tokens it holds, and what was drafted ahead."""

    def __init__(self, draft: ModelDraft, seed: int):
        self.session = draft.session()
        self.tokens: list[int] = []  # what the cache holds, in order
        self.rng = np.random.default_rng(seed)
        self.ahead: Ahead | None = None
        self.assumed: list[int] | None = None  # the context a running look-ahead starts from
        self.stop = threading.Event()  # tells a running look-ahead to give up

    def draft(self, context: list[int], k: int, sampling: Sampling, stop: threading.Event | None = None):
        """Up to k tokens after context (fewer where the draft's context ends, or when `stop` is set)."""
        shared = 0
        for a, b in zip(self.tokens, context):
            if a != b:
                break
            shared += 1
        shared = min(shared, len(context) - 1)  # the last token of the context is always fed
        self.session.rollback(shared)
        self.tokens = self.tokens[:shared]
        k = max(0, min(k, self.session.room(len(context))))
        tokens, dists = [], []
        for _ in range(k):
            if stop is not None and stop.is_set():
                break
            x, q = self.session.propose(context + tokens, 1, sampling, self.rng)
            tokens += x
            dists += q
        self.tokens = (context + tokens)[:self.session.cache.length]
        return tokens, dists


class DraftService:
    """Proposals from a draft GPT for many sessions, with drafting ahead (see the module docstring)."""

    def __init__(self, model: GPT, name: str, sessions: int = SESSIONS):
        self.draft, self.name, self.max_sessions = ModelDraft(model), name, sessions
        self.vocab_size = model.config.vocab_size
        self.sessions: OrderedDict[str, Held] = OrderedDict()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="pocketgpt-draft")
        self.lock = threading.Lock()
        self.seeds = np.random.default_rng()
        self.requests = self.hits = 0  # requests answered; of them, from a block drafted ahead

    def held(self, sid: str) -> Held:
        with self.lock:
            if sid not in self.sessions:
                self.sessions[sid] = Held(self.draft, int(self.seeds.integers(2**63)))
                while len(self.sessions) > self.max_sessions:
                    self.sessions.popitem(last=False)
            self.sessions.move_to_end(sid)
            return self.sessions[sid]

    def propose(self, held: Held, context: list[int], k: int, sampling: Sampling) -> tuple[list[int], list]:
        """Runs on the worker: the block drafted ahead if it was for this context, else a fresh one; then the
        next look-ahead is queued."""
        ahead, held.ahead = held.ahead, None
        self.requests += 1
        if ahead is not None and ahead.context == context and len(ahead.tokens) >= k:
            tokens, dists = ahead.tokens[:k], ahead.dists[:k]
            self.hits += 1
        else:
            tokens, dists = held.draft(context, k, sampling)
        held.assumed = context + tokens
        held.stop = threading.Event()
        self.worker.submit(self.look_ahead, held, held.assumed, k, sampling, held.stop)
        return tokens, dists

    def look_ahead(self, held: Held, assumed: list[int], k: int, sampling: Sampling, stop: threading.Event) -> None:
        """Guess the target's next token after `assumed` (the draft's own) and draft k more after it."""
        block, dists = held.draft(assumed, k + 1, sampling, stop)
        if len(block) == k + 1 and not stop.is_set():
            held.ahead = Ahead(assumed + block[:1], block[1:], dists[1:])

    def cancel_look_ahead(self, held: Held, context: list[int]) -> None:
        """Called as a request arrives: a look-ahead that cannot match this context stops at its next token."""
        assumed = held.assumed
        if assumed is not None and not (len(context) == len(assumed) + 1 and context[:-1] == assumed):
            held.stop.set()


def parse_draft(service: DraftService, body: dict) -> tuple[str, list[int], int, Sampling]:
    sid = body_field(body, "session", (str,))
    context = body.get("context")
    if not sid:
        raise APIError(400, "session must be a non-empty string", "session")
    if not isinstance(context, list) or not context or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < service.vocab_size for t in context):
        raise APIError(400, f"context must be a non-empty list of token ids below {service.vocab_size}", "context")
    k = body_field(body, "k", (int,))
    if k is None or not 1 <= k <= 64:
        raise APIError(400, "k must be an integer from 1 to 64", "k")
    try:
        sampling = Sampling(**sampling_fields(body))  # a seed, if sent, goes unused: the session has its own
    except SettingsError as e:
        raise APIError(400, str(e), e.fields[0]) from None
    return sid, context, k, sampling


def create_draft_app(service: DraftService, access: Access | None = None) -> Starlette:
    """The draft service's app, behind pocketgpt.serve.access (default: no key, no other origin)."""
    async def health(request: HTTPRequest):
        return JSONResponse({"status": "ok", "model": service.name, "role": "draft", "requests": service.requests,
                             "drafted_ahead": service.hits})

    async def draft(request: HTTPRequest):
        try:
            sid, context, k, sampling = parse_draft(service, await read_json(request))
        except APIError as e:
            return e.response()
        held = service.held(sid)
        service.cancel_look_ahead(held, context)
        loop = asyncio.get_running_loop()
        tokens, dists = await loop.run_in_executor(service.worker, service.propose, held, context, k, sampling)
        q = None if sampling.greedy else [encode_dist(d) for d in dists]
        return JSONResponse({"tokens": tokens, "q": q})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        yield
        service.worker.shutdown(wait=False, cancel_futures=True)

    return Starlette(routes=[Route("/health", health), Route("/v1/draft", draft, methods=["POST"])],
                     middleware=[Middleware(AccessMiddleware, access=access or Access())],
                     lifespan=lifespan)
