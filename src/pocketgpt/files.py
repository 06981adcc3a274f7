"""Files: writes that a reader never sees half of, content digests, and names confined to a folder.

Every file the project writes goes through `atomic_file` (or `write_text`/`write_bytes`): the bytes are
written under a hidden temporary name in the same folder, flushed to disk, and renamed into place. An
error on the way (a full disk, Ctrl-C) removes the temporary file and leaves what was there before.
Checkpoint folders use the same idea at folder level (pocketgpt.train.checkpoint).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pocketgpt.errors import InputError


def temporary_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path to write; on success it is made durable and renamed to `path`."""
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def inside(folder: str | os.PathLike, name) -> Path:
    """folder / name, refusing a name that is not a plain file name of that folder ("../x", "/etc/passwd")."""
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise InputError(f"file name {name!r} must be a plain name of a file inside {folder}")
    return Path(folder) / name
