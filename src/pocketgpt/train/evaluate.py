"""Evaluation: the mean loss over a validation split, and perplexity with llama.cpp's protocol.

- `evaluate`: every validation document (lines), or every non-overlapping window of the context (text), each
  target token counted once; what training reports.
- `perplexity`: llama-perplexity's protocol, so that a figure can stand beside llama.cpp's: the tokens are cut
  into non-overlapping chunks of `context`; in each, only the second half is scored (the token after position
  j, for j from context / 2 to context - 2), so every scored token sees at least context / 2 tokens before it.
  The result is exp of the mean negative log-likelihood over all scored tokens. (llama.cpp also puts BOS first
  in each chunk for models whose tokenizer adds one; SmolLM2's does not.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from pocketgpt.errors import InputError
from pocketgpt.model import GPT
from pocketgpt.train.batches import Dataset, count_eval_batches, eval_batches

LOGITS_BUDGET = 1 << 25  # logits (floats) one evaluation batch may hold: 128 MB in float32


def evaluate(model: GPT, dataset: Dataset, batch_size: int = 64, context: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> float:
    """Mean loss per target token over the whole validation split (deterministic), in windows of `context`
    tokens (default: the model's context), at most batch_size windows at a time and fewer where a large
    vocabulary would make their logits outgrow LOGITS_BUDGET."""
    total, count = 0.0, 0.0
    window = min(context or model.config.block_size, model.config.block_size)
    batch_size = max(1, min(batch_size, LOGITS_BUDGET // (window * model.config.vocab_size)))
    n_batches = count_eval_batches(dataset, window, batch_size)
    for b, (x, y, w) in enumerate(eval_batches(dataset, window, batch_size)):
        n = float(w.sum())
        _, loss, _ = model.forward(x, y, w, denom=n, keep=False)
        total, count = total + loss * n, count + n
        if progress is not None:
            progress(b + 1, n_batches)
    return total / count


def perplexity(model: GPT, ids: np.ndarray, context: int, chunks: int | None = None, batch_size: int = 2,
               progress: Callable[[int, int], None] | None = None) -> dict:
    """llama.cpp's perplexity over ids (see the module docstring): {perplexity, nll, tokens, chunks, context}."""
    ids = np.asarray(ids, np.int64)
    if not 4 <= context <= model.config.block_size:
        raise InputError(f"context must be 4..{model.config.block_size} tokens (got {context})")
    n = len(ids) // context if chunks is None else min(chunks, len(ids) // context)
    if n < 1:
        raise InputError(f"the text has {len(ids)} tokens, fewer than one chunk of {context}")
    first = context // 2
    windows = ids[:n * context].reshape(n, context)
    targets = np.concatenate([windows[:, 1:], windows[:, -1:]], axis=1)  # the last position has no target
    weights = np.zeros(windows.shape, np.float32)
    weights[:, first:context - 1] = 1.0
    total = 0.0
    for lo in range(0, n, batch_size):
        rows = slice(lo, lo + batch_size)
        _, nll, _ = model.forward(windows[rows], targets[rows], weights[rows], denom=1.0, outputs=context - first,
                                  keep=False)  # the first half asks nothing: its queries and logits are skipped
        total += nll
        if progress is not None:
            progress(min(lo + batch_size, n), n)
    scored = n * (context - 1 - first)
    return {"perplexity": math.exp(total / scored), "nll": total / scored, "tokens": scored, "chunks": n,
            "context": context}
