"""The approval page of HTTPApprover in a real headless browser: opened without its token it lists nothing; with
the token it lists a pending call (its arguments as the policy allows them shown) and its buttons answer it; and
a page of another origin, in the same browser, can neither read the list nor answer a call."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import browser_or_skip, until

from pocketgpt.guard import taint
from pocketgpt.guard.approval import HTTPApprover
from pocketgpt.guard.gateway import Gateway
from pocketgpt.guard.policy import parse_policy

POLICY = {"agents": {"bot": {"tools": ["wire"]}},
          "tools": {"wire": {"approval": True, "args": {"to": {"type": "string", "show": True},
                                                        "memo": {"type": "string"}}}}}


class Elsewhere:
    """A page on another origin (another port) whose script tries the approver's endpoints, as a malicious page
    open in the same browser would: a text/plain POST (no CORS preflight needed) and a read of the list."""

    def __init__(self, target: str, pending_id: int):
        script = f"""<script>
        const out = [];
        fetch("{target}/approve/{pending_id}", {{method: "POST", headers: {{"Content-Type": "text/plain"}},
                                                 body: "{{}}", mode: "no-cors"}})
          .then(() => out.push("posted"), () => out.push("post failed"))
          .then(() => fetch("{target}/pending"))
          .then(r => r.text().then(t => out.push("read " + t)), () => out.push("read failed"))
          .then(() => {{ document.title = out.join(" | "); }});
        </script>"""

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                data = script.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pending():
    """A gateway call waiting for approval, in a thread, and the approver serving the page."""
    approver = HTTPApprover(timeout=60)
    gateway = Gateway(parse_policy(POLICY), {"wire": lambda to, memo="": "wired"}, approver=approver)
    results = []
    thread = threading.Thread(target=lambda: results.append(gateway.call(
        "bot", "wire", {"to": taint.user("ACME Ltd"), "memo": taint.user("invoice 2041, secret terms")})))
    thread.start()
    until(lambda: approver.pending)
    try:
        yield approver, results, thread
    finally:
        for request in list(approver.pending.values()):
            request.event.set()  # a test that failed midway must not leave the call waiting
        thread.join(10)
        approver.close()


def test_the_page_lists_a_pending_call_and_its_buttons_answer_it(pending):
    from selenium.webdriver.common.by import By

    approver, results, thread = pending
    driver = browser_or_skip()
    try:
        driver.get(f"{approver.url}/")  # no token
        until(lambda: "token" in driver.find_element(By.ID, "status").text)
        assert not driver.find_elements(By.CSS_SELECTOR, "#list li")
        driver.get(approver.page_url)
        item = until(lambda: driver.find_elements(By.CSS_SELECTOR, "#list li"))[0]
        text = item.text
        assert "bot wants wire" in text and "ACME Ltd" in text  # show = true
        assert "secret terms" not in text and "hidden" in text  # memo: redacted by default
        item.find_element(By.CSS_SELECTOR, "button.approve").click()
        thread.join(10)
        assert results and results[0].allowed
        until(lambda: driver.find_element(By.ID, "status").text.startswith("Approved"))
    finally:
        driver.quit()


def test_another_origin_can_neither_read_nor_answer(pending):
    approver, results, thread = pending
    (request_id,) = approver.pending
    elsewhere = Elsewhere(approver.url, request_id)
    driver = browser_or_skip()
    try:
        driver.get(elsewhere.url)
        title = until(lambda: driver.title)
        assert "read failed" in title, title  # no CORS headers: the list cannot be read across origins
        assert request_id in approver.pending and not results  # the text/plain POST answered nothing
    finally:
        driver.quit()
        elsewhere.close()
    answer = approver.pending[request_id]
    answer.answer = False
    answer.event.set()
    thread.join(10)
    assert results and not results[0].allowed
    assert json.dumps(results[0].reason)  # the gateway recorded the refusal
