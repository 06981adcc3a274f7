"""Checkpoints: a folder written atomically, read back with a clear error for every way it can be wrong.

Layout of a checkpoint folder (format version 1):
  config.json              {"format": "pocketgpt", "format_version": 1, "model": GPTConfig fields,
                            "dtype": "float32" | "float64", "tokenizer": {...}, "data": {"data", "mode"}}
  model.safetensors        one tensor per parameter, named as in pocketgpt.model.param_shapes
  vocab.json, merges.txt   (BPE tokenizer only) GPT-2's tokenizer files
A quantized checkpoint's config.json also holds "quantization" (the QuantRecipe); each quantized weight
NAME is then stored as NAME.qweight (packed codes), NAME.scales (float16) and, if asymmetric, NAME.zeros
(see pocketgpt.quant.formats for the layout).
  train_state.json         (training only) step, run settings, data position and RNG state
  train_state.safetensors  (training only) optimizer moments adam.m and adam.v, flat

A save writes a complete new folder beside the old one, then swaps the two with two renames, so
an interrupted save leaves the previous checkpoint whole (and the next load or save finishes the swap).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from pocketgpt.config import GPTConfig
from pocketgpt.model import GPT, param_shapes
from pocketgpt.quant.formats import GroupQuantized
from pocketgpt.quant.model import QuantizedGPT, QuantRecipe, quantized_names
from pocketgpt.tokenizer import CharTokenizer, load_tokenizer

FORMAT, FORMAT_VERSION = "pocketgpt", 1
DTYPES = ("float32", "float64")
MAX_HEADER = 100 << 20  # a safetensors header larger than this is garbage, not a real file


class CheckpointError(ValueError):
    pass


@dataclass
class Checkpoint:
    config: GPTConfig
    params: dict[str, np.ndarray]
    tokenizer: CharTokenizer  # or a pocketgpt.bpe.BPETokenizer
    dtype: str = "float32"
    data: dict = field(default_factory=dict)
    train_state: dict | None = None  # train_state.json
    train_arrays: dict[str, np.ndarray] | None = None  # train_state.safetensors
    qweights: dict[str, GroupQuantized] | None = None  # quantized weights (then absent from params)
    recipe: QuantRecipe | None = None

    def model(self) -> GPT:
        if self.qweights:
            return QuantizedGPT(self.config, self.params, self.qweights, self.recipe, dtype=self.dtype)
        return GPT(self.config, self.params, dtype=self.dtype)

    def float_params(self) -> dict[str, np.ndarray]:
        """Every parameter as a float array (quantized weights dequantized)."""
        return {**self.params, **{k: q.dequantize() for k, q in (self.qweights or {}).items()}}

    @classmethod
    def of(cls, model: GPT, tokenizer, data: dict | None = None) -> Checkpoint:
        """A checkpoint of a model as it is (float or quantized), without training state."""
        quantized = isinstance(model, QuantizedGPT)
        return cls(model.config, model.params, tokenizer, model.dtype.name, data or {},
                   qweights=model.qweights if quantized else None, recipe=model.recipe if quantized else None)


def _siblings(path: Path) -> tuple[Path, Path]:
    return path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")


def _recover(path: Path) -> None:
    """Finish a swap that an interrupted save left half done."""
    tmp, old = _siblings(path)
    if not path.exists() and old.is_dir():
        os.rename(old, path)
    for stale in (tmp, old):
        if stale.is_dir():
            shutil.rmtree(stale)


def _is_checkpoint(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def check_can_save(path: str | os.PathLike) -> None:
    """Raise unless `path` is free, an empty folder or a pocketgpt checkpoint (which a save replaces)."""
    path = Path(path)
    _recover(path)
    if path.exists() and not (path.is_dir() and (_is_checkpoint(path) or not any(path.iterdir()))):
        raise CheckpointError(f"{path} exists and is not a pocketgpt checkpoint; refusing to overwrite it "
                              "(choose another --out)")


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    path = Path(path)
    check_can_save(path)
    tmp, old = _siblings(path)
    tmp.mkdir(parents=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION}
    tensors = dict(ckpt.params)
    for name, q in (ckpt.qweights or {}).items():
        tensors[f"{name}.qweight"], tensors[f"{name}.scales"] = q.packed, q.scales
        if q.zeros is not None:
            tensors[f"{name}.zeros"] = q.zeros
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp / "model.safetensors",
              metadata={"format": FORMAT})
    ckpt.tokenizer.save(tmp)
    quant = {"quantization": ckpt.recipe.to_dict()} if ckpt.qweights else {}
    _write_json(tmp / "config.json", {**meta, "model": ckpt.config.to_dict(), "dtype": ckpt.dtype,
                                      "tokenizer": ckpt.tokenizer.to_dict(), "data": ckpt.data, **quant})
    if ckpt.train_state is not None:
        save_file({k: np.ascontiguousarray(v) for k, v in ckpt.train_arrays.items()},
                  tmp / "train_state.safetensors", metadata={"format": FORMAT})
        _write_json(tmp / "train_state.json", {**meta, **ckpt.train_state})
    for f in tmp.iterdir():  # make the bytes durable before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pocketgpt file (no \"format\": \"{FORMAT}\"); "
                              "use `pocketgpt import` for other formats")
    if obj.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {obj.get('format_version')}; "
                              f"this pocketgpt reads version {FORMAT_VERSION}")
    return obj


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    """safetensors file -> arrays, checking first that the file is whole."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    size = path.stat().st_size
    truncated = f"{path} is truncated (expected {{:,}} bytes, found {size:,}); re-run training or restore the file"
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER:
                raise ValueError("implausible header length")
            if 8 + header_len > size:
                raise CheckpointError(truncated.format(8 + header_len).replace("expected", "expected at least"))
            header = json.loads(f.read(header_len))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except CheckpointError:
        raise
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise CheckpointError(f"{path} is corrupt: not a safetensors file") from None
    if size < 8 + header_len + end:
        raise CheckpointError(truncated.format(8 + header_len + end))
    try:
        return load_file(path)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from None


def _read_quantized(tensors: dict, name: str, shape: tuple[int, int], recipe: QuantRecipe,
                    path: Path) -> GroupQuantized:
    """Take `name`'s packed codes, scales and zero points out of `tensors`, checking their shapes."""
    out, n = shape
    groups = n // recipe.group_size
    expected = {"qweight": (out, n * recipe.bits // 8), "scales": (out, groups)}
    if not recipe.symmetric:
        expected["zeros"] = (out, groups)
    got = {}
    for part, want in expected.items():
        t = tensors.pop(f"{name}.{part}", None)
        if t is None or t.shape != want:
            found = "missing" if t is None else f"shape {t.shape}"
            raise CheckpointError(f"{path / 'model.safetensors'}: {name}.{part} is {found}, the recipe implies {want}")
        got[part] = t
    return GroupQuantized(got["qweight"], got["scales"], got.get("zeros"), shape, recipe.bits, recipe.group_size)


def load_checkpoint(path: str | os.PathLike, train_state: bool = False) -> Checkpoint:
    path = Path(path)
    _recover(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such folder")
    cfg = _read_json(path / "config.json")
    try:
        config = GPTConfig.from_dict(cfg["model"])
        dtype = cfg.get("dtype", "float32")
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        tokenizer_spec = cfg["tokenizer"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'} is invalid: {e}") from None
    try:
        tokenizer = load_tokenizer(tokenizer_spec, path)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: tokenizer: {e}") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                              f"{config.vocab_size}")
    params = _read_tensors(path / "model.safetensors")
    recipe, qweights = None, None
    if "quantization" in cfg:
        try:
            recipe = QuantRecipe(**cfg["quantization"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path / 'config.json'}: invalid quantization recipe: {e}") from None
        qweights = {name: _read_quantized(params, name, param_shapes(config)[name], recipe, path)
                    for name in quantized_names(config)}
    for name, shape in param_shapes(config).items():
        if qweights and name in qweights:
            continue
        if name not in params:
            raise CheckpointError(f"{path / 'model.safetensors'} lacks tensor {name}")
        if params[name].shape != shape:
            raise CheckpointError(f"{path / 'model.safetensors'}: {name} has shape {params[name].shape}, "
                                  f"config.json implies {shape}")
    ckpt = Checkpoint(config, params, tokenizer, dtype, cfg.get("data") or {}, qweights=qweights, recipe=recipe)
    if train_state:
        ckpt.train_state = _read_json(path / "train_state.json")
        ckpt.train_arrays = _read_tensors(path / "train_state.safetensors")
    return ckpt
