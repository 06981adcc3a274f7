"""Bad input at the command line: each a one-line error with exit code 2 (or a clear verdict with exit 1), never a
traceback, and nothing already saved lost or half-written. Also what a user expects to find: --version, help
text with defaults for every flag, one default temperature."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

from pocketgpt.cli import build_parser, main
from pocketgpt.config import PRESETS
from pocketgpt.files import atomic_file, write_text
from pocketgpt.generate import Sampling
from pocketgpt.model import GPT
from pocketgpt.train import Checkpoint, load_checkpoint, load_dataset, save_checkpoint


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors and --help/--version
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(argv, capsys, message: str) -> None:
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def names(tmp_path_factory):
    out = tmp_path_factory.mktemp("names") / "names"
    assert main(["train", "--steps", "30", "--out", str(out), "--samples", "0"]) == 0
    return out


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    ds = load_dataset("shakespeare")
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=65, n_layer=1, n_embd=32, block_size=32)
    out = tmp_path_factory.mktemp("text") / "text"
    save_checkpoint(out, Checkpoint.of(GPT(config, seed=0), ds.tokenizer, ds.spec()))
    return out


def subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in subparsers(sub))


def test_every_command_has_help_and_every_flag_says_what_it_does_and_its_default(capsys):
    for name, sub in subparsers(build_parser()):
        sub.format_help()  # a stray % in a help string would raise here
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            default = action.default
            if action.option_strings and default not in (None, False, [], argparse.SUPPRESS):
                assert "default" in action.help, f"{name} {action.option_strings}: help names no default"
    code, out, _ = run(["vla", "--help"], capsys)
    assert code == 0 and "collect" in out


def test_version(capsys):
    from pocketgpt import __version__

    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"pocketgpt {__version__}"


def test_one_default_temperature(capsys):
    sample = dict(subparsers(build_parser()))["sample"]
    assert next(a.default for a in sample._actions if a.dest == "temperature") == Sampling().temperature


def test_seeds(names, capsys):
    one_line_error(["train", "--seed", "-1", "--steps", "1", "--out", str(names.parent / "s")], capsys,
                   "--seed must be in 0..")
    code, out, _ = run(["sample", str(names), "--seed", "-1", "--count", "2"], capsys)  # -1: fresh randomness
    assert code == 0 and len(out.splitlines()) == 2


def test_resume_below_the_saved_step(names, tmp_path, capsys):
    shutil.copytree(names, tmp_path / "run")
    one_line_error(["train", "--resume", str(tmp_path / "run"), "--steps", "10"], capsys,
                   "the checkpoint is at step 30, beyond the 10 steps asked for")


def test_a_model_too_large_for_memory(tmp_path, capsys):
    one_line_error(["train", "--block-size", "1000000000", "--out", str(tmp_path / "big")], capsys,
                   "out of memory: training")


def test_a_port_out_of_range(names, capsys):
    one_line_error(["serve", str(names), "--port", "99999"], capsys, "must be a TCP port in 1..65535")


def test_a_tokenizer_shortened_by_hand(names, tmp_path, capsys):
    shutil.copytree(names, tmp_path / "cut")
    cfg = json.loads((tmp_path / "cut" / "config.json").read_text())
    cfg["tokenizer"]["chars"] = cfg["tokenizer"]["chars"][:20]
    (tmp_path / "cut" / "config.json").write_text(json.dumps(cfg))
    one_line_error(["sample", str(tmp_path / "cut")], capsys, "the tokenizer has 21 tokens but the model 27")


def test_training_onto_an_existing_checkpoint(names, tmp_path, capsys):
    shutil.copytree(names, tmp_path / "mine")
    before = (tmp_path / "mine" / "model.safetensors").read_bytes()
    one_line_error(["train", "--steps", "5", "--out", str(tmp_path / "mine")], capsys,
                   "already holds a checkpoint; pass --force to replace it")
    assert (tmp_path / "mine" / "model.safetensors").read_bytes() == before
    assert run(["train", "--steps", "5", "--out", str(tmp_path / "mine"), "--force", "--samples", "0"], capsys)[0] == 0
    assert load_checkpoint(tmp_path / "mine", train_state=True).train_state["step"] == 5


def test_import_onto_an_existing_checkpoint(names, text_model, tmp_path, capsys):
    assert run(["export", str(text_model), str(tmp_path / "hf"), "--format", "hf"], capsys)[0] == 0
    shutil.copytree(names, tmp_path / "mine")
    one_line_error(["import", str(tmp_path / "hf"), str(tmp_path / "mine")], capsys, "already holds a checkpoint")
    one_line_error(["import", str(tmp_path / "hf"), str(tmp_path / "hf")], capsys, "is the input itself")


def test_a_full_disk_while_training_keeps_the_last_checkpoint(names, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    import pocketgpt.train.checkpoint as checkpoint

    shutil.copytree(names, tmp_path / "run")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    code, _, err = run(["train", "--resume", str(tmp_path / "run"), "--steps", "40", "--samples", "0"], capsys)
    assert code == 2 and "Traceback" not in err  # training had started (its status line came first)
    assert err.strip().splitlines()[-1].startswith("pocketgpt train: error: could not write the checkpoint")
    assert "No space left on device (os error 28); the previous contents are unchanged" in err
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_full_disk_while_exporting_gguf_leaves_no_file(text_model, tmp_path, capsys, monkeypatch):
    import gguf

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", full)
    out = tmp_path / "names.gguf"
    one_line_error(["export", str(text_model), str(out), "--format", "gguf"], capsys,
                   f"{out}: could not write the file (No space left on device)")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    write_text(tmp_path / "vocab.json", "old")
    with pytest.raises(KeyboardInterrupt), atomic_file(tmp_path / "vocab.json") as tmp:
        tmp.write_text("half of the new")
        raise KeyboardInterrupt
    assert (tmp_path / "vocab.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["vocab.json"]


def test_tokenizer_train_refuses_to_replace_a_tokenizer(tmp_path, capsys):
    (tmp_path / "text.txt").write_text("hello world, hello tokens " * 50)
    assert run(["tokenizer", "train", str(tmp_path / "text.txt"), "--vocab-size", "270", "--out",
                str(tmp_path / "tok")], capsys)[0] == 0
    vocab = (tmp_path / "tok" / "vocab.json").read_text()
    one_line_error(["tokenizer", "train", str(tmp_path / "text.txt"), "--vocab-size", "280", "--out",
                    str(tmp_path / "tok")], capsys, "already holds a tokenizer; pass --force")
    assert (tmp_path / "tok" / "vocab.json").read_text() == vocab


def test_json_output_is_always_valid_json(names, capsys, monkeypatch):
    import pocketgpt.cli.examine as examine

    monkeypatch.setattr(examine, "evaluate", lambda *a, **k: float("nan"))
    code, out, _ = run(["eval", str(names), "--json"], capsys)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    assert code == 0 and json.loads(out.splitlines()[-1], parse_constant=refuse)["val_loss"] is None


def test_guard_verify_on_a_damaged_log(tmp_path, capsys):
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b'{"seq": "zero", "hash": "x"}\n\xff\xfe not text\n')
    code, _, err = run(["guard", "verify", str(log)], capsys)
    assert code == 1 and "Traceback" not in err
    assert "line 1: its record number is not an integer" in err and "line 2: not UTF-8 text" in err


def test_guard_redteam_with_a_binary_policy(tmp_path, capsys):
    (tmp_path / "policy.toml").write_bytes(b"\x00\xff\x13binary")
    one_line_error(["guard", "redteam", str(tmp_path / "policy.toml")], capsys, "not a policy file")


def test_info_describes_a_checkpoint_and_flags_a_damaged_file(names, tmp_path, capsys):
    code, out, _ = run(["info", str(names), "--json"], capsys)
    info = json.loads(out.splitlines()[-1])
    assert code == 0 and info["parameters"] == 4192 and info["training"]["step"] == 30
    assert {f["name"]: f["digest"] for f in info["files"]} == {"model.safetensors": "ok", "train_state.json": "ok",
                                                               "train_state.safetensors": "ok"}
    assert "architecture: 1 layer, 16 channels" in out
    shutil.copytree(names, tmp_path / "bad")
    data = bytearray((tmp_path / "bad" / "model.safetensors").read_bytes())
    data[-3] ^= 1
    (tmp_path / "bad" / "model.safetensors").write_bytes(bytes(data))
    code, out, _ = run(["info", str(tmp_path / "bad")], capsys)
    assert code == 1 and "model.safetensors" in out and "changed" in out


def test_fine_tuning_from_a_checkpoint(names, tmp_path, capsys):
    code, out, _ = run(["train", "--init-from", str(names), "--data", "names", "--steps", "20", "--out",
                        str(tmp_path / "tuned"), "--samples", "0", "--json"], capsys)
    assert code == 0 and json.loads(out.splitlines()[-1])["steps"] == 20
    tuned = load_checkpoint(tmp_path / "tuned", train_state=True)
    start = load_checkpoint(names)
    assert tuned.data["init_from"] == str(names) and tuned.train_state["step"] == 20
    assert tuned.train_state["settings"]["lr"] == 1e-4  # fine-tuning's defaults, not the preset's
    assert not np.array_equal(tuned.params["wte.weight"], start.params["wte.weight"])
    one_line_error(["train", "--init-from", str(names), "--n-layer", "2"], capsys, "keeps the checkpoint's")


def test_text_samples_are_separated(text_model, capsys):
    code, out, _ = run(["sample", str(text_model), "--count", "3", "--max-tokens", "20", "--seed", "0"], capsys)
    assert code == 0 and out.count("\n---\n") == 2
