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
_libc = None


def _glibc():
    """The C library where it is glibc (Linux), else None."""
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _libc = False
    return _libc or None


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
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is None:
        return False
    _retained = bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))
    return _retained


def release_freed_memory() -> None:
    """Give memory that freed temporaries leave in glibc's heaps back to the OS (malloc_trim), unless
    retain_freed_memory() asked to keep it. After a long prompt's forward pass, whose temporaries of a few megabytes
    glibc would otherwise keep (it raises its threshold for mapping large blocks after the first is freed), this
    lowers a decoding process's resident memory by tens of megabytes for under a millisecond."""
    trim = getattr(_glibc(), "malloc_trim", None)
    if trim is not None and not _retained:
        trim(0)


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
