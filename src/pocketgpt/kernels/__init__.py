"""The kernels layer: every operation of an inference step as one function, and the one place that decides which
implementation runs it: a compiled kernel (numba; pocketgpt.kernels.products and .ops) or its NumPy reference
(pocketgpt.kernels.reference). Model and generation code call these functions and never choose.

What decides: float32 activations run compiled kernels (float64 runs the reference); an integer format held
interleaved (where the machine has AVX2: int8_dots, set_int8_dots; pocketgpt.kernels.interleaved) meets any number
of tokens with integer dot products of activations rounded to 8 bits; otherwise a product of one token runs the
weight layout's fused kernel, of up to ROWS_UP_TO tokens the row-decoding kernel, of more (a prompt) decodes tiles
of rows that BLAS multiplies; attention of up to ATTENTION_UP_TO new tokens per sequence runs compiled, a longer
prompt PROMPT_BLOCK queries at a time through BLAS and the compiled masked softmax, the causal triangle beyond each
block never computed.
Compiled kernels are cached on disk (numba's NUMBA_CACHE_DIR, else ~/.cache/pocketgpt/numba/<a digest of this
package's sources>, so that a changed kernel is compiled afresh), and only a machine's first run compiles them.
Legend: N tokens, n input width, R output rows, C channels, B batch, T new tokens, nh heads, hs head size.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pocketgpt.kernels.threads import blas_threads_for, machine_threads, single_threaded_blas

os.environ.setdefault("NUMBA_NUM_THREADS", str(machine_threads()))  # read once, when numba starts its pool

import numba  # noqa: E402 (after the thread count it reads)


def _sources_digest() -> str:
    """numba keys a cached kernel by its own file only, not by the kernels it inlines from other files nor by the
    constants it reads from the formats (tables, layout sizes)."""
    h = hashlib.sha256()
    package = Path(__file__).parent.parent
    for path in sorted([*package.joinpath("kernels").glob("*.py"), *package.joinpath("formats").glob("*.py")]):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _lock_cache_saves() -> None:
    """Make numba's disk-cache saves safe between processes. numba numbers a kernel's compiled variants in an index
    file that a saving process reads, extends and writes back; two processes compiling variants of one kernel at
    once (a draft server and a target server started together, on a cold cache) can both take the same number, and
    a later process then runs one variant's machine code on the other's argument types: a crash. Each save holds an
    exclusive lock on a file beside the index for its read-extend-write (POSIX; elsewhere saves stay as numba
    makes them)."""
    try:
        import fcntl
    except ImportError:
        return
    from numba.core import caching

    index_file = getattr(caching, "IndexDataCacheFile", None)  # numba's internals: left alone if they change
    save = getattr(index_file, "save", None)
    if save is None or getattr(save, "locked", False):
        return

    def locked_save(self, key, data):
        index = getattr(self, "_index_path", None)
        if index is None:
            return save(self, key, data)
        os.makedirs(os.path.dirname(index), exist_ok=True)
        with open(index + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            return save(self, key, data)

    locked_save.locked = True
    index_file.save = locked_save


def _start_threads() -> None:
    """Start numba's threading layer now, before any cached kernel loads. A kernel loaded from numba's disk cache
    re-runs the start-up its parallel loops need (the threading layer, whose symbols their code calls), but numba does
    not pass that on to a kernel compiled afterwards in the same process that calls it: such a caller (a fused decode
    step calling the parallel products) is cached without it, and a later process that loads that caller before any
    parallel kernel crashed calling an unresolved symbol. With the layer started at import, every cached kernel
    finds its symbols."""
    numba.get_num_threads()


_lock_cache_saves()
_start_threads()
if not numba.config.CACHE_DIR:  # read when each cached kernel is defined, below
    numba.config.CACHE_DIR = str(Path.home() / ".cache" / "pocketgpt" / "numba" / _sources_digest())

from pocketgpt.kernels.blocks import STEP_UP_TO, BlockWeights, FloatKV, block  # noqa: E402
from pocketgpt.kernels.dispatch import (  # noqa: E402
    ATTENTION_UP_TO,
    ROWS_UP_TO,
    adamw,
    attention,
    attention_q4,
    blas_multiplies,
    cross_entropy_backward,
    embedding,
    gelu,
    gelu_train,
    gelu_train_backward,
    layernorm,
    layernorm_train,
    layernorm_train_backward,
    linear,
    logsumexp,
    masked_softmax,
    rmsnorm,
    rmsnorm_train,
    rmsnorm_train_backward,
    rope,
    rounds_activations,
    softmax_backward,
    swiglu,
    swiglu_train_backward,
)
from pocketgpt.kernels.layouts import int8_dots, layout, set_int8_dots  # noqa: E402

__all__ = ["ATTENTION_UP_TO", "BlockWeights", "FloatKV", "ROWS_UP_TO", "STEP_UP_TO", "adamw", "attention",
           "attention_q4", "blas_multiplies", "blas_threads_for", "block", "cross_entropy_backward", "embedding",
           "gelu", "gelu_train", "gelu_train_backward", "int8_dots", "layernorm", "layernorm_train",
           "layernorm_train_backward", "layout", "linear", "logsumexp", "machine_threads", "masked_softmax",
           "rmsnorm", "rmsnorm_train", "rmsnorm_train_backward", "rope", "rounds_activations", "set_int8_dots",
           "set_threads", "single_threaded_blas", "softmax_backward", "swiglu", "swiglu_train_backward", "threads"]


def threads() -> int:
    """Threads each compiled kernel runs on."""
    return numba.get_num_threads()


def set_threads(n: int) -> None:
    """Run compiled kernels on n threads (at most NUMBA_NUM_THREADS) from the calling thread on."""
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
