"""Context pruning: passages join back into the text, TF-IDF scores as worked out by hand, a long prompt keeps its
system prompt, its question and the passages that share its words, in order, within the budget; the server
prunes with --prune-to and refuses without it."""

from __future__ import annotations

import math
import string

import httpx
import pytest
from conftest import Served

from pocketgpt.generate.chat import chat_ids
from pocketgpt.generate.prune import PASSAGE_CHARS, PromptTooLong, passages, prune_messages, prune_text, relevance
from pocketgpt.serve.server import Engine
from pocketgpt.tokenizers import CharTokenizer

TOK = CharTokenizer(string.ascii_letters + string.digits + " \n.,?!:", bos=False)
FILLER = ["The weather was mild and the river ran slowly past the mill.",
          "A farmer sold apples and pears at the market on Sunday.",
          "Three children played football in the park until dark.",
          "The old bridge was painted green last spring.",
          "Bread from the bakery sells out before nine each morning."]
FACT = "The blue box in room seven holds a silver key."
QUESTION = "What does the blue box in room seven hold?"


def document(fact_at: int, n: int = 12) -> str:
    paras = [FILLER[i % len(FILLER)] for i in range(n)]
    paras.insert(fact_at, FACT)
    return "\n\n".join(paras)


@pytest.mark.parametrize("text", ["", "one", "a\n\nb\n\n\n c\n", "\n\nlead", ("Sentence one. " * 300) + "\n\nend",
                                  "line\n" * 600, "x" * (3 * PASSAGE_CHARS)])
def test_passages_join_back_into_the_text(text):
    parts = passages(text)
    assert "".join(parts) == text and all(parts)
    assert all(len(p) <= PASSAGE_CHARS for p in parts if "x" * 10 not in p)  # one unbroken run cannot be split


def test_relevance_is_tf_idf_cosine():
    # idf = log(3 / 2) + 1 for x, y and z (each in one of the two texts); the query's vector is y's alone
    i = math.log(3 / 2) + 1
    got = relevance(["x y", "z z"], "y")
    assert got[0] == pytest.approx(i * i / (math.sqrt(2) * i * i)) and got[1] == 0
    assert relevance(["The y of the x", "z z"], "the Y") == got  # case and function words do not count
    assert relevance(["y y x", "y x x"], "y")[0] > relevance(["y y x", "y x x"], "y")[1]


@pytest.mark.parametrize("fact_at", [0, 6, 12])
def test_a_long_conversation_keeps_what_its_question_needs(fact_at):
    messages = [{"role": "system", "content": "Answer from the document."},
                {"role": "user", "content": document(fact_at) + "\n\n" + QUESTION}]
    full = chat_ids(TOK, messages)[0]
    budget = len(full) // 3
    ids, stops, pruned = prune_messages(TOK, messages, budget)
    text = TOK.decode(ids)
    assert len(ids) <= budget and pruned.tokens_before == len(full) and pruned.tokens_after == len(ids)
    assert "Answer from the document." in text and text.rstrip().endswith(QUESTION + "\n\nASSISTANT:")
    assert FACT in text and pruned.kept < pruned.passages
    content = text.split("USER:\n")[1].split("\n\nASSISTANT:")[0]
    assert chat_ids(TOK, [messages[0], {"role": "user", "content": content}]) == (ids, stops)
    kept, original = [p.strip() for p in passages(content)], iter(p.strip() for p in passages(messages[1]["content"]))
    assert all(p in original for p in kept) and len(kept) < 14  # whole passages removed, the rest in order


def test_a_prompt_that_fits_is_left_alone_and_one_that_cannot_is_refused():
    messages = [{"role": "user", "content": document(3)}]
    assert prune_messages(TOK, messages, 10_000) == (*chat_ids(TOK, messages), None)
    with pytest.raises(PromptTooLong, match="with only its system messages and its question"):
        prune_messages(TOK, [{"role": "system", "content": "s" * 100}, *messages], 50)
    ids, pruned = prune_text(TOK, document(0) + "\n\n" + QUESTION, 120)
    assert len(ids) <= 120 and TOK.decode(ids).endswith(QUESTION) and FACT in TOK.decode(ids)


def test_earlier_turns_go_least_relevant_first():
    messages = [{"role": "user", "content": FILLER[0]}, {"role": "assistant", "content": FACT},
                {"role": "user", "content": FILLER[1]}, {"role": "assistant", "content": FILLER[2]},
                {"role": "user", "content": QUESTION}]
    ids, _, pruned = prune_messages(TOK, messages, len(chat_ids(TOK, messages)[0]) - 60)
    text = TOK.decode(ids)
    assert FACT in text and QUESTION in text and FILLER[0] not in text and pruned.kept == 4


def test_the_server_prunes_with_prune_to_and_refuses_without(trained):
    model, ds, _, _ = trained
    tok = ds.tokenizer
    doc = document(4).lower()  # the shakespeare vocabulary has no digits
    body = {"model": "tiny", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": doc + "\n\nblue box?"}]}
    plain = Served(Engine(model, tok, "tiny", documents=False, slots=1, max_queue=1))
    pruning = Served(Engine(model, tok, "tiny", documents=False, slots=1, max_queue=1, prune_to=56))
    try:
        r = httpx.post(f"{plain.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        r = httpx.post(f"{pruning.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        usage, pruned = r.json()["usage"], r.json()["pruned"]
        assert usage["prompt_tokens"] == pruned["prompt_tokens"] <= 56
        assert pruned["prompt_tokens_before"] > 400 and pruned["passages_kept"] < pruned["passages"]
        r = httpx.post(f"{pruning.url}/v1/completions", json={"model": "tiny", "prompt": doc, "max_tokens": 4},
                       timeout=60)
        assert r.status_code == 200 and r.json()["pruned"]["prompt_tokens"] <= 56
        r = httpx.post(f"{pruning.url}/v1/chat/completions", json={**body, "messages": [
            {"role": "system", "content": "be brief. " * 8}, *body["messages"]]}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    finally:
        plain.close()
        pruning.close()
