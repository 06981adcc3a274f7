"""A draft in another process: speculative decoding with the draft model served by `pocketgpt serve DRAFT --role
draft` (pocketgpt.serve.draft) and asked over HTTP, so that draft and target run on their own cores.

The wire format, one POST /v1/draft per round:
  request  {"session": id, "context": [token ids], "k": drafts wanted, "temperature", "top_k", "top_p"}
  response {"tokens": [up to k ids], "q": null at temperature 0, else one base64 string per token: the float64
           distribution (V,) the draft drew that token from, little-endian}
The target sends the whole context every round; the draft keeps each session's cache and uses the longest
prefix it already holds, so a round costs it only the tokens that are new. Exactness is the acceptance rule's
(pocketgpt.generate.speculative): the target checks every token against its own distribution, so whatever the
draft proposes, the output is the target's. A draft that fails or answers later than `timeout` seconds is left
out for the rest of that sequence: the target goes on alone, and the failure is recorded in `failures`.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

import numpy as np

from pocketgpt.generate.sampling import Sampling


def encode_dist(q: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(q, "<f8").tobytes()).decode("ascii")


def decode_dist(text: str, size: int) -> np.ndarray:
    q = np.frombuffer(base64.b64decode(text, validate=True), "<f8")
    if q.size != size:
        raise ValueError(f"a distribution over {q.size} tokens; the target has {size}")
    return q.astype(np.float64)


class RemoteDraft:
    """The draft served at `url` (e.g. http://127.0.0.1:8001); vocab_size is the target's, which every proposed
    token and distribution must fit. on_failure(message) is called when a session gives up on the draft."""

    def __init__(self, url: str, vocab_size: int, timeout: float = 5.0,
                 on_failure: Callable[[str], None] | None = None):
        self.url, self.vocab_size, self.timeout = url.rstrip("/"), vocab_size, timeout
        self.on_failure = on_failure
        self.failures: list[str] = []

    def session(self, target_cache=None) -> _RemoteSession:
        return _RemoteSession(self)


class _RemoteSession:
    def __init__(self, draft: RemoteDraft):
        self.draft, self.id, self.failed = draft, uuid.uuid4().hex, False

    def room(self, context_len: int) -> int:
        """Any number of drafts (the draft answers with fewer where its context ends); none once it has failed."""
        return 0 if self.failed else 1 << 16

    def token_seconds(self) -> float:
        return 0.0  # unknown until a round has been timed

    def propose(self, context: list[int], k: int, sampling: Sampling, rng) -> tuple[list[int], list]:
        body = {"session": self.id, "context": [int(t) for t in context], "k": k,
                "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
        request = urllib.request.Request(f"{self.draft.url}/v1/draft", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.draft.timeout) as response:
                reply = json.loads(response.read())
            tokens = [int(t) for t in reply["tokens"]][:k]
            if not all(0 <= t < self.draft.vocab_size for t in tokens):
                raise ValueError("a proposed token is outside the target's vocabulary")
            dists = ([None] * len(tokens) if sampling.greedy
                     else [decode_dist(q, self.draft.vocab_size) for q in reply["q"][:len(tokens)]])
        except (OSError, ValueError, KeyError, TypeError) as e:  # URLError and timeouts are OSErrors
            self.failed = True
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            self.draft.failures.append(f"the draft at {self.draft.url} failed ({reason}); the target goes on alone")
            if self.draft.on_failure is not None:
                self.draft.on_failure(self.draft.failures[-1])
            return [], []
        return tokens, dists

    def rollback(self, length: int) -> None:
        pass  # the draft finds the prefix it holds from the next context it is sent
