"""KV caches: the keys and values of every layer for the positions decoded so far.

- KVCache: float arrays (L, B, nkv, size, hs) for keys and for values; nkv is the model's key/value head count
  (a grouped-query model such as SmolLM2 keeps a third of what its query heads would need).
- SlotCache: a KVCache whose batch rows are independent sequences, each with its own length (continuous
  batching).
- QuantizedKVCache: 4-bit entries in the manner of KIVI (below).
The model talks to a cache only through attention(layer, start) (what pocketgpt.kernels.block takes as kv) and a
SlotCache's arrays, so any of them serves generation; read() returns the keys and values as float arrays.

The 4-bit entries' layout is pocketgpt.formats.kv4's.
"""

from __future__ import annotations

import numpy as np

from pocketgpt import kernels
from pocketgpt.config import GPTConfig
from pocketgpt.formats.kv4 import expand, pack, quantize


class KVCache:
    """Keys and values of every layer for up to `size` positions: (L, B, nkv, size, hs) each."""

    def __init__(self, config: GPTConfig, batch: int, dtype, size: int | None = None):
        self.size = size or config.block_size
        shape = (config.n_layer, batch, config.n_kv, self.size, config.head_size)
        self.k = np.zeros(shape, dtype)
        self.v = np.zeros(shape, dtype)
        self.length = 0  # positions filled in every layer

    @classmethod
    def over(cls, k: np.ndarray, v: np.ndarray, length: int = 0) -> KVCache:
        """A cache that stores into existing arrays (L, B, nkv, size, hs), e.g. one slot of a SlotCache."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.size, cache.length = k, v, k.shape[3], length
        return cache

    def write(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store keys and values (B, nkv, T, hs) of positions start .. start + T - 1."""
        self.k[layer, :, :, start:start + k.shape[2]] = k
        self.v[layer, :, :, start:start + v.shape[2]] = v

    def read(self, layer: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values (B, nkv, end, hs) of positions 0 .. end - 1."""
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def attention(self, layer: int, start: int) -> kernels.FloatKV:
        """Where a layer's attention over new tokens from position `start` keeps its keys and values."""
        return kernels.FloatKV(self.k[layer], self.v[layer], None, start)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class SlotCache(KVCache):
    """A KVCache whose batch rows are `slots` independent sequences, each with its own length (`lengths`).

    Continuous batching keeps one sequence per slot: a slot is prefilled on its own (through slot(), a
    KVCache over that slot's rows), then every active slot decodes together in one GPT.decode_slots call.
    """

    def __init__(self, config: GPTConfig, slots: int, dtype, size: int | None = None):
        super().__init__(config, slots, dtype, size)
        self.lengths = np.zeros(slots, dtype=np.int64)

    def slot(self, s: int) -> KVCache:
        return KVCache.over(self.k[:, s:s + 1], self.v[:, s:s + 1], int(self.lengths[s]))


class QuantizedKVCache:
    """A KVCache (write / read / length / size) that stores 4-bit entries."""

    def __init__(self, config: GPTConfig, batch: int, dtype=np.float32, size: int | None = None, group: int = 8):
        self.size, self.group, self.dtype = size or config.block_size, group, dtype
        self.length = 0
        L, B, nh, hs = config.n_layer, batch, config.n_kv, config.head_size
        n_groups = -(-self.size // group)
        self.hs = hs
        self.k_codes = np.zeros((L, B, nh, n_groups * group, hs // 2), np.uint8)
        self.k_scale = np.zeros((L, B, nh, n_groups, 1, hs), np.float16)
        self.k_zero = np.zeros((L, B, nh, n_groups, 1, hs), np.uint8)
        self.v_codes = np.zeros((L, B, nh, n_groups * group, hs // 2), np.uint8)
        self.v_scale = np.zeros((L, B, nh, n_groups * group, 1), np.float16)
        self.v_zero = np.zeros((L, B, nh, n_groups * group, 1), np.uint8)
        self.k_float = np.zeros((L, B, nh, group, hs), np.float16)  # the group being filled
        self.v_float = np.zeros((L, B, nh, group, hs), np.float16)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.k_codes, self.k_scale, self.k_zero, self.v_codes, self.v_scale,
                                      self.v_zero, self.k_float, self.v_float))

    def write(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        G, end = self.group, start + k.shape[2]
        first = start // G  # the group that position `start` falls in
        # tokens of that group written earlier are still float: put them in front of the new ones
        k = np.concatenate([self.k_float[layer, :, :, :start - first * G], k], axis=2)
        v = np.concatenate([self.v_float[layer, :, :, :start - first * G], v], axis=2)
        full = (end // G) - first  # groups completed by this write
        if full > 0:
            kg = k[:, :, :full * G].reshape(*k.shape[:2], full, G, self.hs)  # (B, nh, groups, G, hs)
            codes, scale, zero = quantize(kg, axis=3)  # per channel over the group's tokens
            rows = slice(first * G, (first + full) * G)
            self.k_codes[layer, :, :, rows] = pack(codes).reshape(*k.shape[:2], full * G, -1)
            self.k_scale[layer, :, :, first:first + full], self.k_zero[layer, :, :, first:first + full] = scale, zero
            codes, scale, zero = quantize(v[:, :, :full * G], axis=3)  # per token over its channels
            self.v_codes[layer, :, :, rows] = pack(codes)
            self.v_scale[layer, :, :, rows], self.v_zero[layer, :, :, rows] = scale, zero
        rest = k.shape[2] - full * G
        self.k_float[layer, :, :, :rest] = k[:, :, full * G:]
        self.v_float[layer, :, :, :rest] = v[:, :, full * G:]

    def layer(self, layer: int) -> tuple[np.ndarray, ...]:
        """One layer's arrays in pocketgpt.formats.kv4's order (LAYER_ARRAYS)."""
        return (self.k_codes[layer], self.k_scale[layer], self.k_zero[layer], self.v_codes[layer],
                self.v_scale[layer], self.v_zero[layer], self.k_float[layer], self.v_float[layer])

    def attention(self, layer: int, start: int):
        """KVCache.attention: attend(q, k, v) for pocketgpt.kernels.block, which stores the new keys and values
        (B, T, nkv, hs) from position `start` and attends over the 4-bit entries as stored."""

        def attend(q, k, v):
            self.write(layer, start, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
            first = start + k.shape[1] - q.shape[1]
            return kernels.attention_q4(q, self.layer(layer), self.group, first).astype(self.dtype, copy=False)

        return attend

    def read(self, layer: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        keys, values = expand(*self.layer(layer), self.group, end)
        return keys.astype(self.dtype, copy=False), values.astype(self.dtype, copy=False)
