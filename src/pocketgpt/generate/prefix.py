"""Prefix caching: prompts that start alike reuse the keys and values of what they share.

A causal model's keys and values at position p depend on tokens 0 .. p only, so two prompts that begin with
the same tokens (every chat request begins with the same system prompt) have the same cache entries over that
stretch. PrefixCache keeps them in blocks of `block` tokens, each keyed by a hash of every token up to its
end (the previous block's key and its own tokens), so a block is found only after the very tokens it was
computed after. Blocks are evicted least-recently-used once their bytes pass the budget.

The Batcher asks `restore` for the longest run of stored blocks that starts a prompt, copies them into the
slot and prefills the rest from there; after prefilling it `store`s the prompt's full blocks, and when a
sequence leaves it stores the blocks its generated tokens completed (a chat's next turn resends them).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from pocketgpt.model import KVCache


def block_keys(tokens, block: int) -> list[bytes]:
    """The key of every full block of tokens: a hash of that block's tokens and of the key before it."""
    ids = np.asarray(tokens, np.int64)
    keys, key = [], b""
    for i in range(len(ids) // block):
        key = hashlib.blake2b(key + ids[i * block:(i + 1) * block].tobytes(), digest_size=16).digest()
        keys.append(key)
    return keys


class PrefixCache:
    """Keys and values of token blocks, found by block_keys(), evicted least-recently-used past `budget` bytes."""

    def __init__(self, budget: int, block: int = 16):
        if block < 1:
            raise ValueError(f"a prefix block holds at least one token (got {block})")
        self.budget, self.block = budget, block
        self.blocks: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()  # k, v (L, nkv, block, hs)
        self.nbytes = 0
        self.hits = 0  # prompt blocks found since the start

    def restore(self, tokens, cache: KVCache) -> int:
        """Copy into cache (one sequence, empty) the stored blocks that begin `tokens`, leaving at least the last
        token to be prefilled; returns how many positions were filled (cache.length is set to that)."""
        keys = block_keys(tokens, self.block)[:(len(tokens) - 1) // self.block]
        found = 0
        for key in keys:
            entry = self.blocks.get(key)
            if entry is None:
                break
            at = slice(found * self.block, (found + 1) * self.block)
            cache.k[:, 0, :, at], cache.v[:, 0, :, at] = entry
            found += 1
        self._touch(keys[:found])
        self.hits += found
        cache.length = found * self.block
        return cache.length

    def store(self, tokens, cache: KVCache) -> None:
        """Keep the blocks of `tokens` (whose keys and values fill cache's first positions) not kept yet."""
        n = min(len(tokens), cache.length) // self.block
        keys = block_keys(tokens[:n * self.block], self.block)
        for i, key in enumerate(keys):
            if key in self.blocks:
                continue
            at = slice(i * self.block, (i + 1) * self.block)
            entry = cache.k[:, 0, :, at].copy(), cache.v[:, 0, :, at].copy()
            size = entry[0].nbytes + entry[1].nbytes
            if size > self.budget:
                break
            while self.nbytes + size > self.budget:
                _, (k, v) = self.blocks.popitem(last=False)
                self.nbytes -= k.nbytes + v.nbytes
            self.blocks[key] = entry
            self.nbytes += size
        self._touch(keys)

    def _touch(self, keys: list[bytes]) -> None:
        """Mark a chain of blocks as just used, its first block last: a later block is of no use without the
        ones before it, so the end of a chain is evicted before its start."""
        for key in reversed(keys):
            if key in self.blocks:
                self.blocks.move_to_end(key)
