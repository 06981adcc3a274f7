"""The model layer: the NumPy GPT (gpt), its layers as forward/backward pairs (layers), KV caches (kvcache),
and the process settings its speed depends on (runtime)."""

from pocketgpt.model.gpt import GPT, count_params, init_params, linear_names, packed_copy, param_shapes, views
from pocketgpt.model.kvcache import KVCache, QuantizedKVCache, SlotCache

__all__ = ["GPT", "KVCache", "QuantizedKVCache", "SlotCache", "count_params", "init_params", "linear_names",
           "packed_copy", "param_shapes", "views"]
