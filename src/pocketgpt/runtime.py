"""Process-level settings that the NumPy engine's speed depends on: BLAS threads and freed-memory reuse.

Kept in one place because both change the whole process, not one model. Nothing here changes results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController

_BLAS = ThreadpoolController()
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_retained = False


def single_threaded_blas() -> AbstractContextManager:
    """BLAS limited to one thread for the duration of a `with` block (for our own worker threads)."""
    return _BLAS.limit(limits=1, user_api="blas")


def retain_freed_memory(limit: int = 1 << 30) -> bool:
    """Ask glibc to keep freed blocks up to `limit` bytes for reuse instead of returning them to the OS.

    A training step allocates and frees the same few-megabyte activations every time; by default glibc
    unmaps them and the next step page-faults them back, which in two threads contend on one kernel
    lock (measured: about a quarter of a two-thread step). The cost is that the process keeps its peak
    memory. Returns False where there is no glibc (the call is then a no-op).
    """
    global _retained
    if _retained:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _retained = bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
    return _retained
