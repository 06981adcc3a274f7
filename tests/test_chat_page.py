"""The chat page at / in a real headless browser (Debian's chromium, driven by Selenium through chromedriver): a
wrong API key shows the server's error, a reply streams in token by token and equals the server's own answer, and
Stop ends a reply midway and frees its slot. .ci/run installs chromium and chromium-driver where they are missing
and sets POCKETGPT_BROWSER_TESTS=required, so that there the test fails rather than skips without them."""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import Served, browser_or_skip, until

from pocketgpt.config import PRESETS
from pocketgpt.generate import Batcher
from pocketgpt.model import GPT
from pocketgpt.serve.access import Access
from pocketgpt.serve.server import Engine, chat_page
from pocketgpt.train import load_dataset

KEY = "page-key"


class SlowBatcher(Batcher):
    pause = 0.02  # seconds per step, so that a reply takes long enough to watch and to stop

    def step(self) -> None:
        time.sleep(self.pause)
        super().step()


@pytest.fixture(scope="module")
def page():
    """The page of a server with an API key over a random one-layer character model (its greedy replies run on
    without the blank line that ends a reply, so that they are long enough to watch and to stop)."""
    tokenizer = load_dataset("shakespeare").tokenizer
    model = GPT(PRESETS["shakespeare-cpu"].replace(vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=32,
                                                   init_std=0.5), seed=0)
    engine = Engine(model, tokenizer, "tiny", documents=False, slots=2, max_queue=2, batcher=SlowBatcher(model, 2))
    server = Served(engine, access=Access(api_key=KEY))
    driver = browser_or_skip()
    try:
        driver.get(f"{server.url}/")
        yield driver, server
    finally:
        driver.quit()
        server.close()


def set_field(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)


def say(driver, text: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "input").send_keys(text)
    driver.find_element(By.ID, "send").click()


def replies(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, ".msg.assistant")


def test_the_page_is_one_file_that_fetches_nothing_else(page):
    _, server = page
    r = httpx.get(f"{server.url}/")  # no key needed for the page itself
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy
    html, _ = chat_page()
    assert r.text == html and "src=" not in html and "href=" not in html and "@import" not in html


def test_a_wrong_key_shows_the_servers_error(page):
    from selenium.webdriver.common.by import By

    driver, _ = page
    set_field(driver, "key", "wrong")
    say(driver, "Hello")
    error = until(lambda: driver.find_element(By.ID, "error").text)
    assert "a valid API key is needed" in error
    assert replies(driver) == [] and driver.find_elements(By.CSS_SELECTOR, ".msg") == []
    assert driver.find_element(By.ID, "input").get_attribute("value") == "Hello"  # back, to send again
    driver.find_element(By.ID, "input").clear()


def greedy_reply(server, messages: list[dict], max_tokens: int | None = None) -> str:
    body = {"model": "tiny", "temperature": 0, "messages": messages,
            **({"max_tokens": max_tokens} if max_tokens else {})}
    r = httpx.post(f"{server.url}/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, timeout=60,
                   json=body)
    return r.json()["choices"][0]["message"]["content"]


def same_text(a: str, b: str) -> bool:  # what the page shows, as the browser reports it, and what the server sent
    return a.split() == b.split()


def test_a_reply_streams_in_and_stop_ends_one_midway(page):
    from selenium.webdriver.common.by import By

    driver, server = page  # the model's context is 64 characters: no system prompt, one turn at a time
    set_field(driver, "key", KEY)
    set_field(driver, "system", "")
    set_field(driver, "temperature", "0")
    set_field(driver, "max-tokens", "30")
    say(driver, "Speak.")
    seen, deadline = [], time.monotonic() + 60
    while driver.find_element(By.ID, "send").get_attribute("disabled") or not seen:
        assert time.monotonic() < deadline, (seen, driver.find_element(By.ID, "error").text)
        texts = [r.text for r in replies(driver)]
        if texts and texts[-1] and (not seen or texts[-1] != seen[-1]):
            seen.append(texts[-1])
        time.sleep(0.005)
    assert len(seen) >= 3 and all(b.startswith(a) for a, b in zip(seen, seen[1:]))  # grew piece by piece
    assert driver.find_element(By.ID, "error").text == ""
    assert same_text(replies(driver)[-1].text, greedy_reply(server, [{"role": "user", "content": "Speak."}], 30))

    server.engine.batcher.pause = 0.1
    driver.find_element(By.ID, "clear").click()
    set_field(driver, "max-tokens", "")  # the server's default: what the context holds
    say(driver, "Go on.")
    until(lambda: len(replies(driver)) == 1 and len(replies(driver)[-1].text) > 3)
    driver.find_element(By.ID, "stop").click()
    until(lambda: "stopped" in replies(driver)[-1].get_attribute("class"))
    stopped = replies(driver)[-1].text
    time.sleep(0.5)
    assert replies(driver)[-1].text == stopped  # nothing more arrives
    until(lambda: server.engine.batcher.load() == 0)  # its slot is freed
    assert not driver.find_element(By.ID, "send").get_attribute("disabled")
    server.engine.batcher.pause = 0.0
    full = greedy_reply(server, [{"role": "user", "content": "Go on."}])
    words = stopped.split()  # the reply so far: the start of the whole reply (its last word perhaps cut)
    assert len(words) < len(full.split()) and full.split()[:len(words) - 1] == words[:-1]
