"""Fake quantization: a float GPT whose block linears are seen through round-to-nearest quantization in the
forward pass (dequant(quant(W))). Backward then gives the gradient for the fake-quantized matrix, which QAT
applies to the float W as if the rounding were the identity (the straight-through estimator)."""

from __future__ import annotations

import numpy as np

from pocketgpt.formats import Packed
from pocketgpt.model import GPT, linear_names
from pocketgpt.quant.recipe import QuantRecipe, rtn_packer


class FakeQuantGPT(GPT):
    def __init__(self, model: GPT, recipe: QuantRecipe):
        self.recipe = recipe
        self.pack = rtn_packer(recipe)
        self.fake = set(linear_names(model.config))
        super().__init__(model.config, {k: v.copy() for k, v in model.params.items()}, dtype=model.dtype)
        self._blocks = None  # the fake-quantized weights follow the float ones as they train

    def stored(self, name: str) -> np.ndarray | Packed:
        """The float weight, or for a block linear dequant(quant(W)) as a float matrix: the forward multiplies it as
        it is (activations unrounded), as the straight-through backward assumes."""
        w = self.params.get(name)
        return self.pack(w).dequantize(w.dtype) if name in self.fake else w
