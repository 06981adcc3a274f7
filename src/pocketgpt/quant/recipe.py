"""QuantRecipe: how a model's block linears are quantized (method, format, bits, groups, rotation), and the
round-to-nearest packer of its format.

Formats: "int", pocketgpt's integer groups (2, 3, 4 or 8 bits, any group size that divides the rows,
symmetric or asymmetric); "q8_0", "q4_0", "mxfp4", llama.cpp's blocks of 32 (round to nearest only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from pocketgpt.config import GPTConfig
from pocketgpt.errors import InputError, SettingsError, check_settings
from pocketgpt.formats import Packed
from pocketgpt.formats.ggml import QUANTIZE, check_row, quantize_blocks
from pocketgpt.formats.groups import BITS, check_format, quantize_groups
from pocketgpt.model import linear_names, param_shapes

METHODS = ("rtn", "gptq", "awq", "smoothquant", "qat", "zeroqat")  # the last two fine-tune first (quant.qat)
ROTATIONS = ("none", "hadamard", "learned")  # QuaRot, SpinQuant (quant.rotation); with rtn and gptq
FORMATS = ("int", *QUANTIZE)
CALIBRATED = ("gptq", "awq", "smoothquant")  # methods that read calibration inputs


@dataclass(frozen=True)
class QuantRecipe:
    method: str = "gptq"  # what `pocketgpt quantize` uses unless told: the best of the calibrated methods here
    bits: int = 4
    group_size: int = 64
    symmetric: bool = True
    act_order: bool = False  # GPTQ only
    damp: float = 0.01  # GPTQ only: dampening as a fraction of the mean Hessian diagonal
    rotation: str = "none"  # rotate the residual stream first: hadamard (QuaRot) or learned (SpinQuant)
    format: str = "int"

    def __post_init__(self) -> None:
        check_settings([
            (self.method in METHODS, "method", f"must be one of {', '.join(METHODS)} (got {self.method!r})"),
            (self.rotation in ROTATIONS, "rotation", f"must be one of {', '.join(ROTATIONS)} (got {self.rotation!r})"),
            (self.format in FORMATS, "format", f"must be one of {', '.join(FORMATS)} (got {self.format!r})"),
            (self.bits in BITS, "bits", f"must be one of {', '.join(map(str, BITS))} (got {self.bits})"),
            (isinstance(self.group_size, int) and self.group_size >= 1, "group_size",
             f"must be >= 1 (got {self.group_size})"),
            (self.damp > 0, "damp", f"must be > 0 (got {self.damp})"),
        ])
        check_settings([
            (self.rotation == "none" or self.method in ("rtn", "gptq"), "rotation",
             f"works with rtn and gptq (got {self.method}): the other methods fold scales into norm gains, which a "
             "rotated model no longer has"),
            (self.format == "int" or self.method == "rtn", "format",
             f"{self.format} is written by round to nearest only (method rtn)"),
            (self.method != "smoothquant" or self.bits == 8, "bits", "must be 8 for SmoothQuant's W8A8"),
        ])

    @property
    def label(self) -> str:
        name = self.method if self.format == "int" else f"{self.method} {self.format}"
        return name if self.rotation == "none" else f"{name}+{self.rotation}"

    @property
    def calibrated(self) -> bool:
        return self.method in CALIBRATED or self.rotation == "learned"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantRecipe:
        try:
            return cls(**d)
        except TypeError as e:
            raise InputError(f"invalid quantization recipe: {e}") from None


def check_rotatable(config: GPTConfig) -> None:
    """Raise unless the residual stream of this architecture can be rotated (pocketgpt.quant.rotation)."""
    if config.bias:
        raise InputError("rotation supports models without biases (a norm bias before lm_head has nowhere to go)")
    if config.embed_norm and config.norm_weights:
        raise InputError("rotation cannot fold the gain of an embedding norm: it scales the residual stream itself")


def check_recipe(config: GPTConfig, recipe: QuantRecipe) -> None:
    """Raise unless every block linear of this architecture fits the recipe's format (and rotation)."""
    if recipe.rotation != "none":
        check_rotatable(config)
    shapes = param_shapes(config)
    try:
        for name in linear_names(config):
            n = shapes[name][1]
            check_format(recipe.bits, recipe.group_size, n) if recipe.format == "int" else check_row(n, recipe.format)
    except InputError as e:
        raise SettingsError([("group_size" if recipe.format == "int" else "format", str(e))]) from None


def rtn_packer(recipe: QuantRecipe) -> Callable[[np.ndarray], Packed]:
    """Round-to-nearest packing of one (out, in) float matrix in the recipe's format."""
    if recipe.format == "int":
        act_bits = 8 if recipe.method == "smoothquant" else 0

        def pack(w: np.ndarray) -> Packed:
            q = quantize_groups(w, recipe.bits, recipe.group_size, recipe.symmetric)
            q.act_bits = act_bits
            return q

        return pack
    return lambda w: quantize_blocks(w, recipe.format)
