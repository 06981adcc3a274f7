"""Hugging Face GPT-2 interop, checked against transformers itself: export, import, tokenizers, errors.

Models are built locally with random weights; nothing is downloaded.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from pocketgpt.cli import main
from pocketgpt.config import PRESETS
from pocketgpt.data import read_text
from pocketgpt.generate import Sampling, generate
from pocketgpt.interop.hf import InteropError, export_hf, import_hf
from pocketgpt.model import GPT
from pocketgpt.tokenizers.bpe import train_bpe
from pocketgpt.train import Checkpoint, load_checkpoint, load_dataset, save_checkpoint

LOGITS_ATOL = 1e-4  # float32, two implementations of the same math


def hf_logits(folder, ids) -> np.ndarray:
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits.numpy()[0]


@pytest.mark.parametrize("preset,data", [("shakespeare-cpu", "shakespeare"), ("gpt2", "names")])
def test_export_loads_in_transformers_with_same_logits_and_tokenizer(tmp_path, preset, data):
    ds = load_dataset(data)
    config = PRESETS[preset].replace(vocab_size=ds.tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=32,
                                     block_size=64)
    model = GPT(config, seed=1)
    for p in model.params.values():  # non-trivial biases and gains
        p += np.random.default_rng(0).standard_normal(p.shape).astype(p.dtype) * 0.05
    export_hf(Checkpoint(config, model.params, ds.tokenizer, "float32", ds.spec()), tmp_path)

    _, info = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    text = "First Citizen:\nBefore we proceed" if data == "shakespeare" else "emma"
    ids = ds.tokenizer.encode(text)
    ours = model.forward(np.array([ids]))[0][0]
    assert np.abs(hf_logits(tmp_path, ids) - ours).max() < LOGITS_ATOL

    tok = AutoTokenizer.from_pretrained(tmp_path)
    sample = SAMPLE[data]
    assert tok(sample)["input_ids"] == ds.tokenizer.encode(sample)
    assert tok.decode(ds.tokenizer.encode(sample)) == sample


SAMPLE = {"shakespeare": "ROMEO:\nWhat, ho! apothecary!\n\n  Come hither, man.", "names": "zoe"}


def test_export_refuses_what_gpt2_cannot_express(tmp_path):
    ds = load_dataset("names")
    config = PRESETS["microgpt"].replace(vocab_size=27)
    with pytest.raises(InteropError, match="neither GPT-2 nor Llama can express this model: norm rmsnorm"):
        export_hf(Checkpoint(config, GPT(config).params, ds.tokenizer), tmp_path)


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(read_text("shakespeare")[0][:100_000], 300)


def random_gpt2(bpe, n_layer=2) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=bpe.vocab_size, n_positions=64, n_embd=32, n_layer=n_layer, n_head=4,
                        initializer_range=0.3, bos_token_id=bpe.bos, eos_token_id=bpe.bos)
    return GPT2LMHeadModel(config).eval()


def check_same_model(hf: GPT2LMHeadModel, folder, bpe):
    ckpt = import_hf(folder)
    model = ckpt.model()
    ids = bpe.encode("ROMEO: wherefore art thou, Romeo?")
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()[0]
        theirs = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                             pad_token_id=bpe.bos)[0, len(ids):].tolist()
    assert np.abs(model.forward(np.array([ids]))[0][0] - ref).max() < LOGITS_ATOL
    ours = list(generate(model, ids, max_new_tokens=24, sampling=Sampling(temperature=0)))
    assert ours == theirs[:len(ours)] and len(set(ours)) > 3  # a varied continuation, token for token
    assert ckpt.tokenizer.encode("ROMEO: wherefore") == bpe.encode("ROMEO: wherefore")


def test_import_safetensors_layout(tmp_path, bpe):
    hf = random_gpt2(bpe)
    hf.save_pretrained(tmp_path)
    bpe.save(tmp_path)
    check_same_model(hf, tmp_path, bpe)


def test_import_original_gpt2_pytorch_bin_layout(tmp_path, bpe):
    """gpt2's and distilgpt2's own files: keys without 'transformer.', causal-mask buffers, a .bin."""
    hf = random_gpt2(bpe, n_layer=3)
    hf.config.save_pretrained(tmp_path)
    state = dict(hf.transformer.state_dict())
    for i in range(3):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
    torch.save(state, tmp_path / "pytorch_model.bin")
    bpe.save(tmp_path)
    check_same_model(hf, tmp_path, bpe)


def test_imported_model_samples_evaluates_and_round_trips_through_the_cli(tmp_path, bpe, capsys):
    hf = random_gpt2(bpe)
    hf.save_pretrained(tmp_path / "hf")
    bpe.save(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    assert main(["sample", str(tmp_path / "ckpt"), "--prompt", "KING", "--max-tokens", "5", "--count", "1"]) == 0
    assert capsys.readouterr().out.startswith("KING")
    assert main(["eval", str(tmp_path / "ckpt"), "--data", "shakespeare", "--json"]) == 0
    assert np.isfinite(json.loads(capsys.readouterr().out.splitlines()[-1])["val_loss"])
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "back"), "--format", "hf"]) == 0
    ids = bpe.encode("to be or not")
    assert np.abs(hf_logits(tmp_path / "back", ids) - hf_logits(tmp_path / "hf", ids)).max() < LOGITS_ATOL
    assert load_checkpoint(tmp_path / "ckpt").config.bias


def test_import_errors_are_one_line_with_exit_code_2(tmp_path, bpe, capsys):
    def run(*argv):
        capsys.readouterr()  # drop what transformers printed while saving the fixture
        code = main(["import", *argv, str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "no such folder" in run(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "config.json is missing" in run(str(tmp_path / "empty"))
    hf = random_gpt2(bpe)
    hf.save_pretrained(tmp_path / "llama")
    cfg = json.loads((tmp_path / "llama" / "config.json").read_text())
    (tmp_path / "llama" / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen3"}))
    assert "model_type 'qwen3' is not supported" in run(str(tmp_path / "llama"))
    hf.save_pretrained(tmp_path / "shapes")
    (tmp_path / "shapes" / "config.json").write_text(json.dumps({**cfg, "n_embd": 64}))
    assert "has shape" in run(str(tmp_path / "shapes"))
    hf.save_pretrained(tmp_path / "notok")
    assert "vocab.json is missing" in run(str(tmp_path / "notok"))
    big = train_bpe(read_text("shakespeare")[0][:50_000], 400)
    hf.save_pretrained(tmp_path / "mismatch")
    big.save(tmp_path / "mismatch")
    assert "do not belong together" in run(str(tmp_path / "mismatch"))


@pytest.mark.parametrize("data", ["names", "shakespeare"])
def test_a_character_model_exported_to_hugging_face_imports_back_as_it_was(tmp_path, data, capsys):
    ds = load_dataset(data)
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=ds.tokenizer.vocab_size, n_layer=1, n_embd=32)
    model = GPT(config, seed=3)
    save_checkpoint(tmp_path / "ours", Checkpoint.of(model, ds.tokenizer, ds.spec()))
    assert main(["export", str(tmp_path / "ours"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert main(["import", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = load_checkpoint(tmp_path / "back")
    assert back.tokenizer.to_dict() == ds.tokenizer.to_dict() and back.data == ds.spec()
    tokens = np.arange(20)[None] % config.vocab_size
    np.testing.assert_allclose(back.model().forward(tokens)[0], model.forward(tokens)[0], rtol=0, atol=1e-6)
    samples = []
    for folder in ("ours", "back"):  # the same samples from both, in the same mode
        capsys.readouterr()
        assert main(["sample", str(tmp_path / folder), "--count", "2", "--seed", "3", "--max-tokens", "12"]) == 0
        samples.append(capsys.readouterr().out)
    assert samples[0] == samples[1] and samples[0].strip()
