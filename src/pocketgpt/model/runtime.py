"""Process-level settings that the NumPy engine's speed depends on: freed-memory reuse, and memory checks
(threads: pocketgpt.kernels.threads). Kept in one place because they concern the whole process, not one model;
nothing here changes results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_retained = False


def retain_freed_memory(limit: int = 1 << 30) -> bool:
    """Ask glibc to keep freed blocks up to `limit` bytes for reuse instead of returning them to the OS.

    A training step allocates and frees the same few-megabyte activations every time; by default glibc
    unmaps them and the next step page-faults them back, and in two threads those faults contend on one
    kernel lock. The cost is that the process keeps its peak memory. Returns False where there is no glibc
    (the call is then a no-op).
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


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get without swapping (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(nbytes: int, what: str) -> None:
    """Raise MemoryError with a one-line reason when `nbytes` clearly cannot fit in this machine's memory."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise MemoryError(f"{what} needs about {nbytes / 2**30:.1f} GiB of memory; {free / 2**30:.1f} GiB is "
                          "available")
