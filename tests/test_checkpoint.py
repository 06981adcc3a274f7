"""Checkpoints: round trip, every kind of bad file as a clear error, and atomic saves."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pocketgpt.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from pocketgpt.config import PRESETS
from pocketgpt.model import GPT
from pocketgpt.tokenizer import CharTokenizer


def make(seed=0) -> Checkpoint:
    tok = CharTokenizer("abcdefghij", bos=True)
    model = GPT(PRESETS["microgpt"].replace(vocab_size=tok.vocab_size), seed=seed)
    return Checkpoint(model.config, model.params, tok, "float32", {"data": "names", "mode": "lines"})


def test_round_trip(tmp_path):
    ckpt = make()
    save_checkpoint(tmp_path / "c", ckpt)
    back = load_checkpoint(tmp_path / "c")
    assert back.config == ckpt.config and back.data == ckpt.data
    assert back.tokenizer.to_dict() == ckpt.tokenizer.to_dict()
    for k, v in ckpt.params.items():
        np.testing.assert_array_equal(back.params[k], v)
    assert json.loads((tmp_path / "c" / "config.json").read_text())["format_version"] == 1


def test_missing_truncated_corrupt_and_foreign_files(tmp_path):
    path = tmp_path / "c"
    with pytest.raises(CheckpointError, match="no such folder"):
        load_checkpoint(path)
    save_checkpoint(path, make())
    weights = path / "model.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors is truncated \(expected [\d,]+ bytes, found"):
        load_checkpoint(path)
    weights.write_bytes(b"\x00garbage" * 3)
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_checkpoint(path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(path)

    (path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match="not a pocketgpt file"):
        load_checkpoint(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config(tmp_path):
    save_checkpoint(tmp_path / "c", make())
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["model"]["n_embd"] = 32
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wte.weight has shape"):
        load_checkpoint(tmp_path / "c")


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c"
    first = make(seed=1)
    save_checkpoint(path, first)
    real_rename = os.rename
    calls = []

    def crash_after_first_rename(src, dst):  # the old folder moved aside, then the process dies
        real_rename(src, dst)
        calls.append(dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", crash_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, make(seed=2))
    monkeypatch.setattr(os, "rename", real_rename)
    assert not path.exists()  # the half-done swap ...
    back = load_checkpoint(path)  # ... is finished on the next load, with the previous checkpoint
    np.testing.assert_array_equal(back.params["wte.weight"], first.params["wte.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        save_checkpoint(tmp_path, make())
    assert (tmp_path / "precious.txt").read_text() == "keep me"
