"""Hugging Face folders in and out, for both families: GPT-2 (GPT2LMHeadModel) and Llama (LlamaForCausalLM,
pocketgpt.interop.hf_llama).

GPT-2 is a name-for-name copy with one list of transposed weights: pocketgpt names parameters after GPT-2's
checkpoint keys and stores every linear weight (out, in); GPT-2's Conv1D stores (in, out), so exactly the
weights in TRANSPOSED flip on the way in and out. A model that neither family can express (microgpt's RMSNorm
without gains and ReLU, say) is refused by name. Tokenizers: GPT-2's vocab.json + merges.txt, or a
tokenizer.json (byte-level BPE or pocketgpt's character layout) with its tokenizer_config.json.
Export needs nothing beyond the core (a character tokenizer is written as a tokenizer.json by
pocketgpt.tokenizers.hf); importing pytorch_model.bin needs torch (the `interop` extra). The checkpoint's
data record travels in config.json under DATA_KEY, so that an exported model imports back as it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from pocketgpt.config import GPTConfig
from pocketgpt.errors import InputError
from pocketgpt.files import atomic_file, write_text
from pocketgpt.interop.hf_llama import (
    config_from_llama,
    llama_config,
    llama_expressible,
    llama_tensors,
    params_from_llama,
)
from pocketgpt.model import param_shapes
from pocketgpt.tokenizers import BPETokenizer
from pocketgpt.tokenizers.hf import bpe_tokenizer_json, char_tokenizer_json, load_tokenizer_json, tokenizer_config
from pocketgpt.train import Checkpoint

TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # Hugging Face's names for GPT-2's tanh GELU
BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers that old checkpoints carry
DATA_KEY = "pocketgpt_data"  # config.json: the data record of a pocketgpt export (transformers keeps extra keys)


class InteropError(InputError):
    pass


def _is_transposed(name: str) -> bool:
    return name.endswith(TRANSPOSED)


# ----------------------------------------------------------------------------- export


def gpt2_problems(config: GPTConfig) -> list[str]:
    """What stops GPT2LMHeadModel from computing exactly what this config computes (missing biases become zeros)."""
    problems = []
    if config.norm != "layernorm" or not config.norm_weights:
        problems.append(f"norm {config.norm}{'' if config.norm_weights else ' without weights'} (GPT-2: LayerNorm)")
    if config.activation != "gelu":
        problems.append(f"activation {config.activation} (GPT-2: GELU)")
    if config.embed_norm:
        problems.append("a norm after the embedding")
    if not config.final_norm:
        problems.append("no final norm")
    if config.positions != "learned" or config.n_kv != config.n_head or config.ffn != 4 * config.n_embd:
        problems.append("rotary positions, grouped-query attention or an MLP width other than 4 C")
    return problems


def gpt2_expressible(config: GPTConfig) -> None:
    """Raise unless GPT2LMHeadModel computes exactly what this config computes."""
    problems = gpt2_problems(config)
    if problems:
        raise InteropError("GPT-2 cannot express this model: " + "; ".join(problems))


def export_hf(ckpt: Checkpoint, out: str | Path) -> Path:
    """Write config.json, model.safetensors and tokenizer files that transformers loads: GPT2LMHeadModel, or
    LlamaForCausalLM for a model of the Llama family."""
    config = ckpt.config
    llama = not llama_expressible(config)
    if not llama and gpt2_problems(config):
        raise InteropError("neither GPT-2 nor Llama can express this model: " + "; ".join(gpt2_problems(config)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = ckpt.float_params()  # a quantized checkpoint exports its dequantized weights
    tok = ckpt.tokenizer
    if llama:
        tensors, hf = llama_tensors(params, config), llama_config(config, tok.bos, getattr(tok, "eos", tok.bos))
    else:
        tensors, hf = gpt2_tensors(params, config), gpt2_config(config, tok.bos)
    with atomic_file(out / "model.safetensors") as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    write_json(out / "config.json", {**hf, DATA_KEY: ckpt.data})
    if isinstance(tok, BPETokenizer) and not llama:
        tok.save(out)  # GPT-2's own tokenizer files, which GPT2Tokenizer reads
        special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
        write_json(out / "tokenizer_config.json", {"tokenizer_class": "GPT2Tokenizer", **special,
                                                   "model_max_length": config.block_size})
    else:
        write_json(out / "tokenizer.json", bpe_tokenizer_json(tok) if isinstance(tok, BPETokenizer)
                   else char_tokenizer_json(tok))
        write_json(out / "tokenizer_config.json", tokenizer_config(tok, config.block_size))
    return out


def gpt2_tensors(params: dict[str, np.ndarray], config: GPTConfig) -> dict[str, np.ndarray]:
    C = config.n_embd
    tensors = {}
    for name in param_shapes(GPTConfig(**{**config.to_dict(), "bias": True, "tie_embeddings": True})):
        if name in params:
            w = np.asarray(params[name], np.float32)
        else:  # a bias this model does not have: zero is the same computation
            w = np.zeros(3 * C if "c_attn" in name else 4 * C if "c_fc" in name else C, np.float32)
        tensors[f"transformer.{name}"] = np.ascontiguousarray(w.T if _is_transposed(name) else w)
    if not config.tie_embeddings:
        tensors["lm_head.weight"] = np.ascontiguousarray(params["lm_head.weight"], np.float32)
    return tensors


def gpt2_config(config: GPTConfig, bos: int | None) -> dict:
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": config.vocab_size,
            "n_positions": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new",
            "layer_norm_epsilon": config.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            "initializer_range": config.init_std, "tie_word_embeddings": config.tie_embeddings, "bos_token_id": bos,
            "eos_token_id": bos, "scale_attn_weights": True, "use_cache": True}


def write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- import


def _read_weights(src: Path) -> dict[str, np.ndarray]:
    if (src / "model.safetensors").is_file():
        try:
            return load_file(src / "model.safetensors")
        except (SafetensorError, OSError) as e:
            raise InteropError(f"{src / 'model.safetensors'} is corrupt: {e}") from None
    if (src / "pytorch_model.bin").is_file():
        try:
            import torch
        except ImportError:
            raise InteropError(f"{src / 'pytorch_model.bin'} needs torch: pip install 'pocketgpt[interop]'") from None
        try:
            state = torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a bad pickle
            raise InteropError(f"{src / 'pytorch_model.bin'} could not be read: {e}") from None
        return {k: v.float().numpy() for k, v in state.items()}
    raise InteropError(f"{src}: no model.safetensors or pytorch_model.bin")


def config_from_hf(hf: dict, source: str) -> GPTConfig:
    if hf.get("model_type") == "llama":
        return config_from_llama(hf, source)
    if hf.get("model_type") != "gpt2":
        raise InteropError(f"{source}: model_type {hf.get('model_type')!r} is not supported (gpt2 and its family, "
                           "such as distilgpt2; llama and its family, such as SmolLM2)")
    act = hf.get("activation_function", "gelu_new")
    if act not in GELU_TANH:
        raise InteropError(f"{source}: activation_function {act!r} is not GPT-2's tanh GELU")
    C = hf["n_embd"]
    if hf.get("n_inner") not in (None, 4 * C):
        raise InteropError(f"{source}: n_inner {hf['n_inner']} is not 4 * n_embd")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise InteropError(f"{source}: attention scaling other than 1/sqrt(head size) is not supported")
    try:
        return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                         n_head=hf["n_head"], n_embd=C, norm="layernorm", norm_weights=True,
                         norm_eps=hf.get("layer_norm_epsilon", 1e-5), activation="gelu", bias=True,
                         tie_embeddings=hf.get("tie_word_embeddings", True),
                         init_std=hf.get("initializer_range", 0.02), scale_residual_init=True,
                         embed_norm=False, final_norm=True)
    except (KeyError, TypeError) as e:
        raise InteropError(f"{source}: missing or bad field {e}") from None


def import_hf(src: str | Path) -> Checkpoint:
    """A pocketgpt checkpoint (float32) from a local Hugging Face GPT-2 or Llama folder."""
    src = Path(src)
    if not src.is_dir():
        raise InteropError(f"{src}: no such folder")
    try:
        hf = json.loads((src / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InteropError(f"{src / 'config.json'} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InteropError(f"{src / 'config.json'} is not valid JSON: {e}") from None
    config = config_from_hf(hf, str(src / "config.json"))
    raw = _read_weights(src)
    llama = hf.get("model_type") == "llama"
    params = params_from_llama(raw, config, str(src)) if llama else gpt2_params(raw, config, src)
    try:
        if (src / "vocab.json").is_file() or not (src / "tokenizer.json").is_file():
            tokenizer = BPETokenizer.load(src / "vocab.json", src / "merges.txt")
        else:
            tokenizer = load_tokenizer_json(src / "tokenizer.json")
    except InputError as e:
        raise InteropError(f"{src}: tokenizer: {e}") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise InteropError(f"{src}: the tokenizer has {tokenizer.vocab_size} tokens but the weights only "
                           f"{config.vocab_size}: they do not belong together")
    data = hf.get(DATA_KEY) if isinstance(hf.get(DATA_KEY), dict) else {}
    return Checkpoint(config, params, tokenizer, "float32", {"mode": "text", **data})


def gpt2_params(raw: dict[str, np.ndarray], config: GPTConfig, src: Path) -> dict[str, np.ndarray]:
    params = {}
    for key, w in raw.items():
        name = key.removeprefix("transformer.")
        if name.endswith(BUFFERS) or (name == "lm_head.weight" and config.tie_embeddings):
            continue
        params[name] = np.ascontiguousarray(w.T if _is_transposed(name) else w, np.float32)
    expected = param_shapes(config)
    missing, unexpected = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
    if missing or unexpected:
        raise InteropError(f"{src}: weights do not match a GPT-2 of this config.json (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    for name, shape in expected.items():
        if params[name].shape != shape:
            raise InteropError(f"{src}: {name} has shape {params[name].shape}, config.json implies {shape}")
    return params
