"""The README's examples run as written: its Python blocks (the OpenAI client against a served Shakespeare
model, the guard, the library's training API) and the Quickstart's first commands."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
from conftest import Served

from pocketgpt.cli import main
from pocketgpt.serve.server import Engine

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def block(marker: str) -> str:
    found = [b for b in BLOCKS if marker in b]
    assert len(found) == 1, f"one README block holds {marker!r}"
    return found[0]


def run_block(code: str) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    return out.getvalue().splitlines()


def test_every_python_block_is_tested():
    assert len(BLOCKS) == 3


def test_the_openai_example_against_the_shakespeare_model(trained):
    model, ds, _, _ = trained
    s = Served(Engine(model, ds.tokenizer, "shakespeare", documents=False, slots=2, max_queue=2))
    try:
        code = block("from openai import OpenAI").replace("127.0.0.1:8000", f"127.0.0.1:{s.port}")
        assert "".join(run_block(code)).strip()
    finally:
        s.close()


def test_the_guard_example():
    assert run_block(block("from pocketgpt.guard import")) == ["allow allow", "deny flow.untrusted:to"]


def test_the_python_api_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loss, *sample = run_block(block("from pocketgpt.train import"))
    assert float(loss) < 2.6 and len("".join(sample)) > 100  # 200 characters of continuation
    assert (tmp_path / "out" / "shakespeare-short" / "model.safetensors").is_file()


@pytest.mark.parametrize("command", ["pocketgpt train", "pocketgpt sample out/names --prompt ka --count 5"])
def test_the_quickstart_commands(command, tmp_path_factory, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path_factory.getbasetemp())
    assert f"`{command}" in README.replace("\n", " ")
    assert main(shlex.split(command)[1:]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == (10 if command.endswith("train") else 5)
    if "--prompt ka" in command:
        assert all(line.startswith("ka") for line in lines)
