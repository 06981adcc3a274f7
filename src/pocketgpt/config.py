"""GPTConfig: the architecture of a pocketgpt model, as a frozen dataclass, and its named presets.

One dataclass describes both families: GPT-2 (learned positions, LayerNorm, GELU, fused biases) and Llama
(rotary positions, RMSNorm with gains, grouped-query attention, a SwiGLU MLP, no biases). Each difference
is an explicit field, so model code reads fields, never a family name. Only the architecture lives here;
run settings (learning rate, steps, batch size) are keyword arguments of the functions that use them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pocketgpt.errors import InputError, SettingsError, check_settings

NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("relu", "gelu", "swiglu")  # gelu: the tanh approximation (GPT-2's); swiglu: silu(gate) * up
POSITIONS = ("learned", "rope")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 27
    block_size: int = 16  # context length in tokens
    n_layer: int = 1
    n_head: int = 4
    n_embd: int = 16
    n_kv_head: int = 0  # key/value heads; 0: as many as query heads; fewer: grouped-query (1: multi-query)
    positions: str = "learned"  # learned: a position embedding (wpe); rope: rotary embedding of queries and keys
    rope_theta: float = 10000.0
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    norm_weights: bool = False  # learnable gain (and a bias too for layernorm when bias=True)
    norm_eps: float = 1e-5
    activation: str = "relu"  # relu | gelu | swiglu
    ffn_size: int = 0  # the MLP's hidden width; 0: 4 * n_embd
    bias: bool = False  # biases on the linear layers
    tie_embeddings: bool = False  # lm_head shares wte's weights
    init_std: float = 0.08  # N(0, init_std) for every matrix
    scale_residual_init: bool = False  # GPT-2: residual projections drawn with std / sqrt(2 n_layer)
    embed_norm: bool = True  # microgpt normalizes the token + position embedding before layer 0
    final_norm: bool = False  # GPT-2 and Llama have a final norm (ln_f) before lm_head; microgpt has none
    input_dim: int = 0  # > 0: an input projection (inp) embeds feature vectors (e.g. image patches) too

    def __post_init__(self) -> None:
        ints = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        checks = [(isinstance(getattr(self, n), int) and getattr(self, n) >= 1, n, f"must be >= 1 (got "
                   f"{getattr(self, n)})") for n in ints]
        checks += [(self.n_kv_head >= 0, "n_kv_head", f"must be >= 0 (got {self.n_kv_head})"),
                   (self.ffn_size >= 0, "ffn_size", f"must be >= 0 (got {self.ffn_size})"),
                   (self.input_dim >= 0, "input_dim", f"must be >= 0 (got {self.input_dim})"),
                   (self.norm in NORMS, "norm", f"must be one of {', '.join(NORMS)} (got {self.norm!r})"),
                   (self.activation in ACTIVATIONS, "activation",
                    f"must be one of {', '.join(ACTIVATIONS)} (got {self.activation!r})"),
                   (self.positions in POSITIONS, "positions",
                    f"must be one of {', '.join(POSITIONS)} (got {self.positions!r})"),
                   (self.init_std > 0, "init_std", "must be > 0"), (self.norm_eps > 0, "norm_eps", "must be > 0"),
                   (self.rope_theta > 0, "rope_theta", "must be > 0")]
        check_settings(checks)
        check_settings([(self.n_embd % self.n_head == 0, "n_embd",
                         f"({self.n_embd}) must be divisible by n_head ({self.n_head})"),
                        (self.n_head % self.n_kv == 0, "n_kv_head",
                         f"({self.n_kv}) must divide n_head ({self.n_head})"),
                        (self.positions != "rope" or self.head_size % 2 == 0, "n_head",
                         f"must leave an even head size for rotary positions (head size {self.head_size})")])

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_kv(self) -> int:
        """Key/value heads."""
        return self.n_kv_head or self.n_head

    @property
    def ffn(self) -> int:
        """The MLP's hidden width (a SwiGLU MLP's c_fc produces twice this: gate, then up)."""
        return self.ffn_size or 4 * self.n_embd

    @property
    def qkv_sizes(self) -> tuple[int, int]:
        """Rows of c_attn's query part and of each of its key and value parts."""
        return self.n_head * self.head_size, self.n_kv * self.head_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        if not isinstance(d, dict):
            raise InputError("the model description must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SettingsError([(name, "is not a GPTConfig field") for name in unknown])
        try:
            return cls(**d)
        except TypeError as e:  # a string where a number goes
            raise InputError(f"the model description has a value of the wrong type ({e})") from None

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
    # SmolLM2-135M (Hugging Face's, the language model of SmolVLM): the Llama family, deep and thin as MobileLLM
    # argues small models should be: 30 layers of 576 channels, 9 query heads sharing 3 key/value heads,
    # rotary positions (theta 100000), RMSNorm with gains, a SwiGLU MLP of width 1536, tied embeddings.
    "smollm2-135m": GPTConfig(
        vocab_size=49152, block_size=8192, n_layer=30, n_head=9, n_kv_head=3, n_embd=576, positions="rope",
        rope_theta=100000.0, norm="rmsnorm", norm_weights=True, norm_eps=1e-5, activation="swiglu", ffn_size=1536,
        bias=False, tie_embeddings=True, init_std=0.02, scale_residual_init=False, embed_norm=False, final_norm=True,
    ),
    # A MobileLLM-style counterpart of shakespeare-cpu with as many parameters (0.805 M against 0.804 M at
    # vocabulary 65): 14 layers of 72 channels instead of 4 of 128, 6 query heads sharing 2 key/value heads,
    # SwiGLU, rotary positions, tied embeddings (benchmarks/mobilellm.py trains both with the same recipe).
    "shakespeare-deep": GPTConfig(
        vocab_size=65, block_size=64, n_layer=14, n_head=6, n_kv_head=2, n_embd=72, positions="rope",
        norm="rmsnorm", norm_weights=True, activation="swiglu", ffn_size=200, bias=False, tie_embeddings=True,
        init_std=0.02, scale_residual_init=True, embed_norm=False, final_norm=True,
    ),
}


def preset(name: str) -> GPTConfig:
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
