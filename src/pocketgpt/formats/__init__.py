"""Packed weight formats, each documented byte by byte beside the code that packs it: pocketgpt's integer
groups (groups), llama.cpp's blocks (ggml: Q8_0, Q4_0, Q4_1, MXFP4; kquants: Q4_K, Q5_K, Q6_K, Q5_0, Q5_1),
16-bit floats (floats: f16, bf16). NumPy only; nothing here knows a model or runs a product (pocketgpt.kernels does).

FORMATS maps the name a checkpoint records to the class that rebuilds the matrix (`load_packed`).
"""

from __future__ import annotations

import numpy as np

from pocketgpt.errors import InputError
from pocketgpt.formats.floats import KINDS as FLOAT_KINDS
from pocketgpt.formats.floats import HalfFloats
from pocketgpt.formats.ggml import DEQUANTIZE, GGMLBlocks
from pocketgpt.formats.groups import GroupQuantized
from pocketgpt.formats.packed import Packed, check_parts, stack_rows

FORMATS: dict[str, type[Packed]] = {"int": GroupQuantized, **{kind: GGMLBlocks for kind in DEQUANTIZE},
                                    **{kind: HalfFloats for kind in FLOAT_KINDS}}

__all__ = ["FORMATS", "GGMLBlocks", "GroupQuantized", "HalfFloats", "Packed", "describe", "load_packed",
           "stack_rows"]


def describe(w: Packed) -> dict:
    """What config.json records of a packed matrix."""
    return {"format": w.format, **w.meta()}


def load_packed(name: str, description: dict, parts: dict[str, np.ndarray], shape: tuple[int, int]) -> Packed:
    """The packed matrix `name` from its config.json description and its parts (InputError if they do not fit)."""
    fmt = description.get("format") if isinstance(description, dict) else None
    if fmt not in FORMATS:
        raise InputError(f"{name}: unknown packed format {fmt!r} (known: {', '.join(FORMATS)})")
    meta = {k: v for k, v in description.items() if k != "format"}
    if FORMATS[fmt] is not GroupQuantized:
        meta["kind"] = fmt
    cls = FORMATS[fmt]
    check_parts(cls, name, parts, shape, meta)
    return cls.from_parts(parts, shape, meta)
