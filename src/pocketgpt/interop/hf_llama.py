"""Hugging Face Llama folders (LlamaForCausalLM: SmolLM2, MobileLLM and their kin) to and from pocketgpt's names.

Hugging Face keeps q_proj, k_proj and v_proj apart and gate_proj and up_proj apart; pocketgpt fuses each group
into one matrix by stacking rows (c_attn = q, k, v; c_fc = gate, up), so import concatenates and export cuts.
Both store linear weights (out, in) and rotate the two halves of each head, so nothing is transposed or
permuted. The rest is a rename:
  model.embed_tokens -> wte, model.layers.N.input_layernorm -> h.N.ln_1, self_attn.o_proj -> h.N.attn.c_proj,
  post_attention_layernorm -> h.N.ln_2, mlp.down_proj -> h.N.mlp.c_proj, model.norm -> ln_f, lm_head -> lm_head.
"""

from __future__ import annotations

import numpy as np

from pocketgpt.config import GPTConfig
from pocketgpt.errors import InputError
from pocketgpt.model import param_shapes

RENAMES = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2", "self_attn.o_proj": "attn.c_proj",
           "mlp.down_proj": "mlp.c_proj"}
FUSED = {"attn.c_attn": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.c_fc": ("mlp.gate_proj", "mlp.up_proj")}


def llama_expressible(config: GPTConfig) -> list[str]:
    """What stops LlamaForCausalLM from computing exactly what this config computes (empty: nothing)."""
    wanted = [("rope" == config.positions, "learned positions"), (config.norm == "rmsnorm", f"norm {config.norm}"),
              (config.norm_weights, "norms without gains"), (config.activation == "swiglu",
                                                             f"activation {config.activation}"),
              (not config.bias, "biases"), (config.final_norm, "no final norm"),
              (not config.embed_norm, "a norm after the embedding"), (not config.input_dim, "an input projection")]
    return [problem for ok, problem in wanted if not ok]


def config_from_llama(hf: dict, source: str) -> GPTConfig:
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise InputError(f"{source}: only Llama's SwiGLU MLP without biases is supported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}  # transformers 5 writes rope_parameters
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise InputError(f"{source}: rope scaling {rope!r} is not supported")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    try:
        C, heads = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, C // heads):
            raise InputError(f"{source}: head_dim {hf['head_dim']} is not hidden_size / num_attention_heads")
        return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
                         n_layer=hf["num_hidden_layers"], n_head=heads,
                         n_kv_head=hf.get("num_key_value_heads") or heads, n_embd=C, positions="rope",
                         rope_theta=float(theta), norm="rmsnorm", norm_weights=True,
                         norm_eps=hf.get("rms_norm_eps", 1e-6), activation="swiglu", ffn_size=hf["intermediate_size"],
                         bias=False, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                         init_std=hf.get("initializer_range", 0.02), embed_norm=False, final_norm=True)
    except (KeyError, TypeError) as e:
        raise InputError(f"{source}: missing or bad field {e}") from None


def params_from_llama(raw: dict[str, np.ndarray], config: GPTConfig, source: str) -> dict[str, np.ndarray]:
    """pocketgpt's parameters from a Llama state dict (float32)."""
    def take(name: str) -> np.ndarray:
        if name not in raw:
            raise InputError(f"{source}: tensor {name} is missing")
        return np.asarray(raw.pop(name), np.float32)

    raw = dict(raw)
    params = {"wte.weight": take("model.embed_tokens.weight"), "ln_f.weight": take("model.norm.weight")}
    if config.tie_embeddings:
        raw.pop("lm_head.weight", None)
    else:
        params["lm_head.weight"] = take("lm_head.weight")
    for i in range(config.n_layer):
        hf = f"model.layers.{i}"
        for theirs, ours in RENAMES.items():
            params[f"h.{i}.{ours}.weight"] = take(f"{hf}.{theirs}.weight")
        for ours, parts in FUSED.items():
            params[f"h.{i}.{ours}.weight"] = np.concatenate([take(f"{hf}.{p}.weight") for p in parts])
    leftover = sorted(k for k in raw if not k.endswith("rotary_emb.inv_freq"))
    if leftover:
        raise InputError(f"{source}: tensors a Llama of this config.json does not have: {leftover[:3]}")
    for name, shape in param_shapes(config).items():
        if params[name].shape != shape:
            raise InputError(f"{source}: {name} has shape {params[name].shape}, config.json implies {shape}")
    return params


def llama_tensors(params: dict[str, np.ndarray], config: GPTConfig) -> dict[str, np.ndarray]:
    """The state dict LlamaForCausalLM loads."""
    q_size, kv_size = config.qkv_sizes
    cuts = {"attn.c_attn": (q_size, q_size + kv_size), "mlp.c_fc": (config.ffn,)}
    out = {"model.embed_tokens.weight": params["wte.weight"], "model.norm.weight": params["ln_f.weight"]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = params["lm_head.weight"]
    for i in range(config.n_layer):
        hf = f"model.layers.{i}"
        for theirs, ours in RENAMES.items():
            out[f"{hf}.{theirs}.weight"] = params[f"h.{i}.{ours}.weight"]
        for ours, parts in FUSED.items():
            for part, rows in zip(parts, np.split(params[f"h.{i}.{ours}.weight"], cuts[ours])):
                out[f"{hf}.{part}.weight"] = rows
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def llama_config(config: GPTConfig, bos: int | None, eos: int | None) -> dict:
    """config.json of LlamaForCausalLM."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": config.vocab_size,
            "hidden_size": config.n_embd, "intermediate_size": config.ffn, "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head, "num_key_value_heads": config.n_kv,
            "head_dim": config.head_size, "max_position_embeddings": config.block_size,
            "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
            "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
            "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std,
            "bos_token_id": bos, "eos_token_id": eos, "use_cache": True, "torch_dtype": "float32"}
