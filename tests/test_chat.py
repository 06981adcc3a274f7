"""Chat: templates rendered as transformers renders them, conversations fitted to the context (the oldest turns
dropped, never the system prompt), the chat command's session (/system, /reset, Ctrl-C stops a reply, Ctrl-D
leaves) and the server's chat endpoint using the model's own template."""

from __future__ import annotations

import builtins
import io
import json

import pytest
from conftest import Served
from transformers import PreTrainedTokenizerFast

from pocketgpt.cli import chat as chat_cli
from pocketgpt.cli import main
from pocketgpt.config import PRESETS
from pocketgpt.data import read_text
from pocketgpt.errors import InputError
from pocketgpt.generate import Sampling
from pocketgpt.generate.chat import fit_conversation
from pocketgpt.model import GPT
from pocketgpt.serve.server import Engine
from pocketgpt.tokenizers import BPETokenizer
from pocketgpt.tokenizers.bpe import train_bpe
from pocketgpt.tokenizers.chat import chat_text, render
from pocketgpt.tokenizers.hf import bpe_tokenizer_json
from pocketgpt.train import Checkpoint, save_checkpoint

CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
          "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    base = train_bpe(read_text("shakespeare")[0][:60_000], 300, special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    return BPETokenizer(base.vocab, base.merges, base.special, bos=base.vocab["<|im_start|>"],
                        eos=base.vocab["<|im_end|>"], chat_template=CHATML)


@pytest.fixture(scope="module")
def chat_model(tok, tmp_path_factory):
    config = PRESETS["smollm2-135m"].replace(vocab_size=tok.vocab_size, block_size=96, n_layer=2, n_embd=32,
                                             n_head=4, n_kv_head=2, ffn_size=48)
    folder = tmp_path_factory.mktemp("chat") / "model"
    model = GPT(config, seed=0)
    save_checkpoint(folder, Checkpoint.of(model, tok, {"mode": "text"}))
    return folder, model


def test_templates_render_as_transformers_renders_them(tok, tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps(bpe_tokenizer_json(tok)))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    hf.chat_template = CHATML
    for messages in ([{"role": "user", "content": "Hi"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again?"}]):
        for prompt in (True, False):
            assert render(CHATML, messages, prompt) == hf.apply_chat_template(messages, tokenize=False,
                                                                              add_generation_prompt=prompt)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    assert chat_text(tok, parts)[0].endswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    assert tok.encode("<|im_start|>user")[0] == tok.vocab["<|im_start|>"]  # special tokens are whole tokens


def test_the_oldest_turns_go_first_and_the_system_prompt_stays(tok):
    turns = [{"role": "system", "content": "Rule one."}]
    for i in range(6):
        turns += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": f"answer {i}"}]
    turns.append({"role": "user", "content": "last"})
    full = len(fit_conversation(tok, turns, 10_000)[1])
    kept, ids, _ = fit_conversation(tok, turns, full - 1)
    assert kept[0] == turns[0] and kept[-1] == turns[-1] and len(kept) < len(turns) and len(ids) <= full - 1
    assert kept[1:] == turns[len(turns) - len(kept) + 1:]  # a suffix of the conversation
    with pytest.raises(InputError, match="even without its earlier turns"):
        fit_conversation(tok, turns, 5)


def test_a_chat_session(chat_model, monkeypatch, capsys):
    folder, _ = chat_model
    lines = iter(["/system Speak like a pirate.", "hello", "/reset", "again", KeyboardInterrupt, "stop me"])
    seen = []

    def fake_input(prompt=""):
        line = next(lines, EOFError)
        if isinstance(line, type) and issubclass(line, BaseException):
            raise line
        return line

    real = chat_cli.Chat.reply

    def reply(self, text, out):
        seen.append([m["content"] for m in self.messages()] + [text])
        if text == "stop me":  # Ctrl-C while the reply is being written
            monkeypatch.setattr(chat_cli, "decode", interrupted)
        return real(self, text, out)

    def interrupted(*args, **kwargs):
        yield 5
        raise KeyboardInterrupt

    monkeypatch.setattr(builtins, "input", fake_input)
    monkeypatch.setattr(chat_cli.Chat, "reply", reply)
    assert main(["chat", str(folder), "--temperature", "0", "--max-tokens", "6"]) == 0  # ends at Ctrl-D
    out = capsys.readouterr().out
    assert seen[0] == ["Speak like a pirate.", "hello"]
    assert seen[1] == ["Speak like a pirate.", "again"]  # /reset forgot the first turn, not the system prompt
    assert seen[2][-1] == "stop me" and out.rstrip().endswith("[stopped]")


def test_one_answer_with_p(chat_model, capsys):
    folder, model = chat_model
    assert main(["chat", str(folder), "-p", "hello", "--temperature", "0", "--max-tokens", "5"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_the_server_uses_the_models_template(chat_model, tok):
    _, model = chat_model
    s = Served(Engine(model, tok, "chatml", documents=False, slots=2, max_queue=2))
    try:
        messages = [{"role": "user", "content": "hello"}]
        r = s.client.chat.completions.create(model="chatml", messages=messages, max_tokens=4, temperature=0)
        assert r.usage.prompt_tokens == len(tok.encode(chat_text(tok, messages)[0]))
        text = io.StringIO()  # what the chat command answers to the same message
        chat_cli.Chat(Checkpoint.of(model, tok, {"mode": "text"}), Sampling(temperature=0), 4, 96, None).reply("hello",
                                                                                                           text)
        assert r.choices[0].message.content + "\n" == text.getvalue()
    finally:
        s.close()
