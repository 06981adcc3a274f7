"""Human approval: a call the policy sends to approval waits for an Approver, and a timeout means no.

CallbackApprover asks a function; CLIApprover asks on the terminal; HTTPApprover serves a page that lists the
pending requests with approve and deny buttons, behind a token. A person sees each argument as the policy
allows: redacted (its type and size) unless the argument's rule says show = true.
"""

from __future__ import annotations

import hmac
import itertools
import json
import secrets
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ApprovalRequest:
    agent: str
    tool: str
    args: dict  # the values themselves, for programs (CallbackApprover)
    reason: str
    id: int = 0
    answer: bool | None = None
    event: threading.Event = field(default_factory=threading.Event)
    shown: dict | None = None  # what a person is shown (shown_args); None: the values themselves
    rule: str = ""

    @property
    def display(self) -> dict:
        return self.args if self.shown is None else self.shown


def _redacted(value: Any) -> str:
    if isinstance(value, str):
        return f"(text, {len(value)} characters, hidden)"
    if isinstance(value, list | tuple):
        return f"(list of {len(value)}, hidden)"
    if isinstance(value, dict):
        return f"(object of {len(value)} fields, hidden)"
    return f"({type(value).__name__}, hidden)"


def shown_args(tool_policy, args: dict) -> dict:
    """The arguments as an approver may see them: those whose rule says show = true, the others redacted."""
    rules = tool_policy.args
    return {k: v if k in rules and rules[k].show else _redacted(v) for k, v in args.items()}


class Approver(ABC):
    timeout: float = 60.0

    @abstractmethod
    def approve(self, request: ApprovalRequest) -> bool:
        """True to allow the call; a denial, or no answer within `timeout` seconds, is False."""


class CallbackApprover(Approver):
    """Asks fn(request) -> bool in a thread; no answer within `timeout` seconds is a denial."""

    def __init__(self, fn: Callable[[ApprovalRequest], bool], timeout: float = 60.0):
        self.fn, self.timeout = fn, timeout

    def approve(self, request: ApprovalRequest) -> bool:
        def ask() -> None:
            try:
                request.answer = bool(self.fn(request))
            except Exception:
                request.answer = False
            request.event.set()

        threading.Thread(target=ask, daemon=True).start()
        return request.event.wait(self.timeout) and request.answer is True


class CLIApprover(CallbackApprover):
    """Prints the call and reads y/N from the terminal."""

    def __init__(self, timeout: float = 60.0, stream=None):
        def ask(r: ApprovalRequest) -> bool:
            print(f"\n[guard] {r.agent} wants {r.tool}({json.dumps(r.display, default=str)[:500]}) - {r.reason}. "
                  f"Allow? [y/N] ({timeout:.0f} s) ", end="", flush=True, file=sys.stderr)
            return (stream or sys.stdin).readline().strip().lower() in ("y", "yes")

        super().__init__(ask, timeout)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>pocketgpt guard: approvals</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline';
 style-src 'unsafe-inline'; connect-src 'self'">
<style>body{font:15px system-ui,sans-serif;max-width:50em;margin:2em auto}li{margin:1em 0}
code{background:#f3f3f3;padding:0 .3em}button{margin-right:.5em}</style></head>
<body><h1>Pending tool calls</h1><p id="status">Loading...</p><ul id="list"></ul>
<script>
function headers() {  // the token is the address's fragment, which the browser never sends to a server
  return {"Authorization": "Bearer " + location.hash.slice(1), "Content-Type": "application/json"};
}
function show(text) { document.getElementById("status").textContent = text; }
async function answer(id, verdict) {
  const r = await fetch("/" + verdict + "/" + id, {method: "POST", headers: headers(), body: "{}"});
  show(r.ok ? (verdict === "approve" ? "Approved " : "Denied ") + id : "Error " + r.status);
  load();
}
async function load() {
  const r = await fetch("/pending", {headers: headers()});
  if (!r.ok) {
    show(r.status === 401 ? "Wrong or missing token (open the address with #TOKEN)" : "Error " + r.status);
    return;
  }
  const pending = await r.json();
  const list = document.getElementById("list");
  list.replaceChildren();
  for (const p of pending) {
    const li = document.createElement("li");
    li.dataset.id = p.id;
    const what = document.createElement("div");
    what.textContent = p.agent + " wants " + p.tool + " " + JSON.stringify(p.args) + " (" + p.reason + ")";
    li.append(what);
    for (const verdict of ["approve", "deny"]) {
      const b = document.createElement("button");
      b.textContent = verdict === "approve" ? "Approve" : "Deny";
      b.className = verdict;
      b.onclick = () => answer(p.id, verdict);
      li.append(b);
    }
    list.append(li);
  }
  if (!document.getElementById("status").textContent.startsWith("Approved") &&
      !document.getElementById("status").textContent.startsWith("Denied"))
    show(pending.length ? pending.length + " pending" : "Nothing pending");
}
load();
setInterval(load, 1000);
</script></body></html>
"""


class HTTPApprover(Approver):
    """Pending requests over HTTP (127.0.0.1 by default): GET / is a page listing them with approve and deny
    buttons (open `page_url`, which carries the token in its fragment, never sent to a server); GET /pending,
    POST /approve/ID and POST /deny/ID need `Authorization: Bearer TOKEN`. POSTs must be application/json
    (the content types a cross-origin page may send without asking, such as text/plain, are refused) and may
    not come from another origin (an Origin other than the address the request was sent to, or Sec-Fetch-Site);
    no CORS headers are sent, so a page elsewhere can neither read the list nor set the header."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 300.0, token: str | None = None):
        self.timeout, self.pending, self.ids = timeout, {}, itertools.count(1)
        self.token = token or secrets.token_urlsafe(24)
        approver = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body, kind: str = "application/json") -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Frame-Options", "DENY")
                self.end_headers()
                self.wfile.write(data)

            def _refused(self) -> str | None:
                """Why a request for the pending list or an answer is refused, or None."""
                given = self.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {approver.token}".encode()):
                    return "401"
                origin = self.headers.get("Origin")  # a browser's request from a page: it must be this page's
                if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
                    return "403"
                if self.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
                    return "403"
                return None

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/":
                    return self._reply(200, PAGE, "text/html; charset=utf-8")
                if self.path != "/pending":
                    return self._reply(404, {"error": "unknown path"})
                refused = self._refused()
                if refused:
                    return self._reply(int(refused), {"error": "unauthorized" if refused == "401" else "forbidden"})
                self._reply(200, [{"id": r.id, "agent": r.agent, "tool": r.tool, "args": r.display,
                                   "reason": r.reason} for r in list(approver.pending.values())])

            def do_POST(self) -> None:  # noqa: N802
                refused = self._refused()
                if refused:
                    return self._reply(int(refused), {"error": "unauthorized" if refused == "401" else "forbidden"})
                if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
                    return self._reply(415, {"error": "answers must be sent as application/json"})
                parts = self.path.strip("/").split("/")
                if len(parts) != 2 or parts[0] not in ("approve", "deny") or not parts[1].isdigit():
                    return self._reply(404, {"error": "use /approve/ID or /deny/ID"})
                request = approver.pending.get(int(parts[1]))
                if request is None:
                    return self._reply(404, {"error": f"no pending request {parts[1]}"})
                request.answer = parts[0] == "approve"
                request.event.set()
                self._reply(200, {"id": request.id, "approved": request.answer})

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.page_url = f"{self.url}/#{self.token}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def approve(self, request: ApprovalRequest) -> bool:
        request.id = next(self.ids)
        self.pending[request.id] = request
        try:
            return request.event.wait(self.timeout) and request.answer is True
        finally:
            self.pending.pop(request.id, None)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
