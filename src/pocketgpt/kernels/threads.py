"""Threads: how many the compiled kernels use (the cores this process may run on) and BLAS's.

Kept in one place because both change the whole process. numba's thread pool starts at its first parallel
kernel with NUMBA_NUM_THREADS threads; unless the user set that, it is the number of cores this process may run
on (its CPU affinity, which is what a container or `taskset` grants), not the machine's count.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

from threadpoolctl import ThreadpoolController

_BLAS = ThreadpoolController()


def machine_threads() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def single_threaded_blas() -> AbstractContextManager:
    """BLAS limited to one thread for the duration of a `with` block (for our own worker threads)."""
    return _BLAS.limit(limits=1, user_api="blas")


def blas_threads_for(rows: int, blas_products: bool = True, small: int = 64) -> AbstractContextManager:
    """One BLAS thread for a forward pass of at most `small` tokens (a decode step, a short prefill), or for one
    whose matrix products BLAS does not run (blas_products False: only a long prompt's attention is left to it):
    waking BLAS's other threads then costs more than they save, and they spin afterwards on the cores the compiled
    kernels need (a 512-token prefill of SmolLM2's packed weights ran at a third of its speed). Otherwise, past
    `small` tokens, BLAS's own threads pay."""
    return single_threaded_blas() if rows <= small or not blas_products else nullcontext()
