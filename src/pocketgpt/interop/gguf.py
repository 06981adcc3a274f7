"""GGUF export for llama.cpp's `gpt2` architecture, in F32, F16, Q8_0 or Q4_0.

The file is written with the `gguf` package's writer; the Q8_0/Q4_0 bytes come from
pocketgpt.quant.ggml (bit-identical to ggml's quantizer). Matrices are quantized, vectors stay F32.
Tensors keep pocketgpt's (out, in) layout; missing biases are written as zeros (the same computation),
and a tied lm_head is written out as output.weight too, which older llama.cpp builds require.

Tokenizer: llama.cpp's `gpt2` tokenizer wants GPT-2 byte-level token strings and a merges list.
A BPE tokenizer is written as it is. A character tokenizer is written as byte-level strings, with the
merges that assemble multi-byte characters (or one merge that can never apply, a letter followed by a
digit, which GPT-2's pre-tokenizer always separates, where none are needed). llama.cpp ends generation
at token id 11 for this tokenizer type, so a character model's BOS, which also ends its documents, is
moved to id 11 (the rows of the embedding move with it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pocketgpt.files import atomic_file
from pocketgpt.formats.ggml import QK, QUANTIZE
from pocketgpt.interop.hf import InteropError, gpt2_expressible
from pocketgpt.model import param_shapes
from pocketgpt.tokenizers.bpe import EOT, BPETokenizer, byte_alphabet
from pocketgpt.train import Checkpoint

TYPES = ("f32", "f16", "q8_0", "q4_0")
LLAMA_EOT_ID = 11  # llama.cpp's end-of-generation id for `gpt2` tokenizers


BLOCK_NAMES = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
               "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
TOP_NAMES = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm", "lm_head": "output"}


def gguf_name(name: str) -> str:
    """pocketgpt parameter name -> llama.cpp's gpt2 tensor name (h.0.attn.c_attn.weight -> blk.0.attn_qkv.weight)."""
    module, kind = name.rsplit(".", 1)
    if module.startswith("h."):
        _, i, layer = module.split(".", 2)
        return f"blk.{i}.{BLOCK_NAMES[layer]}.{kind}"
    return f"{TOP_NAMES[module]}.{kind}"


def vocabulary(tokenizer) -> tuple[list[str], list[int], list[str], np.ndarray, int | None]:
    """(token strings, token types, merges, order, eos id) for the GGUF; order[i] is the pocketgpt id of
    GGUF token i."""
    if isinstance(tokenizer, BPETokenizer):
        tokens = [tokenizer.inverse.get(i, f"[PAD{i}]") for i in range(tokenizer.vocab_size)]
        types = [3 if t in tokenizer.special else 1 for t in tokens]
        return tokens, types, [f"{a} {b}" for a, b in tokenizer.merges], np.arange(len(tokens)), tokenizer.bos
    alphabet = byte_alphabet()
    tokens, merges = [], []
    for c in tokenizer.chars:
        symbols = [alphabet[b] for b in c.encode("utf-8")]
        tokens.append("".join(symbols))
        for k in range(1, len(symbols)):  # build a multi-byte character from the left
            merges.append(f"{''.join(symbols[:k])} {symbols[k]}")
    types = [1] * len(tokens)
    order = np.arange(tokenizer.vocab_size)
    eos = None
    if tokenizer.bos is not None:
        tokens.append(EOT)
        types.append(3)
        eos = min(LLAMA_EOT_ID, tokenizer.bos)
        order = np.array([*range(eos), tokenizer.bos, *range(eos, tokenizer.bos)])
        tokens = [tokens[i] for i in order]
        types = [types[i] for i in order]
    return tokens, types, merges or ["a 0"], order, eos


def export_gguf(ckpt: Checkpoint, out: str | Path, qtype: str = "f32") -> dict:
    """Write ckpt as a llama.cpp GGUF file; returns {tensor: (type, bytes)} for a report."""
    import gguf

    if qtype not in TYPES:
        raise InteropError(f"type must be one of {', '.join(TYPES)} (got {qtype!r})")
    config = ckpt.config
    gpt2_expressible(config)
    tokens, types, merges, order, eos = vocabulary(ckpt.tokenizer)
    if len(tokens) != config.vocab_size:
        raise InteropError(f"the tokenizer has {len(tokens)} tokens but the model {config.vocab_size}; "
                           "GGUF needs one string per embedding row")
    try:
        with atomic_file(out) as tmp:
            report = _write(gguf, ckpt, tmp, qtype, tokens, types, merges, order, eos)
    except OSError as e:
        raise InteropError(f"{out}: could not write the file ({e.strerror or e}); nothing was left behind") from None
    return report


def _write(gguf, ckpt: Checkpoint, path: Path, qtype: str, tokens, types, merges, order, eos) -> dict:
    """Write the GGUF file at path; returns {tensor: (type, bytes)}."""
    config = ckpt.config
    C = config.n_embd
    writer = gguf.GGUFWriter(str(path), arch="gpt2")
    writer.add_name("pocketgpt")
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(C)
    writer.add_feed_forward_length(4 * C)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.norm_eps)
    writer.add_file_type({"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}[qtype])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if eos is not None:
        writer.add_bos_token_id(eos)
        writer.add_eos_token_id(eos)
        writer.add_add_bos_token(not isinstance(ckpt.tokenizer, BPETokenizer))  # documents start with BOS
    report = {}
    params = ckpt.float_params()  # a quantized checkpoint exports its dequantized weights
    gpt2_shapes = param_shapes(config.replace(bias=True))  # what GPT-2 has; biases this model lacks are zeros
    full = {**{n: np.zeros(s, np.float32) for n, s in gpt2_shapes.items()}, **params}
    if config.tie_embeddings:  # llama.cpp builds before 2025-03 require output.weight even when tied
        full["lm_head.weight"] = full["wte.weight"]
    for name, w in full.items():
        w = np.asarray(w, np.float32)
        if name in ("wte.weight", "lm_head.weight"):
            w = w[order]
        kind = qtype if w.ndim == 2 and (qtype in ("f32", "f16") or w.shape[1] % QK == 0) else "f32"
        if kind in QUANTIZE:
            data = QUANTIZE[kind](w)
            writer.add_tensor(gguf_name(name), data, raw_dtype=getattr(gguf.GGMLQuantizationType, kind.upper()))
        else:
            data = w.astype(np.float16) if kind == "f16" else w
            writer.add_tensor(gguf_name(name), data)
        report[gguf_name(name)] = (kind, data.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return report
