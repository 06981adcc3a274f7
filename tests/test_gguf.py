"""GGUF export: llama.cpp's gpt2 names and metadata, tensors read back by the `gguf` package's reader."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize, quantize

from pocketgpt.cli import main
from pocketgpt.config import PRESETS
from pocketgpt.interop.gguf import LLAMA_EOT_ID, export_gguf, gguf_name
from pocketgpt.model import GPT
from pocketgpt.tokenizers import CharTokenizer
from pocketgpt.train import Checkpoint, load_dataset


def checkpoint(data="shakespeare", tokenizer=None) -> Checkpoint:
    ds = load_dataset(data)
    tok = tokenizer or ds.tokenizer
    config = PRESETS["shakespeare-cpu"].replace(vocab_size=tok.vocab_size, n_layer=2, n_embd=64)
    return Checkpoint(config, GPT(config, seed=3).params, tok, "float32", ds.spec())


def read(path):
    r = GGUFReader(str(path))
    fields = {name: f.contents() for name, f in r.fields.items() if not name.startswith("GGUF.")}
    return fields, {t.name: t for t in r.tensors}


@pytest.mark.parametrize("qtype", ["f32", "f16", "q8_0", "q4_0"])
def test_tensors_read_back_equal(tmp_path, qtype):
    ckpt = checkpoint()
    export_gguf(ckpt, tmp_path / "m.gguf", qtype)
    fields, tensors = read(tmp_path / "m.gguf")
    assert fields["general.architecture"] == "gpt2" and fields["gpt2.block_count"] == 2
    assert fields["gpt2.embedding_length"] == 64 and fields["gpt2.feed_forward_length"] == 256
    assert fields["gpt2.context_length"] == 64 and fields["gpt2.attention.head_count"] == 4
    for name, w in ckpt.params.items():
        t = tensors[gguf_name(name)]
        if w.ndim == 1 or qtype == "f32":
            assert t.tensor_type == GGMLQuantizationType.F32
            np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape), w)
        elif qtype == "f16":
            np.testing.assert_array_equal(np.asarray(t.data).reshape(w.shape), w.astype(np.float16))
        else:
            gtype = GGMLQuantizationType[qtype.upper()]
            assert t.tensor_type == gtype
            np.testing.assert_array_equal(np.asarray(t.data), quantize(w, gtype))  # the gguf package's own bytes
            back = dequantize(np.asarray(t.data), gtype).reshape(w.shape)
            assert np.abs(back - w).max() <= np.abs(w).max() / (7 if qtype == "q4_0" else 120)
    if qtype == "f32":  # the tied lm_head is written out too
        np.testing.assert_array_equal(np.asarray(tensors["output.weight"].data).reshape(-1, 64),
                                      ckpt.params["wte.weight"])
    for missing_bias in ("blk.0.attn_qkv.bias", "blk.1.ffn_down.bias", "output_norm.bias"):
        assert not np.asarray(tensors[missing_bias].data).any()  # zeros: the same computation


def test_character_vocabulary_as_gpt2_byte_level_strings(tmp_path):
    ckpt = checkpoint()
    export_gguf(ckpt, tmp_path / "m.gguf")
    fields, _ = read(tmp_path / "m.gguf")
    tokens = fields["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.merges"]
    assert tokens[ckpt.tokenizer.encode("\n")[0]] == "\u010a" and tokens[ckpt.tokenizer.encode(" ")[0]] == "\u0120"
    assert tokens[ckpt.tokenizer.encode("A")[0]] == "A"


def test_document_bos_moves_to_llama_cpp_end_id_with_its_rows(tmp_path):
    tok = CharTokenizer("abcdefghijklmnoé", bos=True)  # BOS is id 16; é needs a merge
    ckpt = checkpoint("names", tok)
    export_gguf(ckpt, tmp_path / "m.gguf")
    fields, tensors = read(tmp_path / "m.gguf")
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens[LLAMA_EOT_ID] == "<|endoftext|>" and fields["tokenizer.ggml.eos_token_id"] == LLAMA_EOT_ID
    assert tokens[12] == "l" and tokens[16] == "Ã©"  # ids from 11 on shift by one
    assert "Ã ©" in fields["tokenizer.ggml.merges"]
    emb = np.asarray(tensors["token_embd.weight"].data).reshape(17, 64)
    np.testing.assert_array_equal(emb[LLAMA_EOT_ID], ckpt.params["wte.weight"][16])
    np.testing.assert_array_equal(emb[12], ckpt.params["wte.weight"][11])


def test_cli_export_gguf_and_its_errors(tmp_path, capsys):
    from pocketgpt.train import save_checkpoint

    save_checkpoint(tmp_path / "ckpt", checkpoint())
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "m.gguf"), "--format", "gguf", "--type",
                 "q4_0"]) == 0
    assert (tmp_path / "m.gguf").stat().st_size < 0.3 * 4 * GPT(checkpoint().config).num_params
    micro = PRESETS["microgpt"].replace(vocab_size=27)
    save_checkpoint(tmp_path / "micro", Checkpoint(micro, GPT(micro).params, load_dataset("names").tokenizer))
    capsys.readouterr()
    assert main(["export", str(tmp_path / "micro"), str(tmp_path / "x.gguf"), "--format", "gguf"]) == 2
    err = capsys.readouterr().err
    assert "GPT-2 cannot express this model" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--format", "hf", "--type", "q4_0"]) == 2


def test_export_to_a_path_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    from pocketgpt.train import save_checkpoint

    save_checkpoint(tmp_path / "ckpt", checkpoint())
    (tmp_path / "taken").write_text("a file")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "taken"), "--format", "hf"]) == 2
    err = capsys.readouterr().err
    assert "taken exists; pass --force to replace it" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "taken").read_text() == "a file"
    assert (tmp_path / "taken").read_text() == "a file"
