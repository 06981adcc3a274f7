"""Quantized models: RTN and GPTQ on a trained model, packed execution, checkpoints, the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from pocketgpt.cli import main
from pocketgpt.files import sha256_file
from pocketgpt.model import GPT, linear_names
from pocketgpt.quant import QuantRecipe, quantize_weights
from pocketgpt.quant.calibration import BlockInputs
from pocketgpt.quant.report import RUNS
from pocketgpt.train import (
    TRAIN_DEFAULTS,
    Batches,
    Checkpoint,
    CheckpointError,
    evaluate,
    load_checkpoint,
    load_dataset,
    perplexity,
    save_checkpoint,
)


def test_quantized_loss_is_finite_and_close_to_float(trained):
    model, ds, _, base = trained
    q = quantize_weights(model, QuantRecipe("rtn", bits=8, group_size=64))
    assert abs(evaluate(q, ds) - base) / base < 0.002  # 8-bit: within 0.2%
    q4 = quantize_weights(model, QuantRecipe("rtn", bits=4, group_size=32))
    assert np.isfinite(evaluate(q4, ds)) and abs(evaluate(q4, ds) - base) / base < 0.05  # 4-bit: within 5%


def test_gptq_removes_most_of_rtns_loss_increase(trained):
    model, ds, calib, base = trained
    rtn = evaluate(quantize_weights(model, QuantRecipe("rtn", bits=3, group_size=64)), ds) - base
    gptq = evaluate(quantize_weights(model, QuantRecipe("gptq", bits=3, group_size=64), calib), ds) - base
    assert rtn > 0 and gptq < 0.5 * rtn


def test_block_inputs_equal_the_whole_models_forward(trained):
    """Calibration carried block by block sees what the whole model's forward feeds each layer."""
    model, _, calib, _ = trained
    inputs = BlockInputs(model, calib[:2])
    full = [model.forward(x, np.zeros_like(x), w)[2] for x, _, w in calib[:2]]
    for name in linear_names(model.config):
        prefix = name.removesuffix(".weight")
        expected = np.concatenate([c[prefix][0].reshape(-1, c[prefix][0].shape[-1]) for c in full])
        np.testing.assert_allclose(inputs(prefix), expected, rtol=0, atol=1e-5)  # float32, a summation order apart
    with pytest.raises(ValueError, match="forward order"):
        inputs("h.0.attn.c_attn")


def test_quantized_model_holds_packed_weights_and_decodes_like_its_forward(trained):
    model, _, _, _ = trained
    q = quantize_weights(model, QuantRecipe("rtn", bits=4, group_size=32))
    assert "h.0.mlp.c_fc.weight" in q.packed and "h.0.mlp.c_fc.weight" not in q.params
    assert q.weight_bytes < 0.3 * model.flat.nbytes
    tokens = np.random.default_rng(0).integers(0, 65, (1, 20))
    full, _, _ = q.forward(tokens)
    cache = q.new_cache(1)
    steps = [q.forward_cached(tokens[:, :8], cache)] + [q.forward_cached(tokens[:, t:t + 1], cache)
                                                        for t in range(8, 20)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=0, atol=1e-4)
    with pytest.raises(TypeError, match="forward only"):
        q.loss_and_grad(tokens, tokens)


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "mxfp4"])
def test_llama_cpp_block_formats_quantize_save_and_run(trained, tmp_path, fmt):
    """A checkpoint in each of llama.cpp's block formats (MXFP4 among them) runs, loads back bit for bit, and
    stays close to the float model."""
    model, ds, _, base = trained
    recipe = QuantRecipe("rtn", format=fmt)
    q = quantize_weights(model, recipe)
    assert {w.format for w in q.packed.values()} == {fmt}
    loss = evaluate(q, ds)
    assert abs(loss - base) / base < (0.002 if fmt == "q8_0" else 0.05)
    save_checkpoint(tmp_path / fmt, Checkpoint.of(q, ds.tokenizer, ds.spec(), recipe.to_dict()))
    back = load_checkpoint(tmp_path / fmt)
    tokens = np.arange(30)[None] % 65
    np.testing.assert_array_equal(back.model().forward(tokens)[0], q.forward(tokens)[0])
    assert back.quantization["format"] == fmt


def test_quantized_checkpoint_round_trip(trained, tmp_path):
    model, ds, _, _ = trained
    recipe = QuantRecipe("rtn", bits=3, group_size=64, symmetric=False)
    q = quantize_weights(model, recipe)
    save_checkpoint(tmp_path / "q", Checkpoint.of(q, ds.tokenizer, ds.spec(), recipe.to_dict()))
    loaded = load_checkpoint(tmp_path / "q")
    back = loaded.model()
    tokens = np.arange(30)[None] % 65
    np.testing.assert_array_equal(back.forward(tokens)[0], q.forward(tokens)[0])
    assert QuantRecipe.from_dict(loaded.quantization) == recipe and back.weight_bytes == q.weight_bytes


def test_quantized_checkpoint_with_wrong_shapes_is_a_clear_error(trained, tmp_path):
    from safetensors.numpy import load_file, save_file

    model, ds, _, _ = trained
    save_checkpoint(tmp_path / "q", Checkpoint.of(quantize_weights(model, QuantRecipe("rtn")), ds.tokenizer))
    tensors = load_file(tmp_path / "q" / "model.safetensors")
    tensors["h.1.mlp.c_proj.weight.scales"] = tensors["h.1.mlp.c_proj.weight.scales"][:, :1].copy()
    save_file(tensors, tmp_path / "q" / "model.safetensors")
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())  # as a faulty writer would record it
    cfg["files"]["model.safetensors"] = sha256_file(tmp_path / "q" / "model.safetensors")
    (tmp_path / "q" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"h.1.mlp.c_proj.weight.scales is float16 \(64, 1\); a 64x256 "
                       r"GroupQuantized matrix needs float16 \(64, 4\)"):
        load_checkpoint(tmp_path / "q")


def test_cli_quantize_then_sample_and_eval(trained, tmp_path, capsys):
    model, ds, _, base = trained
    save_checkpoint(tmp_path / "f", Checkpoint.of(model, ds.tokenizer, ds.spec()))
    assert main(["quantize", str(tmp_path / "f"), str(tmp_path / "q"), "--method", "gptq", "--bits", "4",
                 "--calib", "32", "--json"]) == 0
    r = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert r["weight_bytes"] < 0.3 * r["weight_bytes_float"] and r["relative_increase"] < 0.02
    assert main(["eval", str(tmp_path / "q"), "--json"]) == 0
    assert abs(json.loads(capsys.readouterr().out.splitlines()[-1])["val_loss"] - r["val_loss"]) < 1e-9
    assert main(["sample", str(tmp_path / "q"), "--count", "1", "--max-tokens", "10", "--seed", "0"]) == 0
    assert main(["quantize", str(tmp_path / "q"), str(tmp_path / "qq")]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "f"), str(tmp_path / "q")]) == 2  # OUT holds a checkpoint
    assert "already holds a checkpoint; pass --force to replace it" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "f"), str(tmp_path / "f"), "--force"]) == 2  # OUT is IN: never
    assert "is the input itself" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "f").packed is None  # the float checkpoint is untouched


def test_qat_lowers_the_loss_of_a_3_bit_model(trained):
    from pocketgpt.quant.qat import qat

    model, ds, _, _ = trained
    recipe = QuantRecipe("qat", bits=3, group_size=64)
    rtn = evaluate(quantize_weights(model, QuantRecipe("rtn", bits=3, group_size=64)), ds)
    settings = dataclasses.replace(TRAIN_DEFAULTS["shakespeare-cpu"], steps=40, lr=3e-4, min_lr=3e-5, warmup=4,
                                   eval_interval=0, weight_decay=0.0, batch_size=8)
    q = qat(model, recipe, ds, settings)
    assert evaluate(q, ds) < rtn - 0.01 and len(q.packed) == 4 * model.config.n_layer


def test_zeroqat_lowers_the_loss_with_forward_passes_only(trained, monkeypatch):
    import tracemalloc

    from pocketgpt.quant.fake import FakeQuantGPT
    from pocketgpt.quant.qat import zeroqat

    model, ds, _, _ = trained
    recipe = QuantRecipe("zeroqat", bits=2, group_size=64)  # 2 bits: a loss gap worth closing on this small model
    rtn = evaluate(quantize_weights(model, QuantRecipe("rtn", bits=2, group_size=64)), ds)

    def no_backward(*args, **kwargs):
        raise AssertionError("ZeroQAT must not call backward")

    monkeypatch.setattr(GPT, "backward", no_backward)
    q = zeroqat(model, recipe, ds, steps=80, lr=1e-4, batch_size=8, seed=0, tune="all")
    assert evaluate(q, ds) < rtn - 0.01

    # peak memory of one ZeroQAT step vs one inference forward on the same batch (weights included)
    x, y, w = Batches(ds, 8, 64, seed=5).next()
    fake = FakeQuantGPT(model, recipe)
    tracemalloc.start()
    fake.forward(x)
    inference = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    zeroqat(fake, recipe, ds, steps=1, batch_size=8)
    step = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    weights = fake.flat.nbytes  # inference holds these; zeroqat's own copy of them is inside `step`
    print(f"inference {inference + weights:,} bytes, one ZeroQAT step {step:,} bytes")
    assert step <= 1.2 * (inference + weights)


def test_quantize_refuses_a_group_size_that_does_not_divide_the_rows(trained, tmp_path, capsys):
    model, ds, _, _ = trained
    config = model.config.replace(n_embd=48, n_head=4)  # rows of 48 values
    save_checkpoint(tmp_path / "f", Checkpoint.of(GPT(config), ds.tokenizer, ds.spec()))
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "f"), str(tmp_path / "q"), "--method", "qat",
                 "--group-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "does not divide the 48 input columns" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "q").exists()  # refused before any training


def test_quant_report_writes_a_table_and_a_plot(trained, tmp_path, capsys):
    model, ds, _, _ = trained
    save_checkpoint(tmp_path / "f", Checkpoint.of(model, ds.tokenizer, ds.spec()))
    assert main(["quant-report", str(tmp_path / "f"), "--steps", "4", "--calib", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["metric"] == "loss"  # a model trained here records its data: scored as it trained
    rows = {r["method"] + str(r["bits"]): r for r in result["rows"]}
    assert len(rows) == len(RUNS) and rows["gptq3"]["score"] < rows["rtn3"]["score"]
    assert rows["gptq2"]["score"] < rows["rtn2"]["score"]
    bpw = [rows[f"rtn{b}"]["bits_per_weight"] for b in (2, 3, 4, 8)]
    assert bpw == sorted(bpw) and bpw[-1] < 32
    assert rows["rtn4"]["decode_ratio"] == rows["gptq+hadamard4"]["decode_ratio"] > 0  # measured once per format
    out = tmp_path / "f-quant-report"
    assert (out / "quant-report.md").read_text().count("\n| ") == len(RUNS) + 2  # header, separator, the runs
    assert (out / "quant-report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quant_report_scores_perplexity_without_the_fine_tuned_runs(trained, tmp_path, capsys):
    """What a report on an imported model does: perplexity with llama.cpp's protocol, and --no-fine-tune."""
    model, ds, _, _ = trained
    save_checkpoint(tmp_path / "f", Checkpoint.of(model, ds.tokenizer, ds.spec()))
    assert main(["quant-report", str(tmp_path / "f"), "--metric", "perplexity", "--context", "32", "--chunks",
                 "8", "--no-fine-tune", "--calib", "16", "--out", str(tmp_path / "r"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    expected = perplexity(model, ds.val, 32, chunks=8)["perplexity"]
    assert result["metric"] == "perplexity" and result["float"] == pytest.approx(expected, rel=1e-6)
    methods = [r["method"] for r in result["rows"]]
    assert len(methods) == len(RUNS) - 4 and not {"qat", "zeroqat", "rtn+learned", "gptq+learned"} & set(methods)
    assert "8 validation chunks of 32 tokens" in (tmp_path / "r" / "quant-report.md").read_text()


def test_quant_report_refuses_perplexity_on_documents(trained, tmp_path, capsys):
    model, _, _, _ = trained
    names = load_dataset("names")
    save_checkpoint(tmp_path / "f", Checkpoint.of(GPT(model.config.replace(vocab_size=names.tokenizer.vocab_size)),
                                                  names.tokenizer, names.spec()))
    capsys.readouterr()
    assert main(["quant-report", str(tmp_path / "f"), "--metric", "perplexity"]) == 2
    err = capsys.readouterr().err
    assert "running text" in err and len(err.strip().splitlines()) == 1
