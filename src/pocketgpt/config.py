"""GPTConfig: the architecture of a pocketgpt model, as a frozen dataclass, and its named presets.

Only the architecture lives here; run settings (learning rate, steps, batch size) are keyword
arguments of the functions that use them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("relu", "gelu")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 27
    block_size: int = 16
    n_layer: int = 1
    n_head: int = 4
    n_embd: int = 16
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    norm_weights: bool = False  # learnable gain (and a bias too for layernorm when bias=True)
    norm_eps: float = 1e-5
    activation: str = "relu"  # relu | gelu (tanh approximation, as GPT-2)
    bias: bool = False  # biases on the linear layers
    tie_embeddings: bool = False  # lm_head shares wte's weights
    init_std: float = 0.08  # N(0, init_std) for every matrix
    scale_residual_init: bool = False  # GPT-2: residual projections drawn with std / sqrt(2 n_layer)
    embed_norm: bool = True  # microgpt normalizes the token + position embedding before layer 0
    final_norm: bool = False  # GPT-2 has a final norm (ln_f) before lm_head; microgpt has none
    input_dim: int = 0  # > 0: an input projection (inp) embeds feature vectors (e.g. image patches) too

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_head >= 1 and self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.norm not in NORMS:
            problems.append(f"norm must be one of {', '.join(NORMS)} (got {self.norm!r})")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {', '.join(ACTIVATIONS)} (got {self.activation!r})")
        if self.input_dim < 0:
            problems.append(f"input_dim must be >= 0 (got {self.input_dim})")
        if self.init_std <= 0 or self.norm_eps <= 0:
            problems.append("init_std and norm_eps must be > 0")
        if problems:
            raise ValueError("invalid GPTConfig: " + "; ".join(problems))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> GPTConfig:
        return dataclasses.replace(self, **changes)


# Exact-match presets. vocab_size is set from the tokenizer when a model is built for data.
PRESETS: dict[str, GPTConfig] = {
    # microgpt: 1 layer, 16 channels, RMSNorm without weights, ReLU, no biases, separate lm_head.
    "microgpt": GPTConfig(),
    # nanoGPT's shakespeare_char run sized for a CPU: LayerNorm with weights, GELU, no biases,
    # tied embeddings, final norm, GPT-2 initialization.
    "shakespeare-cpu": GPTConfig(
        vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, norm="layernorm",
        norm_weights=True, activation="gelu", bias=False, tie_embeddings=True, init_std=0.02,
        scale_residual_init=True, embed_norm=False, final_norm=True,
    ),
    # GPT-2 (124M) exactly as Hugging Face's GPT2LMHeadModel computes it: LayerNorm with weight and bias,
    # GELU (tanh), biases everywhere, learned positions, fused QKV, final LayerNorm, tied lm_head.
    "gpt2": GPTConfig(
        vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, norm="layernorm",
        norm_weights=True, activation="gelu", bias=True, tie_embeddings=True, init_std=0.02,
        scale_residual_init=True, embed_norm=False, final_norm=True,
    ),
}


def preset(name: str) -> GPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
