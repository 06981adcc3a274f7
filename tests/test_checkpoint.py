"""Checkpoints: round trip, every kind of bad file as a clear error, and atomic saves."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pocketgpt.config import PRESETS
from pocketgpt.model import GPT
from pocketgpt.tokenizers import CharTokenizer
from pocketgpt.train import Checkpoint, CheckpointError, CheckpointExists, load_checkpoint, save_checkpoint


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
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["format_version"] == 2 and set(cfg["files"]) == {"model.safetensors"}


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
        save_checkpoint(path, make(seed=2), overwrite=True)
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


def test_an_existing_checkpoint_is_replaced_only_when_asked(tmp_path):
    save_checkpoint(tmp_path / "c", make(seed=1))
    with pytest.raises(CheckpointExists, match="already holds a checkpoint"):
        save_checkpoint(tmp_path / "c", make(seed=2))
    assert load_checkpoint(tmp_path / "c").params["wte.weight"][0, 0] == make(seed=1).params["wte.weight"][0, 0]
    save_checkpoint(tmp_path / "c", make(seed=2), overwrite=True)
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "c").params["wte.weight"],
                                  make(seed=2).params["wte.weight"])


def test_a_flipped_byte_is_caught_by_its_digest(tmp_path):
    save_checkpoint(tmp_path / "c", make())
    weights = tmp_path / "c" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10  # inside the last tensor's values: safetensors itself would load this happily
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors does not match its SHA-256"):
        load_checkpoint(tmp_path / "c")


def test_non_finite_weights_are_refused(tmp_path):
    ckpt = make()
    ckpt.params = {**ckpt.params, "wte.weight": ckpt.params["wte.weight"].copy()}
    ckpt.params["wte.weight"][3, 1] = np.nan
    save_checkpoint(tmp_path / "c", ckpt)
    with pytest.raises(CheckpointError, match="wte.weight holds NaN or infinite values"):
        load_checkpoint(tmp_path / "c")


@pytest.mark.parametrize("name", ["../../vocab.json", "/etc/passwd", "sub/vocab.json", ".."])
def test_tokenizer_files_are_read_inside_the_folder_only(tmp_path, name):
    from pocketgpt.tokenizers.bpe import train_bpe

    ckpt = make()
    ckpt.tokenizer = train_bpe("some text to learn from " * 20, 270)
    ckpt.config = ckpt.config.replace(vocab_size=ckpt.tokenizer.vocab_size)
    ckpt.params = GPT(ckpt.config).params
    save_checkpoint(tmp_path / "c", ckpt)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["tokenizer"]["vocab"] = name
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="must be a plain name of a file inside"):
        load_checkpoint(tmp_path / "c")


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c", make())
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["tokenizer"]["chars"] = cfg["tokenizer"]["chars"][:-3]  # shortened by hand
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="the tokenizer has 8 tokens but the model 11"):
        load_checkpoint(tmp_path / "c")


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_temporary_folder(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import pocketgpt.train.checkpoint as checkpoint

    save_checkpoint(tmp_path / "c", make(seed=1))

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(CheckpointError, match="could not write the checkpoint .*No space left on device"):
        save_checkpoint(tmp_path / "c", make(seed=2), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "c").params["wte.weight"],
                                  make(seed=1).params["wte.weight"])


def test_version_1_checkpoints_still_load(tmp_path):
    save_checkpoint(tmp_path / "c", make())
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["format_version"] = 1
    del cfg["files"]
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "c").params["wte.weight"], make().params["wte.weight"])
