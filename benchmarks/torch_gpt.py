"""The shakespeare-cpu model written in PyTorch (eager), only to time pocketgpt against it side by side.

Same architecture as pocketgpt's preset: LayerNorm with weights and no bias, GELU (tanh), no biases,
tied embeddings, final norm; same AdamW settings and gradient clipping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pocketgpt.config import GPTConfig


class Block(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        C = c.n_embd
        self.n_head = c.n_head
        self.ln_1 = nn.LayerNorm(C, bias=False)
        self.c_attn = nn.Linear(C, 3 * C, bias=False)
        self.attn_proj = nn.Linear(C, C, bias=False)
        self.ln_2 = nn.LayerNorm(C, bias=False)
        self.c_fc = nn.Linear(C, 4 * C, bias=False)
        self.mlp_proj = nn.Linear(4 * C, C, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, c: GPTConfig):
        super().__init__()
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.h = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = c.init_std / math.sqrt(2 * c.n_layer) if name.endswith("proj.weight") else c.init_std
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def make_train_step(c: GPTConfig, lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0):
    """(step(x, y, lr=None) -> loss, evaluate(batches) -> mean loss) for a fresh TorchGPT."""
    model = TorchGPT(c)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(beta1, beta2))

    def step(x, y, lr=None):
        if lr is not None:
            for group in opt.param_groups:
                group["lr"] = lr
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(batches):
        total, count = 0.0, 0
        for x, y, w in batches:
            total += model(torch.from_numpy(x), torch.from_numpy(y)).item() * w.sum()
            count += w.sum()
        return total / count

    return step, evaluate
