"""Loading GGUF files (llama.cpp's format, read with the `gguf` package) as pocketgpt checkpoints: architecture
`llama` (SmolLM2, MobileLLM, Llama-style small models), tensors in F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
Q5_1, Q4_K, Q5_K or Q6_K (a Q4_K_M file of SmolLM2 is mostly Q5_0); the tokenizer (GPT-2-style byte-level BPE)
and the chat template from the metadata.
Matrices are kept packed as stored (GGMLBlocks, HalfFloats), which the kernels run directly, or with
packed=False expanded to float32 (for fine-tuning or quantizing again). A matrix pocketgpt holds as one but the
file as several (attn_q, attn_k and attn_v; ffn_gate and ffn_up) stays packed when its parts share a type or mix
Q4_0 or Q5_0 with Q8_0 (then held as Q8_0: the same weights), and is expanded to float32 otherwise (K-quant
files can mix Q4_K and Q6_K).

Names: token_embd -> wte, blk.N.attn_norm -> h.N.ln_1, attn_q + attn_k + attn_v -> h.N.attn.c_attn (rows in
that order), attn_output -> h.N.attn.c_proj, ffn_norm -> h.N.ln_2, ffn_gate + ffn_up -> h.N.mlp.c_fc,
ffn_down -> h.N.mlp.c_proj, output_norm -> ln_f, output -> lm_head (absent: tied to the embedding).
llama.cpp's converter stores the rows of attn_q and attn_k permuted so that its rotary embedding, which
rotates adjacent channels, matches Hugging Face's, which rotates the two halves of a head; `halves` undoes
that, so the engine's rotary embedding (Hugging Face's) applies.
Not read: other architectures, SentencePiece vocabularies, rope scaling (rope_freqs), other tensor types;
each is a one-line error that names it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGUFReader

from pocketgpt.config import GPTConfig
from pocketgpt.errors import InputError
from pocketgpt.formats import GGMLBlocks, Packed, stack_rows
from pocketgpt.formats.floats import HalfFloats
from pocketgpt.formats.ggml import BLOCK_BYTES, BLOCK_WEIGHTS, SYMMETRIC, as_q8_0
from pocketgpt.model import param_shapes
from pocketgpt.tokenizers import BPETokenizer
from pocketgpt.train import Checkpoint

ARCHITECTURES = ("llama",)
FLOAT_TYPES = ("F32", "F16", "BF16")
BLOCK_TYPES = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1", "Q4_K": "q4_k",
               "Q5_K": "q5_k", "Q6_K": "q6_k"}
PRE_TOKENIZERS = {"gpt2": "gpt2", "gpt-2": "gpt2", "smollm": "gpt2", "default": "gpt2", "llama-bpe": "llama3"}
SPECIAL_TYPES = (3, 4)  # control and user-defined tokens: cut out of the text before BPE
BLOCK_NAMES = {"attn_norm": "ln_1", "attn_output": "attn.c_proj", "ffn_norm": "ln_2", "ffn_down": "mlp.c_proj"}
TOP_NAMES = {"token_embd": "wte", "output_norm": "ln_f", "output": "lm_head"}


class GGUFError(InputError):
    pass


def is_gguf(path: str | os.PathLike) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def read(path: str | os.PathLike):
    """The gguf package's reader over the file (GGUFError for anything it cannot read)."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    try:
        return GGUFReader(path)
    except Exception as e:  # noqa: BLE001 (the reader raises many types for a damaged file)
        raise GGUFError(f"{path}: not a readable GGUF file, truncated or damaged ({type(e).__name__}: {e})") from None


def field(reader, key: str, default=None, *, path=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise GGUFError(f"{path}: metadata {key} is missing")
        return default
    return f.contents()


def config_of(reader, path) -> GPTConfig:
    arch = field(reader, "general.architecture", path=path)
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported (pocketgpt runs {', '.join(ARCHITECTURES)})")
    if "rope_freqs.weight" in {t.name for t in reader.tensors} or field(reader, f"{arch}.rope.scaling.type", "none") \
            not in ("none", "linear") or float(field(reader, f"{arch}.rope.scaling.factor", 1.0)) != 1.0:
        raise GGUFError(f"{path}: rope scaling is not supported")
    n_embd, n_head = int(field(reader, f"{arch}.embedding_length", path=path)), int(field(reader,
                                                                                        f"{arch}.attention.head_count",
                                                                                        path=path))
    hs = n_embd // n_head
    if int(field(reader, f"{arch}.rope.dimension_count", hs)) != hs:
        raise GGUFError(f"{path}: rotary embedding over part of a head is not supported")
    tokens = field(reader, "tokenizer.ggml.tokens", path=path)
    names = {t.name for t in reader.tensors}
    try:
        return GPTConfig(vocab_size=len(tokens), block_size=int(field(reader, f"{arch}.context_length", path=path)),
                         n_layer=int(field(reader, f"{arch}.block_count", path=path)), n_head=n_head,
                         n_kv_head=int(field(reader, f"{arch}.attention.head_count_kv", n_head)), n_embd=n_embd,
                         positions="rope", rope_theta=float(field(reader, f"{arch}.rope.freq_base", 10000.0)),
                         norm="rmsnorm", norm_weights=True,
                         norm_eps=float(field(reader, f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
                         activation="swiglu", ffn_size=int(field(reader, f"{arch}.feed_forward_length", path=path)),
                         bias=False, tie_embeddings="output.weight" not in names, init_std=0.02,
                         embed_norm=False, final_norm=True)
    except InputError as e:
        raise GGUFError(f"{path}: the metadata describe no valid model ({e})") from None


def tokenizer_of(reader, path) -> BPETokenizer:
    model = field(reader, "tokenizer.ggml.model", path=path)
    if model != "gpt2":
        raise GGUFError(f"{path}: tokenizer model {model!r} is not supported (pocketgpt reads byte-level BPE, gpt2)")
    pre = field(reader, "tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f"{path}: pre-tokenizer {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)})")
    tokens = field(reader, "tokenizer.ggml.tokens", path=path)
    types = field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges", path=path)]
    vocab = {t: i for i, t in enumerate(tokens)}
    special = [t for t, kind in zip(tokens, types) if kind in SPECIAL_TYPES]
    bos = field(reader, "tokenizer.ggml.bos_token_id", -1)
    eos = field(reader, "tokenizer.ggml.eos_token_id", -1)
    try:
        return BPETokenizer(vocab, merges, special, bos=None if bos < 0 else int(bos),
                            eos=None if eos < 0 else int(eos),
                            pre=PRE_TOKENIZERS[pre], chat_template=field(reader, "tokenizer.chat_template", "") or None)
    except InputError as e:
        raise GGUFError(f"{path}: tokenizer: {e}") from None


def halves(w: np.ndarray | Packed, n_head: int) -> np.ndarray | Packed:
    """Rows of attn_q or attn_k from llama.cpp's order (adjacent channel pairs per head) to Hugging Face's (the
    two halves of each head)."""
    hs = w.shape[0] // n_head
    order = np.arange(w.shape[0]).reshape(n_head, hs // 2, 2).swapaxes(1, 2).reshape(-1)
    return w.take(order) if isinstance(w, Packed) else w[order]


def tensor_array(t, path, packed: bool = False) -> np.ndarray | Packed:
    """A GGUF tensor as float32 (out, in) (or (n,) for a vector), or (packed=True, a matrix) as stored."""
    kind = t.tensor_type.name
    shape = tuple(int(d) for d in reversed(t.shape))  # ggml lists the fastest-varying dimension first
    data = np.asarray(t.data)
    if kind == "F32":
        return data.astype(np.float32).reshape(shape)
    if kind not in FLOAT_TYPES and kind not in BLOCK_TYPES:
        raise GGUFError(f"{path}: tensor {t.name} has type {kind}, which pocketgpt does not read (it reads "
                        f"{', '.join((*FLOAT_TYPES, *BLOCK_TYPES))})")
    rows, n = (shape[0] if len(shape) > 1 else 1), shape[-1]
    if kind in ("F16", "BF16"):
        w = HalfFloats(kind.lower(), np.array(data.view(np.uint16).reshape(rows, n)), (rows, n))
    else:
        fmt = BLOCK_TYPES[kind]
        if n % BLOCK_WEIGHTS[fmt] or data.size != rows * n // BLOCK_WEIGHTS[fmt] * BLOCK_BYTES[fmt]:
            raise GGUFError(f"{path}: tensor {t.name} ({kind}, {shape}) has {data.size} bytes, not a whole number "
                            "of blocks of its rows")
        w = GGMLBlocks.from_blocks(fmt, data.reshape(rows, -1), (rows, n))
    return w if packed and len(shape) == 2 else w.dequantize().reshape(shape)


def join_rows(parts: list[np.ndarray | Packed]) -> np.ndarray | Packed:
    """Matrices one above the other: packed if all are packed in one format (Q4_0 and Q5_0 beside Q8_0 re-expressed
    as the Q8_0 blocks of the same weights), else float32."""
    if all(isinstance(p, Packed) for p in parts):
        if {p.format for p in parts} <= {"q8_0", *SYMMETRIC} and any(p.format == "q8_0" for p in parts):
            parts = [as_q8_0(p) for p in parts]
        if len({(p.format, tuple(p.meta().items())) for p in parts}) == 1:
            return stack_rows(parts)
    return np.concatenate([p.dequantize() if isinstance(p, Packed) else p for p in parts])


def gguf_names(config: GPTConfig) -> list[str]:
    """Every tensor a llama GGUF of this config holds."""
    names = ["token_embd.weight", "output_norm.weight"] + ([] if config.tie_embeddings else ["output.weight"])
    parts = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    return names + [f"blk.{i}.{p}.weight" for i in range(config.n_layer) for p in parts]


def check_tensors(reader, config: GPTConfig, path) -> None:
    """GGUFError for a tensor that is missing or of a type pocketgpt does not read, before anything is loaded."""
    tensors = {t.name: t for t in reader.tensors}
    for name in gguf_names(config):
        if name not in tensors:
            raise GGUFError(f"{path}: tensor {name} is missing")
        kind = tensors[name].tensor_type.name
        if kind not in FLOAT_TYPES and kind not in BLOCK_TYPES:
            raise GGUFError(f"{path}: tensor {name} has type {kind}, which pocketgpt does not read (it reads "
                            f"{', '.join((*FLOAT_TYPES, *BLOCK_TYPES))})")


def pocketgpt_params(reader, config: GPTConfig, path, packed: bool = False) -> dict[str, np.ndarray | Packed]:
    """Every parameter by pocketgpt's name: float arrays, and (packed=True) matrices as the file stores them."""
    check_tensors(reader, config, path)
    tensors = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray | Packed:
        return tensor_array(tensors[name], path, packed)

    params = {f"{TOP_NAMES[k]}.weight": get(f"{k}.weight") for k in ("token_embd", "output_norm")}
    if not config.tie_embeddings:
        params["lm_head.weight"] = get("output.weight")
    for i in range(config.n_layer):
        b = f"blk.{i}"
        for g, p in BLOCK_NAMES.items():
            params[f"h.{i}.{p}.weight"] = get(f"{b}.{g}.weight")
        params[f"h.{i}.attn.c_attn.weight"] = join_rows([
            halves(get(f"{b}.attn_q.weight"), config.n_head), halves(get(f"{b}.attn_k.weight"), config.n_kv),
            get(f"{b}.attn_v.weight")])
        params[f"h.{i}.mlp.c_fc.weight"] = join_rows([get(f"{b}.ffn_gate.weight"), get(f"{b}.ffn_up.weight")])
    for name, shape in param_shapes(config).items():
        if tuple(params[name].shape) != shape:
            raise GGUFError(f"{path}: {name} has shape {tuple(params[name].shape)}; the metadata imply {shape}")
    return params


def load_gguf(path: str | os.PathLike, packed: bool = True) -> Checkpoint:
    """A GGUF file as a checkpoint whose matrices stay packed as stored (packed=False: all float32); the data
    record names the file (continuous-text mode)."""
    reader = read(path)
    config = config_of(reader, path)
    tokenizer = tokenizer_of(reader, path)
    reader.fields.clear()  # an object per vocabulary entry and merge: most of a real model's load-time memory
    params = pocketgpt_params(reader, config, path, packed)
    matrices = {k: v for k, v in params.items() if isinstance(v, Packed)}
    floats = {k: v for k, v in params.items() if not isinstance(v, Packed)}
    return Checkpoint(config, floats, tokenizer, "float32", {"mode": "text", "source": str(path)},
                      packed=matrices or None)


def gguf_info(path: str | os.PathLike) -> dict:
    """What a GGUF file holds: architecture, model shape, parameters, tensor types, tokenizer."""
    reader = read(path)
    config = config_of(reader, path)
    check_tensors(reader, config, path)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return {"file": str(path), "bytes": Path(path).stat().st_size,
            "architecture": field(reader, "general.architecture"),
            "name": field(reader, "general.name", ""), "model": config.to_dict(),
            "parameters": int(sum(int(np.prod([int(d) for d in t.shape])) for t in reader.tensors)),
            "tensor_types": counts, "tokenizer": {"model": field(reader, "tokenizer.ggml.model", ""),
                                                  "pre": field(reader, "tokenizer.ggml.pre", ""),
                                                  "tokens": config.vocab_size,
                                                  "chat_template": "tokenizer.chat_template" in reader.fields}}
