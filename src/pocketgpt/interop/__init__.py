"""Formats other tools read and write: Hugging Face folders (hf), GGUF files in (gguf_load) and out (gguf),
and `load`, which opens whatever a user points a command at (a checkpoint, a GGUF file, a Hugging Face folder)
as a checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

from pocketgpt.interop.gguf_load import is_gguf, load_gguf
from pocketgpt.interop.hf import import_hf
from pocketgpt.train import Checkpoint, is_checkpoint, load_checkpoint


def load(source: str | os.PathLike, packed: bool = True) -> Checkpoint:
    """A pocketgpt checkpoint folder, a GGUF file or a Hugging Face folder, as a Checkpoint. A GGUF file's matrices
    stay packed as stored unless packed=False (then float32, for training or quantizing)."""
    path = Path(source)
    if is_gguf(path):
        return load_gguf(path, packed)
    if path.is_dir() and (path / "config.json").is_file() and not is_checkpoint(path):
        return import_hf(path)
    return load_checkpoint(path)
