"""The reference engine: microgpt's algorithm on a scalar autograd, standard library only.

This file is pocketgpt's executable specification. Every floating-point operation happens in the
same order as in microgpt, so seed 42 reproduces microgpt's published run bit for bit. It is not
fast and not general: one document per step, RMSNorm without weights, ReLU, no biases.
Run it on its own: `python -m pocketgpt.reference --steps 1000`.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

N_LAYER, N_EMBD, N_HEAD, BLOCK_SIZE, INIT_STD = 1, 16, 4, 16, 0.08
LEARNING_RATE, BETA1, BETA2, EPS_ADAM = 0.01, 0.85, 0.99, 1e-8
TEMPERATURE = 0.5
NAMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "names.txt")


# ----------------------------------------------------------------------------- autograd


class Value:
    """A scalar that remembers the local derivative to each of its inputs."""

    __slots__ = ("data", "grad", "_children", "_local_grads")

    def __init__(self, data, children=(), local_grads=()):
        self.data = data
        self.grad = 0
        self._children = children
        self._local_grads = local_grads

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), (1, 1))

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), (other.data, self.data))

    def __pow__(self, k):  # k is a plain number
        return Value(self.data**k, (self,), (k * self.data ** (k - 1),))

    def log(self):
        return Value(math.log(self.data), (self,), (1 / self.data,))

    def exp(self):
        return Value(math.exp(self.data), (self,), (math.exp(self.data),))

    def relu(self):
        return Value(max(0, self.data), (self,), (float(self.data > 0),))

    def __neg__(self):
        return self * -1

    def __radd__(self, other):
        return self + other

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return other + (-self)

    def __rmul__(self, other):
        return self * other

    def __truediv__(self, other):
        return self * other**-1

    def __rtruediv__(self, other):
        return other * self**-1

    def backward(self):
        """Chain rule over the graph in reverse topological order.

        The order is the post-order of a depth-first walk that visits children left to right,
        computed with an explicit stack so that deep graphs cannot hit the recursion limit.
        Gradients are summed in exactly that order, which keeps results bit-identical to microgpt.
        """
        order, seen = [], {self}
        stack = [(self, iter(self._children))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in seen:
                    seen.add(child)
                    stack.append((child, iter(child._children)))
                    break
            else:
                stack.pop()
                order.append(node)
        self.grad = 1
        for node in reversed(order):
            for child, local in zip(node._children, node._local_grads):
                child.grad += local * node.grad


# ----------------------------------------------------------------------------- model


def matrix(rng: random.Random, n_out: int, n_in: int, std: float = INIT_STD) -> list[list[Value]]:
    """An (n_out, n_in) weight matrix drawn row by row from N(0, std)."""
    return [[Value(rng.gauss(0, std)) for _ in range(n_in)] for _ in range(n_out)]


def init_params(rng: random.Random, vocab_size: int, n_layer: int = N_LAYER, n_embd: int = N_EMBD,
                block_size: int = BLOCK_SIZE, std: float = INIT_STD) -> dict[str, list[list[Value]]]:
    """Parameters in microgpt's drawing order: wte, wpe, lm_head, then per layer q, k, v, o, fc1, fc2."""
    params = {"wte": matrix(rng, vocab_size, n_embd, std), "wpe": matrix(rng, block_size, n_embd, std),
              "lm_head": matrix(rng, vocab_size, n_embd, std)}
    for i in range(n_layer):
        params[f"layer{i}.attn_wq"] = matrix(rng, n_embd, n_embd, std)
        params[f"layer{i}.attn_wk"] = matrix(rng, n_embd, n_embd, std)
        params[f"layer{i}.attn_wv"] = matrix(rng, n_embd, n_embd, std)
        params[f"layer{i}.attn_wo"] = matrix(rng, n_embd, n_embd, std)
        params[f"layer{i}.mlp_fc1"] = matrix(rng, 4 * n_embd, n_embd, std)
        params[f"layer{i}.mlp_fc2"] = matrix(rng, n_embd, 4 * n_embd, std)
    return params


def linear(x, w):
    return [sum(wi * xi for wi, xi in zip(row, x)) for row in w]


def softmax(logits):
    top = max(v.data for v in logits)
    exps = [(v - top).exp() for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def rmsnorm(x):
    mean_square = sum(xi * xi for xi in x) / len(x)
    scale = (mean_square + 1e-5) ** -0.5
    return [xi * scale for xi in x]


def gpt(params, token_id: int, pos_id: int, keys: list, values: list, n_head: int = N_HEAD):
    """Logits for one position; appends this position's keys and values to the per-layer cache."""
    n_layer = len(keys)
    x = [t + p for t, p in zip(params["wte"][token_id], params["wpe"][pos_id])]
    x = rmsnorm(x)
    head_dim = len(x) // n_head
    for li in range(n_layer):
        residual = x
        x = rmsnorm(x)
        q = linear(x, params[f"layer{li}.attn_wq"])
        keys[li].append(linear(x, params[f"layer{li}.attn_wk"]))
        values[li].append(linear(x, params[f"layer{li}.attn_wv"]))
        heads = []
        for h in range(n_head):
            lo, hi = h * head_dim, (h + 1) * head_dim
            q_h = q[lo:hi]
            k_h = [k[lo:hi] for k in keys[li]]
            v_h = [v[lo:hi] for v in values[li]]
            scores = [sum(q_h[j] * k_t[j] for j in range(head_dim)) / head_dim**0.5 for k_t in k_h]
            weights = softmax(scores)
            heads.extend(sum(weights[t] * v_h[t][j] for t in range(len(v_h))) for j in range(head_dim))
        x = linear(heads, params[f"layer{li}.attn_wo"])
        x = [a + b for a, b in zip(x, residual)]
        residual = x
        x = rmsnorm(x)
        x = [h.relu() for h in linear(x, params[f"layer{li}.mlp_fc1"])]
        x = linear(x, params[f"layer{li}.mlp_fc2"])
        x = [a + b for a, b in zip(x, residual)]
    return linear(x, params["lm_head"])


def document_loss(params, tokens: list[int], n_layer: int = N_LAYER, n_head: int = N_HEAD,
                  block_size: int = BLOCK_SIZE):
    """Mean next-token cross-entropy over one document (tokens include the BOS framing).

    Returns (loss, logits) with logits one list of Values per predicted position.
    """
    n = min(block_size, len(tokens) - 1)
    keys, values = [[] for _ in range(n_layer)], [[] for _ in range(n_layer)]
    losses, all_logits = [], []
    for pos in range(n):
        logits = gpt(params, tokens[pos], pos, keys, values, n_head)
        probs = softmax(logits)
        losses.append(-probs[tokens[pos + 1]].log())
        all_logits.append(logits)
    return (1 / n) * sum(losses), all_logits


# ----------------------------------------------------------------------------- optimizer


class Adam:
    """Adam with bias correction; the learning rate decays linearly to zero over num_steps."""

    def __init__(self, params: list[Value], num_steps: int, lr: float = LEARNING_RATE,
                 beta1: float = BETA1, beta2: float = BETA2, eps: float = EPS_ADAM):
        self.params, self.num_steps = params, num_steps
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = [0.0] * len(params)
        self.v = [0.0] * len(params)

    def step(self, step: int) -> None:
        """Update with the gradients of (0-based) step `step`, then zero them."""
        lr_t = self.lr * (1 - step / self.num_steps)
        b1, b2 = self.beta1, self.beta2
        m, v = self.m, self.v
        for i, p in enumerate(self.params):
            m[i] = b1 * m[i] + (1 - b1) * p.grad
            v[i] = b2 * v[i] + (1 - b2) * p.grad**2
            m_hat = m[i] / (1 - b1 ** (step + 1))
            v_hat = v[i] / (1 - b2 ** (step + 1))
            p.data -= lr_t * m_hat / (v_hat**0.5 + self.eps)
            p.grad = 0


# ----------------------------------------------------------------------------- data, train, sample


def load_docs(path: str = NAMES) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f.read().strip().split("\n") if line.strip()]


def flat_params(params) -> list[Value]:
    return [p for mat in params.values() for row in mat for p in row]


def sample(params, rng: random.Random, bos: int, vocab_size: int, n_layer: int = N_LAYER,
           n_head: int = N_HEAD, block_size: int = BLOCK_SIZE, temperature: float = TEMPERATURE) -> list[int]:
    """One document's token ids, sampled until BOS or block_size tokens."""
    keys, values = [[] for _ in range(n_layer)], [[] for _ in range(n_layer)]
    token, out = bos, []
    for pos in range(block_size):
        logits = gpt(params, token, pos, keys, values, n_head)
        probs = softmax([logit / temperature for logit in logits])
        token = rng.choices(range(vocab_size), weights=[p.data for p in probs])[0]
        if token == bos:
            break
        out.append(token)
    return out


def run(steps: int = 1000, seed: int = 42, num_samples: int = 20, path: str = NAMES, log=print):
    """microgpt's whole run: shuffle, init, train `steps` steps, sample. Returns (losses, samples)."""
    rng = random.Random(seed)
    docs = load_docs(path)
    rng.shuffle(docs)
    chars = sorted(set("".join(docs)))
    bos, vocab_size = len(chars), len(chars) + 1
    params = init_params(rng, vocab_size)
    optimizer = Adam(flat_params(params), steps)
    losses = []
    for step in range(steps):
        doc = docs[step % len(docs)]
        tokens = [bos] + [chars.index(ch) for ch in doc] + [bos]
        loss, _ = document_loss(params, tokens)
        loss.backward()
        optimizer.step(step)
        losses.append(loss.data)
        log(f"step {step + 1:4d} / {steps:4d} | loss {loss.data:.4f}")
    samples = ["".join(chars[t] for t in sample(params, rng, bos, vocab_size)) for _ in range(num_samples)]
    for i, s in enumerate(samples):
        log(f"sample {i + 1:2d}: {s}")
    return losses, samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pocketgpt.reference",
                                     description="microgpt's algorithm on a scalar autograd (standard library only).")
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--samples", type=int, default=20, help="names to sample after training (default 20)")
    parser.add_argument("--data", default=NAMES, help="text file, one document per line (default: names)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.samples < 0:
        parser.error("--steps must be >= 1 and --samples >= 0")
    if not os.path.isfile(args.data):
        parser.error(f"--data {args.data}: no such file")
    start = time.perf_counter()
    run(args.steps, args.seed, args.samples, args.data)
    print(f"{(time.perf_counter() - start) / args.steps * 1000:.1f} ms per step", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
