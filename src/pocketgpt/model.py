"""The NumPy GPT: parameters in one flat buffer, an explicit forward and backward, and KV-cache decoding.

Parameter names are GPT-2's checkpoint keys (wte, wpe, h.N.ln_1, h.N.attn.c_attn, ...), with every
linear weight stored (out, in). The model never branches on its dtype: float32 and float64 run
the same code. Training loops, sampling and checkpoints live in their own modules.
Shapes: B batch, T time, C channels, V vocabulary, nh heads, hs head size, L layers.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pocketgpt import layers
from pocketgpt.config import GPTConfig
from pocketgpt.runtime import single_threaded_blas


def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the order they lie in the flat buffer."""
    C, V = config.n_embd, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (V, C), "wpe.weight": (config.block_size, C)}
    if config.input_dim:
        shapes["inp.weight"] = (C, config.input_dim)
        shapes["inp.bias"] = (C,)

    def norm(prefix: str) -> None:
        if config.norm_weights:
            shapes[f"{prefix}.weight"] = (C,)
            if config.norm == "layernorm" and config.bias:
                shapes[f"{prefix}.bias"] = (C,)

    def linear(prefix: str, n_out: int, n_in: int) -> None:
        shapes[f"{prefix}.weight"] = (n_out, n_in)
        if config.bias:
            shapes[f"{prefix}.bias"] = (n_out,)

    if config.embed_norm:
        norm("ln_e")
    for i in range(config.n_layer):
        norm(f"h.{i}.ln_1")
        linear(f"h.{i}.attn.c_attn", 3 * C, C)
        linear(f"h.{i}.attn.c_proj", C, C)
        norm(f"h.{i}.ln_2")
        linear(f"h.{i}.mlp.c_fc", 4 * C, C)
        linear(f"h.{i}.mlp.c_proj", C, 4 * C)
    if config.final_norm:
        norm("ln_f")
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def views(flat: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Named views into one flat buffer, laid out in the order of `shapes`."""
    out, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        out[name] = flat[offset:offset + n].reshape(shape)
        offset += n
    return out


def init_params(config: GPTConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """N(0, init_std) matrices (residual projections scaled by 1/sqrt(2L) if asked), zero biases, unit gains."""
    params = {}
    for name, shape in param_shapes(config).items():
        if len(shape) == 1:
            params[name] = np.zeros(shape) if name.endswith(".bias") else np.ones(shape)
            continue
        std = config.init_std
        if config.scale_residual_init and name.endswith("c_proj.weight"):
            std /= math.sqrt(2 * config.n_layer)
        params[name] = rng.normal(0.0, std, size=shape)
    return params


class KVCache:
    """Keys and values of every layer for up to `size` positions: (L, B, nh, size, hs) each.

    The model talks to a cache only through write() and read(), so a cache that stores its entries in
    another form (pocketgpt.quant.kvcache) can stand in for this one.
    """

    def __init__(self, config: GPTConfig, batch: int, dtype, size: int | None = None):
        self.size = size or config.block_size
        shape = (config.n_layer, batch, config.n_head, self.size, config.head_size)
        self.k = np.zeros(shape, dtype)
        self.v = np.zeros(shape, dtype)
        self.length = 0  # positions filled in every layer

    @classmethod
    def over(cls, k: np.ndarray, v: np.ndarray, length: int = 0) -> KVCache:
        """A cache that stores into existing arrays (L, B, nh, size, hs), e.g. one slot of a SlotCache."""
        cache = cls.__new__(cls)
        cache.k, cache.v, cache.size, cache.length = k, v, k.shape[3], length
        return cache

    def write(self, layer: int, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Store keys and values (B, nh, T, hs) of positions start .. start + T - 1."""
        self.k[layer, :, :, start:start + k.shape[2]] = k
        self.v[layer, :, :, start:start + v.shape[2]] = v

    def read(self, layer: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values (B, nh, end, hs) of positions 0 .. end - 1."""
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

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


class GPT:
    """A GPT whose parameters are named views into `self.flat` (one contiguous buffer)."""

    def __init__(self, config: GPTConfig, params: dict[str, np.ndarray] | None = None,
                 dtype=np.float32, seed: int = 0):
        self.config = config
        self.dtype = np.dtype(dtype)
        self.shapes = self.float_shapes(config)
        self.num_params = sum(math.prod(s) for s in self.shapes.values())
        self.flat = np.zeros(self.num_params, self.dtype)
        self.params = views(self.flat, self.shapes)
        self.load_params(params if params is not None else init_params(config, np.random.default_rng(seed)))
        self._grad_buffers: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def float_shapes(self, config: GPTConfig) -> dict[str, tuple[int, ...]]:
        """The parameters held in float in self.flat: all of them here (a quantized model holds fewer)."""
        return param_shapes(config)

    def weight(self, name: str) -> np.ndarray:
        """A linear layer's weight (out, in) as an array, whatever form it is stored in."""
        return self.params[name]

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        """Copy arrays into the flat buffer; names and shapes must match exactly."""
        missing = sorted(set(self.shapes) - set(params))
        unexpected = sorted(set(params) - set(self.shapes))
        if missing or unexpected:
            raise ValueError(f"parameter names do not match the config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for name, shape in self.shapes.items():
            if tuple(params[name].shape) != shape:
                raise ValueError(f"parameter {name} has shape {tuple(params[name].shape)}, config expects {shape}")
            self.params[name][...] = params[name]

    def new_grads(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        flat = np.zeros(self.num_params, self.dtype)
        return flat, views(flat, self.shapes)

    # ------------------------------------------------------------------------- building blocks

    def _norm_forward(self, x, prefix):
        c = self.config
        w = self.params.get(f"{prefix}.weight")
        if c.norm == "rmsnorm":
            return layers.rmsnorm_forward(x, w, c.norm_eps)
        return layers.layernorm_forward(x, w, self.params.get(f"{prefix}.bias"), c.norm_eps)

    def _norm_backward(self, dy, cache, prefix, grads):
        if self.config.norm == "rmsnorm":
            dx, dw = layers.rmsnorm_backward(dy, cache)
            db = None
        else:
            dx, dw, db = layers.layernorm_backward(dy, cache)
        if dw is not None:
            grads[f"{prefix}.weight"][...] = dw
        if db is not None:
            grads[f"{prefix}.bias"][...] = db
        return dx

    def _linear_forward(self, x, prefix):
        return layers.linear_forward(x, self.weight(f"{prefix}.weight"), self.params.get(f"{prefix}.bias"))

    def _linear_backward(self, dy, cache, prefix, grads):
        dx, dw, db = layers.linear_backward(dy, cache)
        grads[f"{prefix}.weight"][...] = dw
        if db is not None:
            grads[f"{prefix}.bias"][...] = db
        return dx

    @property
    def lm_head(self) -> np.ndarray:
        return self.params["wte.weight" if self.config.tie_embeddings else "lm_head.weight"]

    # ------------------------------------------------------------------------- training forward/backward

    def forward(self, idx, targets=None, weights=None, denom=None, features=None, feature_mask=None,
                outputs=None):
        """Logits (B, T, V) for token ids (B, T); with targets, also the mean loss and a cache for backward.

        weights (B, T) masks padded targets (1 = counts); denom defaults to weights.sum().
        features (B, T, input_dim) with feature_mask (B, T): where the mask is 1, the input projection of the
        features is added to that position's token and position embedding (image patches, for instance).
        outputs: only the last `outputs` positions get logits, (B, outputs, V), and only their targets may carry
        weight; the last layer then runs its queries, MLP and the head for those positions alone (a classifier
        that reads one token pays for one token there).
        """
        c = self.config
        idx = np.asarray(idx)
        B, T = idx.shape
        if T > c.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {c.block_size}")
        if outputs is not None and not 0 < outputs <= T:
            raise ValueError(f"outputs must be 1..{T}, got {outputs}")
        act_forward = layers.ACTIVATION[c.activation][0]
        caches = {}
        x, caches["emb"] = layers.embedding_forward(idx, self.params["wte.weight"], self.params["wpe.weight"])
        if features is not None:
            h, caches["inp"] = layers.linear_forward(features, self.params["inp.weight"], self.params["inp.bias"])
            mask = np.asarray(feature_mask, self.dtype)[..., None]  # (B, T, 1)
            caches["inp.mask"] = mask
            x = x + h * mask
        if c.embed_norm:
            x, caches["ln_e"] = self._norm_forward(x, "ln_e")
        for i in range(c.n_layer):
            p = f"h.{i}"
            h, caches[f"{p}.ln_1"] = self._norm_forward(x, f"{p}.ln_1")
            h, caches[f"{p}.attn.c_attn"] = self._linear_forward(h, f"{p}.attn.c_attn")  # (B, T, 3C)
            last = i == c.n_layer - 1 and outputs is not None  # from here on (B, outputs, C)
            h, caches[f"{p}.attn"] = layers.attention_forward(h, c.n_head, outputs if last else None)  # (B, T, C)
            h, caches[f"{p}.attn.c_proj"] = self._linear_forward(h, f"{p}.attn.c_proj")
            x = (x[:, T - outputs:] if last else x) + h
            h, caches[f"{p}.ln_2"] = self._norm_forward(x, f"{p}.ln_2")
            h, caches[f"{p}.mlp.c_fc"] = self._linear_forward(h, f"{p}.mlp.c_fc")  # (B, T, 4C)
            h, caches[f"{p}.mlp.act"] = act_forward(h)
            h, caches[f"{p}.mlp.c_proj"] = self._linear_forward(h, f"{p}.mlp.c_proj")  # (B, T, C)
            x = x + h
        if c.final_norm:
            x, caches["ln_f"] = self._norm_forward(x, "ln_f")
        logits, caches["lm_head"] = layers.linear_forward(x, self.lm_head, None)  # (B, T, V)
        if targets is None:
            return logits, None, None
        targets = np.asarray(targets)
        weights = np.ones(idx.shape, self.dtype) if weights is None else np.asarray(weights)
        if outputs is not None:
            if weights[:, :T - outputs].any():
                raise ValueError(f"targets before the last {outputs} positions carry weight but get no output")
            targets, weights = targets[:, T - outputs:], weights[:, T - outputs:]
        denom = float(weights.sum()) if denom is None else denom
        loss, caches["loss"] = layers.cross_entropy_forward(logits, targets, weights, denom)
        return logits, loss, caches

    def backward(self, caches, grads: dict[str, np.ndarray]) -> None:
        """Gradients of the loss of the matching forward, written into `grads` (views of a zeroed buffer)."""
        c = self.config
        act_backward = layers.ACTIVATION[c.activation][1]
        dlogits = layers.cross_entropy_backward(caches["loss"])
        dx, dw, _ = layers.linear_backward(dlogits, caches["lm_head"])
        grads["wte.weight" if c.tie_embeddings else "lm_head.weight"][...] += dw
        if c.final_norm:
            dx = self._norm_backward(dx, caches["ln_f"], "ln_f", grads)
        for i in reversed(range(c.n_layer)):
            p = f"h.{i}"
            dh = self._linear_backward(dx, caches[f"{p}.mlp.c_proj"], f"{p}.mlp.c_proj", grads)
            dh = act_backward(dh, caches[f"{p}.mlp.act"])
            dh = self._linear_backward(dh, caches[f"{p}.mlp.c_fc"], f"{p}.mlp.c_fc", grads)
            dx = dx + self._norm_backward(dh, caches[f"{p}.ln_2"], f"{p}.ln_2", grads)
            dh = self._linear_backward(dx, caches[f"{p}.attn.c_proj"], f"{p}.attn.c_proj", grads)
            dh = layers.attention_backward(dh, caches[f"{p}.attn"])
            dh = self._linear_backward(dh, caches[f"{p}.attn.c_attn"], f"{p}.attn.c_attn", grads)
            dh = self._norm_backward(dh, caches[f"{p}.ln_1"], f"{p}.ln_1", grads)
            if dh.shape[1] > dx.shape[1]:  # the last layer asked at the last positions only
                dh[:, dh.shape[1] - dx.shape[1]:] += dx
                dx = dh
            else:
                dx = dx + dh
        if c.embed_norm:
            dx = self._norm_backward(dx, caches["ln_e"], "ln_e", grads)
        layers.embedding_backward(dx, caches["emb"], grads["wte.weight"], grads["wpe.weight"])
        if "inp" in caches:
            self._linear_backward(dx * caches["inp.mask"], caches["inp"], "inp", grads)

    def loss_and_grad(self, idx, targets, weights=None, workers: int = 1, features=None,
                      feature_mask=None, outputs=None) -> tuple[float, np.ndarray]:
        """Mean loss over the batch and its flat gradient (a buffer that the next call reuses).

        With workers > 1 the batch is split into that many slices, each run forward and backward in
        its own thread with single-threaded BLAS (NumPy and BLAS release the GIL), and the slices'
        gradients are summed: the same result as one pass, up to float rounding.
        """
        idx, targets = np.asarray(idx), np.asarray(targets)
        weights = np.ones(idx.shape, self.dtype) if weights is None else np.asarray(weights)
        denom = float(weights.sum())
        workers = max(1, min(workers, idx.shape[0]))
        while len(self._grad_buffers) < workers:
            self._grad_buffers.append(self.new_grads())

        def work(k: int, rows: slice) -> float:
            flat, grads = self._grad_buffers[k]
            flat[...] = 0.0
            extra = {} if features is None else {"features": features[rows], "feature_mask": feature_mask[rows]}
            _, loss, caches = self.forward(idx[rows], targets[rows], weights[rows], denom, outputs=outputs, **extra)
            self.backward(caches, grads)
            return loss

        if workers == 1:
            return work(0, slice(None)), self._grad_buffers[0][0]
        bounds = np.linspace(0, idx.shape[0], workers + 1).astype(int)
        slices = [slice(bounds[k], bounds[k + 1]) for k in range(workers)]
        if self._pool_size < workers:
            self._pool, self._pool_size = ThreadPoolExecutor(max_workers=workers), workers
        with single_threaded_blas():
            losses = list(self._pool.map(work, range(workers), slices))
        total = self._grad_buffers[0][0]
        for k in range(1, workers):
            total += self._grad_buffers[k][0]
        return sum(losses), total

    # ------------------------------------------------------------------------- inference with a KV cache

    def new_cache(self, batch: int = 1) -> KVCache:
        return KVCache(self.config, batch, self.dtype)

    def forward_cached(self, idx, cache: KVCache) -> np.ndarray:
        """Logits (B, T, V) for the T new tokens (B, T) that follow the cache's positions; extends the cache.

        Prefill is one call with the whole prompt; decode is one call per token with T = 1.
        """
        idx = np.asarray(idx)
        T = idx.shape[1]
        start, end = cache.length, cache.length + T
        if end > cache.size:
            raise ValueError(f"position {end - 1} is beyond the context of {cache.size} tokens")
        mask = layers.causal_mask(T, end, self.dtype)  # (T, end)

        def attend(i, q, k, v):
            cache.write(i, start, k, v)
            keys, values = cache.read(i, end)  # (B, nh, end, hs) each
            return keys, values, mask

        logits = self._cached_layers(idx, np.arange(start, end), attend)
        cache.length = end
        return logits

    def decode_slots(self, tokens, slots, cache: SlotCache) -> np.ndarray:
        """Logits (B, V) for one new token (B,) in each of the sequences in `slots` (B,); extends each slot.

        Each slot has its own length; keys beyond a slot's own positions are masked out.
        """
        tokens, slots = np.asarray(tokens), np.asarray(slots)
        pos = cache.lengths[slots]  # (B,)
        if (pos >= cache.size).any():
            raise ValueError(f"a slot is full: the context holds {cache.size} tokens")
        end = int(pos.max()) + 1
        mask = np.where(np.arange(end) <= pos[:, None], 0.0, -np.inf).astype(self.dtype)[:, None, None, :]

        lo = int(slots[0])  # slots in a run (lo, lo + 1, ...) are read as a view rather than gathered
        rows = slice(lo, lo + len(slots)) if np.array_equal(slots, np.arange(lo, lo + len(slots))) else slots

        def attend(i, q, k, v):
            cache.k[i][slots, :, pos] = k[:, :, 0]  # (B, nh, hs) at each slot's own position
            cache.v[i][slots, :, pos] = v[:, :, 0]
            return cache.k[i][rows, :, :end], cache.v[i][rows, :, :end], mask  # (B, nh, end, hs)

        logits = self._cached_layers(tokens[:, None], pos[:, None], attend)
        cache.lengths[slots] = pos + 1
        return logits[:, 0]

    def _cached_layers(self, idx, positions, attend) -> np.ndarray:
        """The inference forward over new tokens idx (B, T) at positions (T,) or (B, T). attend(layer, q, k, v)
        stores the new keys and values and returns every key and value to attend to, with an additive mask."""
        c = self.config
        B, T = idx.shape
        nh, hs = c.n_head, c.head_size
        act_forward = layers.ACTIVATION[c.activation][0]
        x = self.params["wte.weight"][idx] + self.params["wpe.weight"][positions]  # (B, T, C)
        if c.embed_norm:
            x = self._norm_forward(x, "ln_e")[0]
        for i in range(c.n_layer):
            p = f"h.{i}"
            h = self._norm_forward(x, f"{p}.ln_1")[0]
            qkv = self._linear_forward(h, f"{p}.attn.c_attn")[0]  # (B, T, 3C)
            q, k, v = (qkv[..., j * c.n_embd:(j + 1) * c.n_embd].reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
                       for j in range(3))  # each (B, nh, T, hs)
            keys, values, mask = attend(i, q, k, v)
            scores = q @ keys.transpose(0, 1, 3, 2) / math.sqrt(hs)  # (B, nh, T, end)
            att = layers.softmax(scores + mask)
            h = (att @ values).transpose(0, 2, 1, 3).reshape(B, T, c.n_embd)
            x = x + self._linear_forward(h, f"{p}.attn.c_proj")[0]
            h = self._norm_forward(x, f"{p}.ln_2")[0]
            h = act_forward(self._linear_forward(h, f"{p}.mlp.c_fc")[0])[0]
            x = x + self._linear_forward(h, f"{p}.mlp.c_proj")[0]
        if c.final_norm:
            x = self._norm_forward(x, "ln_f")[0]
        return layers.linear_forward(x, self.lm_head, None)[0]  # (B, T, V)
