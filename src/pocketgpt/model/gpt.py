"""The NumPy GPT: parameters in one flat buffer, an explicit forward and backward, and KV-cache decoding.

Parameter names are GPT-2's checkpoint keys (wte, wpe, h.N.ln_1, h.N.attn.c_attn, ...) for both families,
with every linear weight stored (out, in): c_attn holds the query rows, then the key rows, then the value
rows; a SwiGLU c_fc holds the gate rows, then the up rows. Linear weights and the token embedding (and an
untied lm_head) may instead be packed (any format of pocketgpt.formats); a model with packed weights runs
forward only. Training runs the layers' forward/backward pairs (pocketgpt.model.layers); inference (no
gradient wanted) runs pocketgpt.kernels' operations, which read packed weights as they are stored. The model
never branches on its dtype or its family: float32 and float64, GPT-2 and Llama run the same code, reading the
config's fields.
Shapes: B batch, T time (Tk: the keys a query sees), C channels, V vocabulary, nh query heads, nkv
key/value heads, hs head size, L layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pocketgpt import kernels
from pocketgpt.config import GPTConfig
from pocketgpt.errors import InputError
from pocketgpt.formats import Packed
from pocketgpt.formats.groups import quantize_per_token
from pocketgpt.model import layers
from pocketgpt.model.kvcache import KVCache, QuantizedKVCache, SlotCache
from pocketgpt.model.runtime import check_memory, release_freed_memory

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # in the order a block uses them
CACHE_KINDS = ("float", "q4")
LONG_PASS = 64  # tokens past which a forward pass gives its freed temporaries back to the OS


def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the order they lie in the flat buffer."""
    C, V = config.n_embd, config.vocab_size
    q, kv = config.qkv_sizes
    F = config.ffn
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (V, C)}
    if config.positions == "learned":
        shapes["wpe.weight"] = (config.block_size, C)
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
        linear(f"h.{i}.attn.c_attn", q + 2 * kv, C)
        linear(f"h.{i}.attn.c_proj", C, q)
        norm(f"h.{i}.ln_2")
        linear(f"h.{i}.mlp.c_fc", 2 * F if config.activation == "swiglu" else F, C)
        linear(f"h.{i}.mlp.c_proj", C, F)
    if config.final_norm:
        norm("ln_f")
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def count_params(config: GPTConfig) -> int:
    return sum(math.prod(s) for s in param_shapes(config).values())


def linear_names(config: GPTConfig) -> list[str]:
    """The weights of every block's linear layers, the ones quantization methods pack."""
    return [f"h.{i}.{lin}.weight" for i in range(config.n_layer) for lin in LINEARS]


def packable_names(config: GPTConfig) -> list[str]:
    """Every weight that may be held packed: the block linears, the token embedding and an untied lm_head."""
    return [*linear_names(config), "wte.weight", *([] if config.tie_embeddings else ["lm_head.weight"])]


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


def split_heads(qkv: np.ndarray, config: GPTConfig):
    """(B, T, (nh + 2 nkv) hs) -> q (B, nh, T, hs), k and v (B, nkv, T, hs)."""
    B, T, _ = qkv.shape
    q_size, kv_size = config.qkv_sizes
    hs = config.head_size

    def heads(lo: int, n: int) -> np.ndarray:
        return qkv[..., lo:lo + n * hs].reshape(B, T, n, hs).transpose(0, 2, 1, 3)

    return heads(0, config.n_head), heads(q_size, config.n_kv), heads(q_size + kv_size, config.n_kv)


def merge_heads(y: np.ndarray) -> np.ndarray:
    """(B, n, T, hs) -> (B, T, n hs)."""
    B, n, T, hs = y.shape
    return y.transpose(0, 2, 1, 3).reshape(B, T, n * hs)


class GPT:
    """A GPT whose float parameters are named views into `self.flat` (one contiguous buffer) and whose block
    linears may instead be packed (`self.packed`)."""

    def __init__(self, config: GPTConfig, params: dict[str, np.ndarray] | None = None,
                 dtype=np.float32, seed: int = 0, packed: dict[str, Packed] | None = None):
        self.config = config
        self.dtype = np.dtype(dtype)
        self.packed = dict(packed or {})
        all_shapes = param_shapes(config)
        for name, w in self.packed.items():
            if name not in packable_names(config) or tuple(w.shape) != all_shapes[name]:
                raise InputError(f"packed weight {name} {tuple(w.shape)} is not a weight of this config that "
                                 "may be packed")
        self.shapes = {k: v for k, v in all_shapes.items() if k not in self.packed}
        self.num_params = count_params(config)
        n_float = sum(math.prod(s) for s in self.shapes.values())
        check_memory(n_float * (self.dtype.itemsize + (8 if params is None else 0)),
                     f"a model of {self.num_params:,} parameters")
        self.flat = np.zeros(n_float, self.dtype)
        self.params = views(self.flat, self.shapes)
        self.load_params(params if params is not None else init_params(config, np.random.default_rng(seed)))
        if config.positions == "rope":
            self.rope_cos, self.rope_sin = layers.rope_tables(config.block_size, config.head_size,
                                                              config.rope_theta, self.dtype)
        self._blocks: dict[int, kernels.BlockWeights] | None = {}  # block_weights(); None: build on every call
        self._grad_buffers: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def stored(self, name: str) -> np.ndarray | Packed:
        """A weight as the forward pass reads it: a float array or a packed matrix."""
        return self.packed.get(name, self.params.get(name))

    def weight(self, name: str) -> np.ndarray:
        """A weight as a float array (a packed one dequantized), whatever form it is stored in."""
        w = self.stored(name)
        return w.dequantize(self.dtype) if isinstance(w, Packed) else w

    @property
    def weight_bytes(self) -> int:
        """Bytes of resident weights: the float buffer and every packed matrix."""
        return self.flat.nbytes + sum(w.nbytes for w in self.packed.values())

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        """Copy arrays into the flat buffer; names and shapes must match exactly."""
        missing = sorted(set(self.shapes) - set(params))
        unexpected = sorted(set(params) - set(self.shapes))
        if missing or unexpected:
            raise InputError(f"parameter names do not match the config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for name, shape in self.shapes.items():
            if tuple(params[name].shape) != shape:
                raise InputError(f"parameter {name} has shape {tuple(params[name].shape)}, config expects {shape}")
            self.params[name][...] = params[name]

    def new_grads(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        flat = np.zeros(self.flat.size, self.dtype)
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
        name = f"{prefix}.weight"
        w = self.packed.get(name)
        if w is not None and w.act_bits:  # W8A8: the inputs of this layer go to int8 per token
            x = quantize_per_token(x, w.act_bits).astype(x.dtype, copy=False)
        return layers.linear_forward(x, self.weight(name), self.params.get(f"{prefix}.bias"))

    def _linear_backward(self, dy, cache, prefix, grads):
        dx, dw, db = layers.linear_backward(dy, cache)
        grads[f"{prefix}.weight"][...] = dw
        if db is not None:
            grads[f"{prefix}.bias"][...] = db
        return dx

    @property
    def lm_head_name(self) -> str:
        return "wte.weight" if self.config.tie_embeddings else "lm_head.weight"

    @property
    def lm_head(self) -> np.ndarray:
        return self.params[self.lm_head_name]

    def _rope(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """cos and sin for positions (T,) -> (T, hs/2), or (B, T) -> (B, 1, T, hs/2); None without rope."""
        if self.config.positions != "rope":
            return None
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]
        return (cos, sin) if positions.ndim == 1 else (cos[:, None], sin[:, None])

    def _embed(self, idx, positions, caches=None, features=None, feature_mask=None):
        """Token (+ learned position) embedding (B, T) -> (B, T, C), the input projection, the embedding norm."""
        c = self.config
        x, emb = layers.embedding_forward(idx, self.params["wte.weight"], self.params.get("wpe.weight"), positions)
        if caches is not None:
            caches["emb"] = emb
        if features is not None:
            h, inp = layers.linear_forward(features, self.params["inp.weight"], self.params["inp.bias"])
            mask = np.asarray(feature_mask, self.dtype)[..., None]  # (B, T, 1)
            x = x + h * mask
            if caches is not None:
                caches["inp"], caches["inp.mask"] = inp, mask
        if c.embed_norm:
            x, ln_e = self._norm_forward(x, "ln_e")
            if caches is not None:
                caches["ln_e"] = ln_e
        return x

    def _block(self, x, i, rope, mask, n_out, caches):
        """Block i over tokens x (B, T, C), each attending to the keys of this sequence up to its own; mask is
        additive (T, T). With n_out only the last n_out positions ask and go on: (B, T, C) -> (B, n_out, C).
        caches, a dict, receives what backward needs."""
        c, p = self.config, f"h.{i}"
        T = x.shape[1]
        act_forward = layers.ACTIVATION[c.activation][0]
        h, ln_1 = self._norm_forward(x, f"{p}.ln_1")
        qkv, c_attn = self._linear_forward(h, f"{p}.attn.c_attn")  # (B, T, (nh + 2 nkv) hs)
        q, k, v = split_heads(qkv, c)  # (B, nh, T, hs), (B, nkv, T, hs) twice
        rope_q = rope_k = None
        if rope is not None:
            q, rope_q = layers.rope_forward(q, *rope)
            k, rope_k = layers.rope_forward(k, *rope)
        keys, values = k, v  # (B, nkv, T, hs)
        if n_out is not None:  # from here on (B, n_out, ...)
            q, x, mask = q[:, :, T - n_out:], x[:, T - n_out:], mask[T - n_out:]
        y, attn = layers.attention_forward(q, keys, values, mask)  # (B, nh, Tq, hs)
        h, c_proj = self._linear_forward(merge_heads(y), f"{p}.attn.c_proj")  # (B, Tq, C)
        x = x + h
        h, ln_2 = self._norm_forward(x, f"{p}.ln_2")
        h, c_fc = self._linear_forward(h, f"{p}.mlp.c_fc")  # (B, Tq, F or 2F)
        h, act = act_forward(h)  # (B, Tq, F)
        h, mlp_proj = self._linear_forward(h, f"{p}.mlp.c_proj")  # (B, Tq, C)
        if caches is not None:  # named by the layer whose inputs they hold (a linear's cache starts with its input)
            caches.update({f"{p}.ln_1": ln_1, f"{p}.attn.c_attn": c_attn, f"{p}.rope": (rope_q, rope_k, T),
                           f"{p}.attn": attn, f"{p}.attn.c_proj": c_proj, f"{p}.ln_2": ln_2, f"{p}.mlp.c_fc": c_fc,
                           f"{p}.mlp.act": act, f"{p}.mlp.c_proj": mlp_proj})
        return x + h

    def embed(self, idx) -> np.ndarray:
        """The residual stream (B, T, C) entering block 0 for token ids (B, T) at positions 0..T-1."""
        return self._embed(np.asarray(idx), np.arange(np.shape(idx)[1]))

    def block_with_inputs(self, x, i) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Block i over the stream x (B, T, C) entering it: (the stream leaving it, {each block linear's prefix:
        the input (B, T, in) it saw}), what calibrating one layer at a time reads."""
        T = x.shape[1]
        caches = {}
        out = self._block(x, i, self._rope(np.arange(T)), layers.causal_mask(T, T, self.dtype), None, caches)
        return out, {prefix: caches[prefix][0] for prefix in (f"h.{i}.{lin}" for lin in LINEARS)}

    def _block_backward(self, dx, i, caches, grads):
        """Gradients of block i's parameters into grads; returns d input (B, T, C) from d output dx."""
        c, p = self.config, f"h.{i}"
        rope_q, rope_k, T = caches[f"{p}.rope"]
        act_backward = layers.ACTIVATION[c.activation][1]
        dh = self._linear_backward(dx, caches[f"{p}.mlp.c_proj"], f"{p}.mlp.c_proj", grads)
        dh = act_backward(dh, caches[f"{p}.mlp.act"])
        dh = self._linear_backward(dh, caches[f"{p}.mlp.c_fc"], f"{p}.mlp.c_fc", grads)
        dx = dx + self._norm_backward(dh, caches[f"{p}.ln_2"], f"{p}.ln_2", grads)
        dh = self._linear_backward(dx, caches[f"{p}.attn.c_proj"], f"{p}.attn.c_proj", grads)
        B, Tq, _ = dh.shape
        dh = dh.reshape(B, Tq, c.n_head, c.head_size).transpose(0, 2, 1, 3)  # (B, Tq, C) -> (B, nh, Tq, hs)
        dq, dk, dv = layers.attention_backward(dh, caches[f"{p}.attn"])
        if Tq < T:  # only the last Tq positions asked: the others' query rows get no gradient
            dq = np.concatenate([np.zeros((B, c.n_head, T - Tq, c.head_size), dq.dtype), dq], axis=2)
        if rope_q is not None:
            dq, dk = layers.rope_backward(dq, rope_q), layers.rope_backward(dk, rope_k)
        dqkv = np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, 3 parts)
        dh = self._linear_backward(dqkv, caches[f"{p}.attn.c_attn"], f"{p}.attn.c_attn", grads)
        dh = self._norm_backward(dh, caches[f"{p}.ln_1"], f"{p}.ln_1", grads)
        if Tq < T:
            dh[:, T - Tq:] += dx
            return dh
        return dx + dh

    def _head(self, x, caches=None):
        """Final norm and lm_head: (B, T, C) -> logits (B, T, V)."""
        if self.config.final_norm:
            x, ln_f = self._norm_forward(x, "ln_f")
            if caches is not None:
                caches["ln_f"] = ln_f
        logits, lm_head = layers.linear_forward(x, self.lm_head, None)
        if caches is not None:
            caches["lm_head"] = lm_head
        return logits

    # ------------------------------------------------------------------------- training forward/backward

    def forward(self, idx, targets=None, weights=None, denom=None, features=None, feature_mask=None,
                outputs=None, keep: bool = True):
        """Logits (B, T, V) for token ids (B, T); with targets, also the mean loss and (unless keep=False, for a
        loss that needs no gradient) the caches for backward.

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
            raise InputError(f"sequence of {T} tokens is longer than block_size {c.block_size}")
        if outputs is not None and not 0 < outputs <= T:
            raise InputError(f"outputs must be 1..{T}, got {outputs}")
        positions = np.arange(T)
        if targets is not None and keep:  # training: the layers' forward, keeping what backward needs
            caches = {}
            rope, mask = self._rope(positions), layers.causal_mask(T, T, self.dtype)
            x = self._embed(idx, positions, caches, features, feature_mask)
            for i in range(c.n_layer):
                x = self._block(x, i, rope, mask, outputs if i == c.n_layer - 1 else None, caches)
            logits = self._head(x, caches)
        else:  # inference: the kernels; each layer's queries attend to this pass's keys
            caches = None

            def attend(q, k, v):
                keys, values = (np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in (k, v))  # (B, nkv, T, hs)
                return kernels.attention(q, keys, values, None, T - q.shape[1])

            logits = self._infer(idx, positions, lambda i: attend, outputs, features, feature_mask)
        if targets is None:
            return logits, None, None
        targets = np.asarray(targets)
        weights = np.ones(idx.shape, self.dtype) if weights is None else np.asarray(weights)
        if outputs is not None:
            if weights[:, :T - outputs].any():
                raise InputError(f"targets before the last {outputs} positions carry weight but get no output")
            targets, weights = targets[:, T - outputs:], weights[:, T - outputs:]
        denom = float(weights.sum()) if denom is None else denom
        loss, loss_cache = layers.cross_entropy_forward(logits, targets, weights, denom)
        if caches is not None:
            caches["loss"] = loss_cache
        return logits, loss, caches

    def backward(self, caches, grads: dict[str, np.ndarray]) -> None:
        """Gradients of the loss of the matching forward, written into `grads` (views of a zeroed buffer)."""
        if self.packed:
            raise TypeError("a model with packed weights runs forward only; fine-tune its float copy "
                            "(pocketgpt.quant.qat)")
        c = self.config
        dlogits = layers.cross_entropy_backward(caches["loss"])
        dx, dw, _ = layers.linear_backward(dlogits, caches["lm_head"])
        grads["wte.weight" if c.tie_embeddings else "lm_head.weight"][...] += dw
        if c.final_norm:
            dx = self._norm_backward(dx, caches["ln_f"], "ln_f", grads)
        for i in reversed(range(c.n_layer)):
            dx = self._block_backward(dx, i, caches, grads)
        if c.embed_norm:
            dx = self._norm_backward(dx, caches["ln_e"], "ln_e", grads)
        layers.embedding_backward(dx, caches["emb"], grads["wte.weight"], grads.get("wpe.weight"))
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
        with kernels.single_threaded_blas():
            losses = list(self._pool.map(work, range(workers), slices))
        total = self._grad_buffers[0][0]
        for k in range(1, workers):
            total += self._grad_buffers[k][0]
        return sum(losses), total

    # ------------------------------------------------------------------------- inference with a KV cache

    def new_cache(self, batch: int = 1, kind: str = "float", size: int | None = None) -> KVCache:
        """An empty KV cache for `batch` sequences of up to `size` positions (default: the whole context): float,
        or q4 (4-bit entries, QuantizedKVCache)."""
        if kind not in CACHE_KINDS:
            raise InputError(f"unknown KV cache kind {kind!r} (known: {', '.join(CACHE_KINDS)})")
        if size is not None and not 1 <= size <= self.config.block_size:
            raise InputError(f"a cache holds 1..{self.config.block_size} positions (got {size})")
        return (QuantizedKVCache if kind == "q4" else KVCache)(self.config, batch, self.dtype, size)

    def forward_cached(self, idx, cache: KVCache, outputs: int | None = None) -> np.ndarray:
        """Logits (B, T, V) for the T new tokens (B, T) that follow the cache's positions; extends the cache.

        Prefill is one call with the whole prompt (outputs=1: logits of the last position only, (B, 1, V));
        decode is one call per token with T = 1; speculative verification one call with the drafts.
        """
        idx = np.asarray(idx)
        T = idx.shape[1]
        start = cache.length
        if start + T > cache.size:
            raise InputError(f"position {start + T - 1} is beyond the context of {cache.size} tokens")
        logits = self._infer(idx, np.arange(start, start + T), lambda i: cache.attention(i, start), outputs)
        cache.length = start + T
        return logits

    def decode_slots(self, tokens, slots, cache: SlotCache) -> np.ndarray:
        """Logits (B, V) for one new token (B,) in each of the sequences in `slots` (B,); extends each slot.

        Each slot has its own length; keys beyond a slot's own positions are not read.
        """
        tokens, slots = np.asarray(tokens), np.asarray(slots, np.int64)
        pos = cache.lengths[slots]  # (B,)
        if (pos >= cache.size).any():
            raise InputError(f"a slot is full: the context holds {cache.size} tokens")
        logits = self._infer(tokens[:, None], pos[:, None], lambda i: kernels.FloatKV(cache.k[i], cache.v[i], slots,
                                                                                      pos))
        cache.lengths[slots] = pos + 1
        return logits[:, 0]

    # ------------------------------------------------------------------------- inference (pocketgpt.kernels)

    def block_weights(self, i: int) -> kernels.BlockWeights:
        """Block i's weights as inference reads them (kept while the model's weights are the ones it holds)."""
        found = self._blocks.get(i) if self._blocks is not None else None
        if found is not None:
            return found
        c, p = self.config, f"h.{i}"

        def norm(prefix: str) -> tuple[np.ndarray, np.ndarray]:
            return (self.params.get(f"{prefix}.weight", np.ones(c.n_embd, self.dtype)),
                    self.params.get(f"{prefix}.bias", np.zeros(c.n_embd, self.dtype)))

        names = [f"{p}.{lin}" for lin in LINEARS]
        w = kernels.BlockWeights(c.norm, c.norm_eps, c.activation, c.n_head, c.n_kv, c.head_size, norm(f"{p}.ln_1"),
                                 norm(f"{p}.ln_2"), *(self.stored(f"{n}.weight") for n in names),
                                 tuple(self.params.get(f"{n}.bias") for n in names))
        if self._blocks is not None:
            self._blocks[i] = w
        return w

    def _norm(self, x, prefix):
        c = self.config
        w = self.params.get(f"{prefix}.weight")
        if c.norm == "rmsnorm":
            return kernels.rmsnorm(x, w, c.norm_eps)
        return kernels.layernorm(x, w, self.params.get(f"{prefix}.bias"), c.norm_eps)

    def _infer(self, idx, positions, attention, outputs=None, features=None, feature_mask=None) -> np.ndarray:
        """Logits of new tokens idx (B, T) at positions (T,) or (B, T); attention(i) says where block i keeps its
        keys and values (pocketgpt.kernels.block); see forward() for the rest."""
        c = self.config
        x = kernels.embedding(self.stored("wte.weight"), idx).astype(self.dtype, copy=False)  # (B, T, C)
        if c.positions == "learned":
            x = x + self.params["wpe.weight"][positions]
        if features is not None:
            inp = kernels.linear(features, self.params["inp.weight"], self.params["inp.bias"])
            x = x + inp * np.asarray(feature_mask, self.dtype)[..., None]
        if c.embed_norm:
            x = self._norm(x, "ln_e")
        rope = (self.rope_cos[positions], self.rope_sin[positions]) if c.positions == "rope" else None
        blas = any(kernels.blas_multiplies(m) for i in range(c.n_layer) for m in self.block_weights(i).matrices)
        with kernels.blas_threads_for(idx.size, blas):
            for i in range(c.n_layer):
                x = kernels.block(x, self.block_weights(i), rope, attention(i), outputs if i == c.n_layer - 1 else None)
        if c.final_norm:
            x = self._norm(x, "ln_f")
        logits = kernels.linear(x, self.stored(self.lm_head_name))
        if idx.size > LONG_PASS:
            release_freed_memory()
        return logits


def packed_copy(model: GPT, pack: Callable[[np.ndarray], Packed], names: list[str] | None = None) -> GPT:
    """A forward-only copy of `model` whose block linears (or just `names`) are packed by pack(float weight),
    from the float parameters where the model holds them (never from what a subclass's weight() shows)."""
    names = linear_names(model.config) if names is None else names
    packed = {**model.packed, **{name: pack(model.params[name] if name in model.params else model.weight(name))
                                 for name in names}}
    floats = {k: v for k, v in model.params.items() if k not in packed}
    return GPT(model.config, floats, dtype=model.dtype, packed=packed)
