"""The Llama family against transformers: tiny random LlamaForCausalLM models (grouped-query and multi-query,
tied and untied, widths that are not powers of two) import with the same logits, export back to a folder that
transformers loads with the same logits and tokenizer; GGUF files that are damaged or foreign are one-line
errors naming the file and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pocketgpt import kernels
from pocketgpt.cli import main
from pocketgpt.data import read_text
from pocketgpt.interop import load
from pocketgpt.interop.hf import export_hf, import_hf
from pocketgpt.tokenizers.bpe import train_bpe
from pocketgpt.tokenizers.hf import bpe_tokenizer_json, tokenizer_config

LOGITS_RTOL = 1e-5  # float32, two implementations of the same math: max |difference| / max |logit|
TEXT = "ROMEO: what light through yonder window breaks? 1,234 ünïcode 😀 <|endoftext|>"


@pytest.fixture(scope="module")
def bpe():
    return train_bpe(read_text("shakespeare")[0][:100_000], 300)


def hf_model(tmp_path: Path, tok, n_kv: int, tied: bool) -> tuple[LlamaForCausalLM, Path]:
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=60, intermediate_size=100, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=n_kv, max_position_embeddings=64,
                         rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=tied)
    torch.manual_seed(n_kv)
    model = LlamaForCausalLM(config).eval()
    folder = tmp_path / f"hf-{n_kv}-{tied}"
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text(json.dumps(bpe_tokenizer_json(tok)))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok, 64)))
    return model, folder


def logits_of(model: LlamaForCausalLM, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def relative(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("n_kv,tied", [(2, True), (1, False), (6, True)])  # grouped-query, multi-query, multi-head
def test_a_random_llama_imports_and_exports_with_transformers_logits(tmp_path, bpe, n_kv, tied):
    hf, folder = hf_model(tmp_path, bpe, n_kv, tied)
    ids = bpe.encode(TEXT)
    ours = import_hf(folder)
    assert ours.config.n_kv == n_kv and ours.config.tie_embeddings == tied and ours.config.rope_theta == 5000.0
    expected = logits_of(hf, ids)
    assert relative(ours.model().forward(np.array([ids]))[0][0], expected) < LOGITS_RTOL
    export_hf(ours, tmp_path / "back")
    back = LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert relative(logits_of(back, ids), expected) < LOGITS_RTOL
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "back")
    assert tokenizer(TEXT).input_ids == ids and tokenizer.decode(ids) == bpe.decode(ids) == TEXT
    again = import_hf(tmp_path / "back")
    for name, w in ours.params.items():
        np.testing.assert_array_equal(again.params[name], w)


def test_the_cli_imports_samples_and_exports_a_llama_folder(tmp_path, bpe, capsys):
    hf, folder = hf_model(tmp_path, bpe, 2, True)
    assert main(["import", str(folder), str(tmp_path / "ckpt")]) == 0
    assert main(["sample", str(tmp_path / "ckpt"), "--prompt", "ROMEO:", "--temperature", "0", "--count", "1",
                 "--max-tokens", "8"]) == 0
    ids = bpe.encode("ROMEO:")
    greedy = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=0)[0, len(ids):]
    assert capsys.readouterr().out == "ROMEO:" + bpe.decode(greedy.tolist()) + "\n"


# ----------------------------------------------------------------------------- GGUF files that are wrong


def write_gguf(path: Path, *, arch: str = "llama", drop: str | None = None, odd_type: bool = False,
               types: dict | None = None) -> Path:
    """A tiny Llama GGUF (2 layers, 64 channels, F32 tensors, or those in `types` quantized by the gguf package)
    in llama.cpp's layout."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch=arch)
    C, F, V, heads = 64, 96, 40, 4
    w.add_block_count(2)
    w.add_context_length(32)
    w.add_embedding_length(C)
    w.add_feed_forward_length(F)
    w.add_head_count(heads)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    tokens = [chr(ord("a") + i) if i < 26 else f"<t{i}>" for i in range(V)]
    w.add_token_list(tokens)
    w.add_token_types([1] * V)
    w.add_token_merges(["a b"])
    shapes = {"token_embd.weight": (V, C), "output_norm.weight": (C,)}
    for i in range(2):
        shapes.update({f"blk.{i}.attn_norm.weight": (C,), f"blk.{i}.attn_q.weight": (C, C),
                       f"blk.{i}.attn_k.weight": (C // 2, C), f"blk.{i}.attn_v.weight": (C // 2, C),
                       f"blk.{i}.attn_output.weight": (C, C), f"blk.{i}.ffn_norm.weight": (C,),
                       f"blk.{i}.ffn_gate.weight": (F, C), f"blk.{i}.ffn_up.weight": (F, C),
                       f"blk.{i}.ffn_down.weight": (C, F)})
    for name, shape in shapes.items():
        if name == drop:
            continue
        data = rng.normal(0, 0.1, shape).astype(np.float32)
        if odd_type and name == "blk.1.ffn_up.weight":
            blocks = rng.integers(0, 256, (shape[0], shape[1] // 32 * 18), dtype=np.uint8)  # 18-byte IQ4_NL blocks
            w.add_tensor(name, blocks, raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
        elif types and name in types:
            w.add_tensor(name, gguf.quants.quantize(data, types[name]), raw_dtype=types[name])
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_a_tiny_gguf_loads(tmp_path):
    ckpt = load(write_gguf(tmp_path / "tiny.gguf"))
    assert ckpt.config.n_layer == 2 and ckpt.config.n_kv == 2 and ckpt.config.tie_embeddings
    assert np.isfinite(ckpt.model().forward(np.array([[1, 2, 3]]))[0]).all()


def test_a_gguf_in_the_5_bit_blocks_of_k_quant_files_runs_packed(tmp_path):
    """A Q4_K_M file of SmolLM2 is mostly Q5_0 (its 576-wide rows do not cut into K-quants' 256): Q5_0 and Q5_1
    matrices load packed, dequantize as the gguf package does, and the packed model's logits equal those of the
    same weights expanded to float32 (float tolerance: products summed in another order)."""
    Q = gguf.GGMLQuantizationType
    types = {**{f"blk.0.attn_{x}.weight": Q.Q5_0 for x in "qkv"}, **{f"blk.0.ffn_{x}.weight": Q.Q5_1 for x in
             ("gate", "up")}, "blk.1.ffn_down.weight": Q.Q5_0, "blk.1.attn_output.weight": Q.Q5_1,
             "blk.1.attn_q.weight": Q.Q5_0, "blk.1.attn_k.weight": Q.Q4_0, "blk.1.attn_v.weight": Q.Q8_0}
    path = write_gguf(tmp_path / "q5.gguf", types=types)
    packed, floats = load(path).model(), load(path, packed=False).model()
    reader = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    up = packed.stored("h.0.mlp.c_fc.weight")  # gate and up, one above the other
    assert up.format == "q5_1" and packed.stored("h.0.attn.c_attn.weight").format == "q5_0"
    mixed = packed.stored("h.1.attn.c_attn.weight")  # Q5_0, Q4_0 and Q8_0 rows: all as Q8_0, the same weights
    assert mixed.format == "q8_0"
    np.testing.assert_array_equal(mixed.dequantize(), floats.stored("h.1.attn.c_attn.weight"))
    expected = gguf.quants.dequantize(reader["blk.0.ffn_up.weight"].data, Q.Q5_1)
    np.testing.assert_array_equal(up.dequantize()[96:], expected)
    idx = np.array([[1, 5, 7, 2, 30]])
    on = kernels.int8_dots()
    kernels.set_int8_dots(False)  # Q8_0 rows would round the activations to 8 bits (kernels.interleaved)
    try:
        np.testing.assert_allclose(packed.forward(idx)[0], floats.forward(idx)[0], rtol=0, atol=1e-5)
    finally:
        kernels.set_int8_dots(on)


@pytest.mark.parametrize("damage,message", [
    ("truncated", "not a readable GGUF file"),
    ("missing", "tensor blk.1.ffn_down.weight is missing"),
    ("odd_type", "tensor blk.1.ffn_up.weight has type IQ4_NL, which pocketgpt does not read"),
    ("architecture", "architecture 'qwen3' is not supported"),
])
def test_a_damaged_or_foreign_gguf_is_a_one_line_error(tmp_path, capsys, damage, message):
    path = tmp_path / "bad.gguf"
    if damage == "truncated":
        write_gguf(path)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        write_gguf(path, drop="blk.1.ffn_down.weight" if damage == "missing" else None, odd_type=damage == "odd_type",
                   arch="qwen3" if damage == "architecture" else "llama")
    for command in (["sample", str(path)], ["import", str(path), str(tmp_path / "out")], ["info", str(path)]):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err
        assert message in err and str(path) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_fine_tuning_a_gguf_model(tmp_path, capsys):
    gguf_file = write_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "letters.txt").write_text("thequickbrownfoxjumpsoverthelazydog" * 60)
    assert main(["train", "--init-from", str(gguf_file), "--data", str(tmp_path / "letters.txt"), "--mode", "text",
                 "--steps", "4", "--context", "16", "--out", str(tmp_path / "tuned"), "--samples", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    tuned = load(tmp_path / "tuned")
    assert result["steps"] == 4 and tuned.data["init_from"] == str(gguf_file)
    assert not np.array_equal(tuned.params["wte.weight"], load(gguf_file).params["wte.weight"])
