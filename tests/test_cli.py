"""The command line: the golden train -> sample -> eval path, --json, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pocketgpt.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "names"
    assert main(["train", "--steps", "40", "--out", str(out), "--samples", "3", "--json"]) == 0
    return out


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_train_prints_samples_and_json(tmp_path, capsys):
    assert main(["train", "--steps", "30", "--out", str(tmp_path / "r"), "--samples", "2", "--json"]) == 0
    result = last_json(capsys)
    assert result["steps"] == 30 and len(result["samples"]) == 2 and result["val_loss"] < 3.3
    assert (tmp_path / "r" / "model.safetensors").is_file() and (tmp_path / "r" / "train_state.json").is_file()


def test_sample_is_reproducible_with_a_seed(trained, capsys):
    assert main(["sample", str(trained), "--count", "3", "--seed", "1", "--prompt", "a"]) == 0
    first = capsys.readouterr().out
    assert main(["sample", str(trained), "--count", "3", "--seed", "1", "--prompt", "a"]) == 0
    assert capsys.readouterr().out == first
    assert all(line.startswith("a") for line in first.splitlines()) and len(first.splitlines()) == 3


def test_eval_reports_loss_perplexity_and_bits(trained, capsys):
    assert main(["eval", str(trained), "--json"]) == 0
    r = last_json(capsys)
    assert abs(r["perplexity"] - 2.718281828459045 ** r["val_loss"]) < 1e-9
    assert abs(r["bits_per_char"] * 0.6931471805599453 - r["val_loss"]) < 1e-12


def test_resume_extends_a_run(trained, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    assert main(["train", "--resume", str(copy), "--steps", "45", "--samples", "0", "--json"]) == 0
    assert last_json(capsys)["steps"] == 45
    assert main(["train", "--resume", str(copy), "--lr", "0.5"]) == 2
    assert "--lr cannot change when resuming a run" in capsys.readouterr().err


def test_reproduce_microgpt_flag(capsys):
    assert main(["train", "--reproduce-microgpt", "--steps", "20", "--json"]) == 0
    r = last_json(capsys)
    assert r["samples"][:3] == ["orhx", "pdi", "zoqnadn"]


@pytest.mark.parametrize("argv,message", [
    (["train", "--steps", "0"], "--steps: must be >= 1"),
    (["train", "--lr", "abc"], "invalid float value"),
    (["train", "--lr", "-1", "--steps", "1"], "lr must be > 0"),
    (["train", "--data", "nope.txt"], "no such file"),
    (["train", "--preset", "huge"], "invalid choice"),
    (["sample", "/nonexistent/ckpt"], "no such folder"),
    (["eval", "/nonexistent/ckpt"], "no such folder"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_unknown_character_in_prompt(trained, capsys):
    assert main(["sample", str(trained), "--prompt", "Q!"]) == 2
    err = capsys.readouterr().err
    assert "character 'Q' is not in the vocabulary" in err and len(err.strip().splitlines()) == 1


def test_corrupt_checkpoint_exit_code_through_the_console_script(trained, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:100])
    r = subprocess.run([sys.executable, "-m", "pocketgpt", "eval", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "model.safetensors is truncated" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_out_that_is_not_a_checkpoint_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["train", "--steps", "5", "--out", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
