"""Human approval: a call the policy sends to approval waits for an Approver, and a timeout means no.

CallbackApprover asks a function; CLIApprover asks on the terminal; HTTPApprover keeps pending requests
that a person lists (GET /pending) and answers (POST /approve/ID or /deny/ID) over HTTP.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ApprovalRequest:
    agent: str
    tool: str
    args: dict
    reason: str
    id: int = 0
    answer: bool | None = None
    event: threading.Event = field(default_factory=threading.Event)


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
            print(f"\n[guard] {r.agent} wants {r.tool}({json.dumps(r.args, default=str)[:500]}) - {r.reason}. "
                  f"Allow? [y/N] ({timeout:.0f} s) ", end="", flush=True, file=sys.stderr)
            return (stream or sys.stdin).readline().strip().lower() in ("y", "yes")

        super().__init__(ask, timeout)


class HTTPApprover(Approver):
    """Pending requests over HTTP: GET /pending, POST /approve/ID, POST /deny/ID (127.0.0.1 by default)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 300.0):
        self.timeout, self.pending, self.ids = timeout, {}, itertools.count(1)
        approver = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path != "/pending":
                    return self._reply(404, {"error": "unknown path"})
                self._reply(200, [{"id": r.id, "agent": r.agent, "tool": r.tool, "args": r.args, "reason": r.reason}
                                  for r in list(approver.pending.values())])

            def do_POST(self) -> None:  # noqa: N802
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
