"""Who may use a server, and how much it reads: an ASGI middleware in front of every pocketgpt app.

- Browsers: a request that carries an Origin header (every cross-site POST a web page makes, `text/plain` forms
  included) is refused with 403 unless the origin is listed in `allowed_origins` ("*": any), or it is the
  server's own page (the Origin names the Host the request was sent to, and that host is a loopback name or the
  address the server listens on: a page on another name that resolves here, DNS rebinding, is not its own).
  Listed origins get the CORS headers, and their preflight (OPTIONS) is answered.
- API key: with `api_key` set, every path but OPEN_PATHS needs `Authorization: Bearer KEY` (compared in constant
  time), else 401.
- Body size: a body over `max_body` bytes is refused with 413, by its Content-Length before it is read, or
  while it is read when it gives none.
Refusals are OpenAI-shaped errors ({"error": {"message", "type", "param", "code"}}).
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from pocketgpt.serve import MAX_BODY

OPEN_PATHS = frozenset({"/", "/health"})  # the chat page (it holds nothing; it sends the key it is given) and health
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Access:
    api_key: str | None = None
    allowed_origins: tuple[str, ...] = ()
    max_body: int = MAX_BODY
    host: str = "127.0.0.1"  # the address the server listens on

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        return "*" in self.allowed_origins or origin in self.allowed_origins or self.own_page(origin, host)

    def own_page(self, origin: str, host: str | None) -> bool:
        parts = urlsplit(origin)
        if host is None or parts.scheme not in ("http", "https") or parts.netloc != host:
            return False
        return parts.hostname in LOOPBACK or parts.hostname == self.host.strip("[]")

    def key_accepted(self, authorization: str | None) -> bool:
        if self.api_key is None:
            return True
        scheme, _, given = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.api_key.encode())


class BodyTooLarge(Exception):
    pass


class AccessMiddleware:
    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin, access = headers.get("origin"), self.access
        cors = {}
        if origin is not None:
            if not access.origin_allowed(origin, headers.get("host")):
                return await _refuse(send, 403, f"requests from the web page at {origin} are refused; start the "
                                     f"server with --allowed-origins {origin} to allow them", "origin_not_allowed")
            if not access.own_page(origin, headers.get("host")):
                cors = {"access-control-allow-origin": origin, "vary": "Origin"}
            if scope["method"] == "OPTIONS":  # a preflight: what a listed origin may send
                return await _send(send, 204, b"", {**cors, "access-control-allow-methods": "GET, POST, OPTIONS",
                                                    "access-control-allow-headers": "authorization, content-type",
                                                    "access-control-max-age": "600"})
        if scope["path"] not in OPEN_PATHS and not access.key_accepted(headers.get("authorization")):
            return await _refuse(send, 401, "a valid API key is needed: send the header Authorization: Bearer KEY",
                                 "invalid_api_key", cors, "authentication_error")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > access.max_body):
            return await _refuse(send, 413, f"the request body is over {access.max_body} bytes", "body_too_large",
                                 cors)
        started, read = False, 0

        async def counted_receive():
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > access.max_body:
                raise BodyTooLarge
            return message

        async def send_with_cors(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if cors:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      *((k.encode(), v.encode()) for k, v in cors.items())]}
            await send(message)

        try:
            await self.app(scope, counted_receive, send_with_cors)
        except BodyTooLarge:
            if not started:
                await _refuse(send, 413, f"the request body is over {access.max_body} bytes", "body_too_large", cors)


async def _refuse(send, status: int, message: str, code: str, headers: dict | None = None,
                  kind: str = "invalid_request_error") -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    await _send(send, status, body, {**(headers or {}), "content-type": "application/json"})


async def _send(send, status: int, body: bytes, headers: dict) -> None:
    headers = {**headers, "content-length": str(len(body))}
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
    await send({"type": "http.response.body", "body": body})
