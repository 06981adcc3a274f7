"""The model layer: the GPT (gpt), its layers as forward/backward pairs for training (layers), KV caches
(kvcache), and the process settings its speed depends on (runtime). Inference runs pocketgpt.kernels."""

from pocketgpt.model.gpt import (
                                 GPT,
                                 count_params,
                                 init_params,
                                 linear_names,
                                 packable_names,
                                 packed_copy,
                                 param_shapes,
                                 views,
)
from pocketgpt.model.kvcache import KVCache, QuantizedKVCache, SlotCache

__all__ = ["GPT", "KVCache", "QuantizedKVCache", "SlotCache", "count_params", "init_params", "linear_names",
           "packable_names", "packed_copy", "param_shapes", "views"]
