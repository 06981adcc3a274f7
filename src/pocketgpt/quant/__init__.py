"""The quantization layer: methods that produce packed weights (RTN, GPTQ, AWQ, SmoothQuant, QuaRot and
SpinQuant rotations, QAT, ZeroQAT) through one entry point, `quantize(model, recipe, dataset, ...)`, and the
report that runs them all. The formats themselves live in pocketgpt.formats; running packed weights is the
model's job."""

from pocketgpt.quant.quantize import quantize, quantize_weights
from pocketgpt.quant.recipe import FORMATS, METHODS, ROTATIONS, QuantRecipe, check_recipe

__all__ = ["FORMATS", "METHODS", "ROTATIONS", "QuantRecipe", "check_recipe", "quantize", "quantize_weights"]
