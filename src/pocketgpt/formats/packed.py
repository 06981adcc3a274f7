"""What every packed weight format offers: its shape, its bytes as named parts, and dequantize().

A packed (out, in) matrix is stored in a checkpoint as one tensor per part (NAME.<part>) plus a small
description in config.json ({"format": ..., **meta}); `from_parts` rebuilds it and checks every part's shape.
Which code multiplies by a packed matrix is not decided here (dequantize() is the reference).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from pocketgpt.errors import InputError


class Packed(ABC):
    """A packed (out, in) weight matrix."""

    shape: tuple[int, int]
    act_bits: int = 0  # > 0: inputs are rounded to this many bits per token before the product (W8A8)

    @property
    @abstractmethod
    def format(self) -> str:
        """The format's name in config.json."""

    @abstractmethod
    def dequantize(self, dtype=np.float32) -> np.ndarray:
        """The (out, in) matrix the packed bytes stand for."""

    @abstractmethod
    def parts(self) -> dict[str, np.ndarray]:
        """The arrays a checkpoint stores, by part name."""

    def meta(self) -> dict:
        """What config.json records beside the format's name (everything but the arrays and the shape)."""
        return {}

    @classmethod
    @abstractmethod
    def expected_parts(cls, shape: tuple[int, int], meta: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """The shape and dtype of every part of a matrix of this shape."""

    @classmethod
    @abstractmethod
    def from_parts(cls, parts: dict[str, np.ndarray], shape: tuple[int, int], meta: dict) -> Packed:
        """The matrix from its parts, which check_parts has accepted."""

    def take(self, rows) -> Packed:
        """The matrix of the given rows (an index array or a slice), in the same format."""
        parts = {name: part[rows] for name, part in self.parts().items()}
        n_rows = next(iter(parts.values())).shape[0]
        return type(self).from_parts(parts, (n_rows, self.shape[1]), self.meta() | self._rebuild_meta())

    def _rebuild_meta(self) -> dict:
        """What from_parts needs beyond meta() (e.g. the kind of a GGML block)."""
        return {}

    @classmethod
    def stack(cls, matrices: list[Packed]) -> Packed:
        """stack_rows() of matrices of this class (a format may do it without going through its stored parts)."""
        first = matrices[0]
        parts = {name: np.concatenate([m.parts()[name] for m in matrices]) for name in first.parts()}
        return cls.from_parts(parts, (sum(m.shape[0] for m in matrices), first.shape[1]),
                              first.meta() | first._rebuild_meta())

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts().values())

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / (self.shape[0] * self.shape[1])


def check_parts(cls: type[Packed], name: str, parts: dict[str, np.ndarray], shape: tuple[int, int],
                meta: dict) -> None:
    """Raise InputError naming the first part that is missing or has the wrong shape or dtype."""
    for part, (want, dtype) in cls.expected_parts(shape, meta).items():
        got = parts.get(part)
        if got is None:
            raise InputError(f"{name}.{part} is missing")
        if got.shape != want or got.dtype != dtype:
            raise InputError(f"{name}.{part} is {got.dtype} {tuple(got.shape)}; a {shape[0]}x{shape[1]} "
                             f"{cls.__name__} matrix needs {np.dtype(dtype)} {want}")


def stack_rows(matrices: list[Packed]) -> Packed:
    """The rows of several matrices of one format and layout (same class and meta), one after another."""
    return type(matrices[0]).stack(matrices)
