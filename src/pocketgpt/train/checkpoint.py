"""Checkpoints: a folder written atomically, read back with a clear error for every way it can be wrong.

Layout of a checkpoint folder (format version 2):
  config.json              {"format": "pocketgpt", "format_version": 2, "model": GPTConfig fields,
                            "dtype": "float32" | "float64", "tokenizer": {...}, "data": {...},
                            "packed": {NAME: {"format": ..., ...}}, "quantization": {...} (a quantized model),
                            "files": {file name: SHA-256 hex digest of every other file in the folder}}
  model.safetensors        one tensor per float parameter, named as in pocketgpt.model.param_shapes; each
                           packed weight NAME as one tensor per part, NAME.<part> (pocketgpt.formats)
  vocab.json, merges.txt   (BPE tokenizer only) GPT-2's tokenizer files
  train_state.json         (training only) step, run settings, data position and RNG state
  train_state.safetensors  (training only) optimizer moments adam.m and adam.v, flat
Loading verifies every digest, so a flipped byte is an error naming the file; float weights must be finite.
Version 1 (no digests; a quantized model's recipe implying its packed weights) is still read.

A save writes a complete new folder beside the old one, then swaps the two with two renames, so
an interrupted save leaves the previous checkpoint whole (and the next load or save finishes the swap).
A save never replaces an existing checkpoint unless asked to (overwrite=True).
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
from pocketgpt.errors import InputError
from pocketgpt.files import fsync_file, inside, sha256_file
from pocketgpt.formats import Packed, describe, load_packed
from pocketgpt.model import GPT, count_params, linear_names, packable_names, param_shapes
from pocketgpt.tokenizers import CharTokenizer, load_tokenizer

FORMAT, FORMAT_VERSION = "pocketgpt", 2
READS = (1, 2)  # format versions this code reads
DTYPES = ("float32", "float64")
MAX_HEADER = 100 << 20  # a safetensors header larger than this is garbage, not a real file


class CheckpointError(InputError):
    pass


class CheckpointExists(CheckpointError):
    """The destination holds a checkpoint that a save would replace."""


@dataclass
class Checkpoint:
    config: GPTConfig
    params: dict[str, np.ndarray]
    tokenizer: CharTokenizer  # or a pocketgpt.tokenizers.BPETokenizer
    dtype: str = "float32"
    data: dict = field(default_factory=dict)
    train_state: dict | None = None  # train_state.json
    train_arrays: dict[str, np.ndarray] | None = None  # train_state.safetensors
    packed: dict[str, Packed] | None = None  # packed weights (then absent from params)
    quantization: dict | None = None  # how the packed weights were made (pocketgpt.quant.QuantRecipe fields)

    def model(self) -> GPT:
        return GPT(self.config, self.params, dtype=self.dtype, packed=self.packed)

    @property
    def documents(self) -> bool:
        """Whether the model was trained on BOS-framed documents (lines mode) rather than continuous text."""
        return self.data.get("mode", "lines") == "lines"

    def float_params(self) -> dict[str, np.ndarray]:
        """Every parameter as a float array (packed weights dequantized)."""
        return {**self.params, **{k: w.dequantize() for k, w in (self.packed or {}).items()}}

    @classmethod
    def of(cls, model: GPT, tokenizer, data: dict | None = None, quantization: dict | None = None) -> Checkpoint:
        """A checkpoint of a model as it is (float or packed), without training state."""
        return cls(model.config, model.params, tokenizer, model.dtype.name, data or {},
                   packed=model.packed or None, quantization=quantization)


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


def is_checkpoint(path: str | os.PathLike) -> bool:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_can_save(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise unless `path` is free, an empty folder, or (with overwrite) a pocketgpt checkpoint."""
    path = Path(path)
    _recover(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    if path.is_dir() and is_checkpoint(path):
        if not overwrite:
            raise CheckpointExists(f"{path} already holds a checkpoint")
        return
    raise CheckpointError(f"{path} exists and is not a pocketgpt checkpoint; refusing to overwrite it")


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint, overwrite: bool = False) -> None:
    path = Path(path)
    check_can_save(path, overwrite)
    tmp, old = _siblings(path)
    tmp.mkdir(parents=True)
    try:
        _write_folder(tmp, ckpt)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise CheckpointError(f"could not write the checkpoint {path}: {reason}; the previous contents are "
                              "unchanged") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    if old.exists():
        shutil.rmtree(old)


def _write_folder(folder: Path, ckpt: Checkpoint) -> None:
    tensors = dict(ckpt.params)
    for name, w in (ckpt.packed or {}).items():
        tensors.update({f"{name}.{part}": a for part, a in w.parts().items()})
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, folder / "model.safetensors",
              metadata={"format": FORMAT})
    for name, data in ckpt.tokenizer.files().items():
        (folder / name).write_bytes(data)
    if ckpt.train_state is not None:
        save_file({k: np.ascontiguousarray(v) for k, v in ckpt.train_arrays.items()},
                  folder / "train_state.safetensors", metadata={"format": FORMAT})
        (folder / "train_state.json").write_bytes(_json_bytes({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                               **ckpt.train_state}))
    files = {}
    for f in sorted(folder.iterdir()):  # make the bytes durable before the rename makes them visible
        fsync_file(f)
        files[f.name] = sha256_file(f)
    cfg = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": ckpt.config.to_dict(), "dtype": ckpt.dtype,
           "tokenizer": ckpt.tokenizer.to_dict(), "data": ckpt.data}
    if ckpt.packed:
        cfg["packed"] = {name: describe(w) for name, w in ckpt.packed.items()}
    if ckpt.quantization:
        cfg["quantization"] = ckpt.quantization
    cfg["files"] = files
    (folder / "config.json").write_bytes(_json_bytes(cfg))
    fsync_file(folder / "config.json")


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
    if obj.get("format_version") not in READS:
        raise CheckpointError(f"{path} has format version {obj.get('format_version')}; "
                              f"this pocketgpt reads versions {', '.join(map(str, READS))}")
    return obj


def _check_size(path: Path) -> None:
    """Raise unless the safetensors file at path is as long as its own header says."""
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


def _verify(path: Path, digests: dict | None) -> None:
    """Raise unless the file's SHA-256 is the one config.json records (no record: version 1, nothing to check)."""
    if digests is None:
        return
    if path.name not in digests:
        raise CheckpointError(f"{path.parent / 'config.json'} records no digest for {path.name}")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    if sha256_file(path) != digests[path.name]:
        raise CheckpointError(f"{path} does not match its SHA-256 in config.json: the file was changed or "
                              "damaged since it was saved; restore it or re-run training")


def _read_tensors(path: Path, digests: dict | None) -> dict[str, np.ndarray]:
    """safetensors file -> arrays, checking first that the file is whole and unchanged."""
    _check_size(path)
    _verify(path, digests)
    try:
        return load_file(path)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from None


def verify_files(path: str | os.PathLike) -> list[tuple[str, int, str]]:
    """(file name, bytes, "ok" | "changed" | "missing" | "not recorded") for every file of a checkpoint."""
    path = Path(path)
    digests = _read_json(path / "config.json").get("files")
    rows = []
    names = sorted(set(digests or {}) | {f.name for f in path.iterdir() if f.name != "config.json"})
    for name in names:
        f = path / name
        if not f.is_file():
            rows.append((name, 0, "missing"))
        elif digests is None or name not in digests:
            rows.append((name, f.stat().st_size, "not recorded"))
        else:
            rows.append((name, f.stat().st_size, "ok" if sha256_file(f) == digests[name] else "changed"))
    return rows


def _packed_descriptions(cfg: dict, config: GPTConfig) -> dict:
    """config.json's "packed" map; in version 1, the one implied by its quantization recipe."""
    if cfg.get("format_version") == 1 and "quantization" in cfg:
        r = cfg["quantization"]
        meta = {"format": "int", "bits": r.get("bits"), "group_size": r.get("group_size"),
                "symmetric": r.get("symmetric", True), "act_bits": 8 if r.get("method") == "smoothquant" else 0}
        return {name: meta for name in linear_names(config)}
    packed = cfg.get("packed", {})
    if not isinstance(packed, dict):
        raise CheckpointError("\"packed\" must map weight names to their formats")
    return packed


def load_checkpoint(path: str | os.PathLike, train_state: bool = False) -> Checkpoint:
    path = Path(path)
    _recover(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such folder")
    cfg = _read_json(path / "config.json")
    digests = cfg.get("files") if cfg["format_version"] >= 2 else None
    if cfg["format_version"] >= 2 and not isinstance(digests, dict):
        raise CheckpointError(f"{path / 'config.json'} is invalid: it records no file digests")
    try:
        config = GPTConfig.from_dict(cfg["model"])
        dtype = cfg.get("dtype", "float32")
        if dtype not in DTYPES:
            raise InputError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        tokenizer_spec = cfg["tokenizer"]
        descriptions = _packed_descriptions(cfg, config)
    except (KeyError, TypeError, InputError) as e:
        raise CheckpointError(f"{path / 'config.json'} is invalid: {e}") from None
    try:
        for name in _tokenizer_files(tokenizer_spec):
            _verify(inside(path, name), digests)
        tokenizer = load_tokenizer(tokenizer_spec, path)
    except CheckpointError:
        raise
    except (KeyError, TypeError, InputError) as e:
        raise CheckpointError(f"{path}: tokenizer: {e}") from None
    # a BPE vocabulary may be smaller than a padded embedding; version 1 had no reserved character ids
    exact = isinstance(tokenizer, CharTokenizer) and cfg["format_version"] >= 2
    if tokenizer.vocab_size > config.vocab_size or (exact and tokenizer.vocab_size != config.vocab_size):
        raise CheckpointError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model "
                              f"{config.vocab_size}; they do not belong together")
    weights = path / "model.safetensors"
    tensors = _read_tensors(weights, digests)
    shapes = param_shapes(config)
    packed = {}
    for name, description in descriptions.items():
        if name not in packable_names(config):
            raise CheckpointError(f"{path / 'config.json'}: {name} is not a weight that can be packed")
        parts = {k.rsplit(".", 1)[1]: tensors.pop(k) for k in list(tensors) if k.rsplit(".", 1)[0] == name}
        try:
            packed[name] = load_packed(name, description, parts, shapes[name])
        except InputError as e:
            raise CheckpointError(f"{weights}: {e}") from None
    params = {}
    for name, shape in shapes.items():
        if name in packed:
            continue
        if name not in tensors:
            raise CheckpointError(f"{weights} lacks tensor {name}")
        t = tensors.pop(name)
        if t.shape != shape:
            raise CheckpointError(f"{weights}: {name} has shape {t.shape}, config.json implies {shape}")
        if not np.isfinite(t).all():
            raise CheckpointError(f"{weights}: {name} holds NaN or infinite values")
        params[name] = t
    if tensors:
        raise CheckpointError(f"{weights} holds tensors the model does not have: {', '.join(sorted(tensors)[:3])}")
    ckpt = Checkpoint(config, params, tokenizer, dtype, cfg.get("data") or {}, packed=packed or None,
                      quantization=cfg.get("quantization"))
    if train_state:
        _verify(path / "train_state.json", digests)
        ckpt.train_state = _read_json(path / "train_state.json")
        ckpt.train_arrays = _read_tensors(path / "train_state.safetensors", digests)
    return ckpt


def _tokenizer_files(spec) -> list[str]:
    """The file names a tokenizer description names (checked for digests before they are read)."""
    if not isinstance(spec, dict):
        return []
    return [v for k, v in spec.items() if k in ("vocab", "merges") and isinstance(v, str)]


def checkpoint_info(path: str | os.PathLike) -> dict:
    """What a checkpoint holds, read from its config.json and training state without loading the weights:
    architecture, parameters, dtype, packed formats and quantization recipe, tokenizer, training step and
    settings, and every file with its size and whether its digest verifies (a damaged file is reported, not
    raised)."""
    path = Path(path)
    _recover(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: no such folder")
    cfg = _read_json(path / "config.json")
    try:
        config = GPTConfig.from_dict(cfg["model"])
        packed = _packed_descriptions(cfg, config)
        tok = cfg["tokenizer"]
    except (KeyError, TypeError, InputError) as e:
        raise CheckpointError(f"{path / 'config.json'} is invalid: {e}") from None
    files = [{"name": n, "bytes": b, "digest": status} for n, b, status in verify_files(path)]
    size = {f["name"]: f["bytes"] for f in files}
    info = {"checkpoint": str(path), "format_version": cfg["format_version"], "model": config.to_dict(),
            "parameters": count_params(config), "dtype": cfg.get("dtype", "float32"),
            "weight_bytes": size.get("model.safetensors", 0),
            "packed_formats": sorted({d.get("format") for d in packed.values() if isinstance(d, dict)}),
            "packed_weights": len(packed), "quantization": cfg.get("quantization"),
            "tokenizer": {"type": tok.get("type") if isinstance(tok, dict) else None}, "data": cfg.get("data") or {},
            "files": files}
    state_ok = any(f["name"] == "train_state.json" and f["digest"] in ("ok", "not recorded") for f in files)
    if state_ok:
        state = _read_json(path / "train_state.json")
        info["training"] = {"step": state.get("step"), "settings": state.get("settings") or {},
                            "val_loss": (state.get("history") or {}).get("val_loss", [])[-1:]}
    return info
