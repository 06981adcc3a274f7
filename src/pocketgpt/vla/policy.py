"""The VLA policy: a pocketgpt GPT with an input projection, trained by behaviour cloning.

One decision is one sequence of T = MAX_MISSION + 49 + 1 tokens:
  positions 0-31   the instruction's characters, padded with PAD (longer ones are cut)
  next 49          the PATCH token, plus the input projection of that image tile (and its position embedding)
  last             the ACT token, whose output is read over the action tokens
The vocabulary is the instruction characters, then PAD, PATCH and ACT, then one token per environment action
(the character tokenizer's reserved ids). The loss is the cross-entropy of the ACT position's logits against
the expert's action token only, so the model's last layer runs for the ACT position alone (`outputs=1`).

The instruction comes first so that, under causal attention, every patch can read it (a patch can then tell
whether it shows the object named) and the ACT token reads patches that already know.

The starting weights (`init_policy`) decide whether behaviour cloning learns at all, because a policy must
know where an object is and which of several objects the instruction names:
- The patches' position embeddings are a row part plus a column part, each with a linear ramp along a random
  direction (left/right and near/far are linear in them from the first step), at a larger scale
  (PATCH_POS_STD) than the model's other weights, so that a tile's place is not drowned by its pixels.
- The input projection starts at INPUT_STD, so that a tile's content is about as large as its position.
- The attention's query and key weights start at QK_STD rather than the usual 0.02: attention logits are a
  product of two weight matrices, so started near zero each one's gradient is scaled by the other and
  training sits on a plateau where the instruction goes unused.
Sixteen heads of 8 channels rather than eight of 16 give more heads the chance, at the start, to attend to the
instruction's colour or object word. The runs behind these choices are in the README's VLA section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pocketgpt.config import GPTConfig
from pocketgpt.errors import InputError
from pocketgpt.model import GPT
from pocketgpt.model.runtime import retain_freed_memory
from pocketgpt.tokenizers import CharTokenizer
from pocketgpt.train import Checkpoint, TrainSettings, adamw_step, loop, make_optimizer
from pocketgpt.vla.env import EVAL_SEED_START, GRID, TILE, Demos, make_env, patches, reset

CHARS = " ',abcdefghijklmnopqrstuvwxyz"
MAX_MISSION = 32  # characters of the instruction the model reads (BabyAI's GoTo missions need < 30)
N_PATCHES = GRID * GRID
SEQ = MAX_MISSION + N_PATCHES + 1
PATCHES = slice(MAX_MISSION, MAX_MISSION + N_PATCHES)  # where the patch tokens sit in a sequence
PATCH_POS_STD = 0.5
INPUT_STD = 0.1
QK_STD = 0.06


@dataclass(frozen=True)
class Layout:
    """Token ids of a VLA vocabulary."""

    n_chars: int
    n_actions: int

    @property
    def pad(self) -> int:
        return self.n_chars

    @property
    def patch(self) -> int:
        return self.n_chars + 1

    @property
    def act(self) -> int:
        return self.n_chars + 2

    @property
    def first_action(self) -> int:
        return self.n_chars + 3

    @property
    def vocab_size(self) -> int:
        return self.n_chars + 3 + self.n_actions


def vla_config(n_actions: int, n_layer: int = 2, n_embd: int = 128, n_head: int = 16) -> GPTConfig:
    layout = Layout(len(CHARS), n_actions)
    return GPTConfig(vocab_size=layout.vocab_size, block_size=SEQ, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     norm="layernorm", norm_weights=True, activation="gelu", tie_embeddings=False, init_std=0.02,
                     scale_residual_init=True, embed_norm=False, final_norm=True, input_dim=TILE * TILE * 3)


class VLAPolicy:
    def __init__(self, model: GPT, actions: list[str]):
        self.model, self.actions = model, actions
        self.layout = Layout(len(CHARS), len(actions))
        self.tok = CharTokenizer(CHARS, bos=False, reserved=self.layout.vocab_size - len(CHARS))

    def encode(self, images: np.ndarray, missions: list[str], blank: bool = False):
        """Token ids (B, SEQ), features (B, SEQ, 192) and the feature mask (B, SEQ) for a batch of decisions."""
        B, L = len(missions), self.layout
        idx = np.full((B, SEQ), L.pad, np.int64)
        idx[:, PATCHES] = L.patch
        idx[:, -1] = L.act
        for b, mission in enumerate(missions):
            if not blank:
                ids = self.tok.encode(mission.lower())[:MAX_MISSION]
                idx[b, :len(ids)] = ids
        feats = np.zeros((B, SEQ, TILE * TILE * 3), self.model.dtype)
        feats[:, PATCHES] = np.stack([patches(im) for im in images])
        mask = np.zeros((B, SEQ), self.model.dtype)
        mask[:, PATCHES] = 1
        return idx, feats, mask

    def loss_and_grad(self, images, missions, actions, workers: int = 2) -> tuple[float, np.ndarray]:
        """Mean cross-entropy of the ACT position against the actions, and its flat gradient (the batch split
        over `workers` threads, as in training)."""
        idx, feats, mask = self.encode(images, missions)
        targets = np.zeros_like(idx)
        targets[:, -1] = self.layout.first_action + np.asarray(actions)
        weights = np.zeros(idx.shape, self.model.dtype)
        weights[:, -1] = 1
        return self.model.loss_and_grad(idx, targets, weights, workers, features=feats, feature_mask=mask,
                                       outputs=1)

    def action_logits(self, images, missions, blank: bool = False) -> np.ndarray:
        idx, feats, mask = self.encode(images, missions, blank)
        logits = self.model.forward(idx, features=feats, feature_mask=mask, outputs=1)[0][:, -1]
        L = self.layout
        return logits[:, L.first_action:L.first_action + L.n_actions]

    def act(self, image, mission: str, blank: bool = False) -> int:
        return int(np.argmax(self.action_logits([image], [mission], blank)[0]))

    def checkpoint(self, data: dict) -> Checkpoint:
        return Checkpoint.of(self.model, self.tok, {**data, "vla": {"actions": self.actions}})

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint) -> VLAPolicy:
        if "vla" not in ckpt.data or not ckpt.config.input_dim:
            raise InputError("not a VLA checkpoint (train one with pocketgpt vla train)")
        return cls(ckpt.model(), ckpt.data["vla"]["actions"])


def init_policy(model: GPT, seed: int) -> None:
    """The starting weights that let behaviour cloning leave its plateau (see the module's docstring): the
    patches' position embeddings (row + column, each with a linear ramp), the input projection, and the
    attention's query and key weights."""
    rng = np.random.default_rng(seed + 1)
    C = model.config.n_embd
    ramp = np.linspace(-1.0, 1.0, GRID)[:, None]

    def axis() -> np.ndarray:  # (GRID, C): one row or column part
        return rng.normal(0.0, PATCH_POS_STD / np.sqrt(8), (GRID, C)) + ramp * rng.normal(0.0, PATCH_POS_STD, C)

    rows, cols = axis(), axis()
    model.params["wpe.weight"][PATCHES] = (rows[:, None] + cols[None, :]).reshape(N_PATCHES, C)
    inp = model.params["inp.weight"]
    inp[...] = rng.normal(0.0, INPUT_STD, inp.shape)
    for layer in range(model.config.n_layer):
        model.params[f"h.{layer}.attn.c_attn.weight"][:2 * C] = rng.normal(0.0, QK_STD, (2 * C, C))


class DemoBatches:
    """Random batches of decisions from the demonstrations: (images, missions, actions)."""

    def __init__(self, demos: Demos, batch_size: int, seed: int):
        self.demos, self.batch_size, self.rng = demos, batch_size, np.random.default_rng(seed)

    def next(self):
        rows = self.rng.integers(0, len(self.demos.actions), self.batch_size)
        return self.demos.images[rows], [self.demos.missions[r] for r in rows], self.demos.actions[rows]


def policy_settings(steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0) -> TrainSettings:
    """Behaviour cloning's run: AdamW (beta2 0.99, weight decay 0.01), 5% warmup, cosine to lr / 10, clipping at 1."""
    return TrainSettings(steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10, warmup=max(1, steps // 20),
                         schedule="cosine", weight_decay=0.01, beta1=0.9, beta2=0.99, grad_clip=1.0, seed=seed,
                         workers=2)


def train_policy(demos: Demos, steps: int = 3000, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                 on_step=None, **arch) -> tuple[VLAPolicy, dict]:
    """Behaviour cloning on the demonstrations, in the training loop every trainer uses.
    arch (n_layer, n_embd, n_head) overrides vla_config's defaults; on_step(info) after each step."""
    model = GPT(vla_config(len(demos.actions_names), **arch), seed=seed)
    init_policy(model, seed)
    policy = VLAPolicy(model, demos.actions_names)
    settings = policy_settings(steps, batch_size, lr, seed)
    retain_freed_memory()
    losses = []

    def record(info: dict) -> None:
        losses.append(info["loss"])
        if on_step is not None:
            on_step({**info, "mean_loss": float(np.mean(losses[-100:]))})

    step = adamw_step(model, settings, DemoBatches(demos, batch_size, seed), make_optimizer(model, settings),
                      loss_and_grad=lambda batch: policy.loss_and_grad(*batch, workers=settings.workers),
                      tokens=lambda batch: len(batch[2]))
    result = loop(settings, step, on_step=record)
    return policy, {"steps": steps, "final_loss": float(np.mean(losses[-100:])), "seconds": result["seconds"],
                    "samples": len(demos.actions)}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate_policy(env_name: str, episodes: int, act, budget: int | None = None,
                    seed_start: int = EVAL_SEED_START, batch: bool = False) -> dict:
    """Success rate over held-out seeds, with a 95% Wilson interval. act(observations, envs) -> actions for a
    list of running episodes when batch=True (one model call for all of them), else act(obs, env) -> action.
    budget caps the steps (None: the environment's own limit)."""
    envs = [make_env(env_name) for _ in range(episodes if batch else 1)]
    wins = 0
    for start in range(0, episodes, len(envs)):
        group = envs[:min(len(envs), episodes - start)]
        obs = [reset(env, seed_start + start + i)[0] for i, env in enumerate(group)]
        limit = budget or group[0].unwrapped.max_steps
        running = list(range(len(group)))
        for _ in range(limit):
            if not running:
                break
            if batch:
                actions = act([obs[i] for i in running], [group[i] for i in running])
            else:
                actions = [act(obs[i], group[i]) for i in running]
            still = []
            for i, a in zip(running, actions):
                obs[i], reward, terminated, truncated, _ = group[i].step(int(a))
                if terminated or truncated:
                    wins += reward > 0
                else:
                    still.append(i)
            running = still
    lo, hi = wilson(wins, episodes)
    return {"success": wins / episodes, "ci95": [lo, hi], "episodes": episodes,
            "budget": budget or int(envs[0].unwrapped.max_steps)}


def evaluation_table(env_name: str, policy: VLAPolicy, episodes: int = 500, budget: int = 16,
                     baselines: bool = True, seed_start: int = EVAL_SEED_START, progress=None) -> list[dict]:
    """The policy with and without its instruction, at `budget` steps and at the environment's own limit;
    with baselines, random actions and the expert bot too. progress(done, total) after each row."""
    from minigrid.utils.baby_ai_bot import BabyAIBot

    def model(blank: bool):
        def act(observations, envs):
            images, missions = [o["image"] for o in observations], [o["mission"] for o in observations]
            return np.argmax(policy.action_logits(images, missions, blank), axis=1)
        return act

    agents = {"policy": model(False), "policy, blank instruction": model(True)}
    if baselines:
        rng = np.random.default_rng(0)
        agents["random actions"] = lambda obs, env: int(rng.integers(env.action_space.n))
        bots = {}

        def expert(obs, env):
            if env.unwrapped.step_count == 0 or id(env) not in bots:  # a new episode: a new bot
                bots[id(env)] = BabyAIBot(env.unwrapped)
            return bots[id(env)].replan()

        agents["expert bot"] = expert
    rows = []
    for name, act in agents.items():
        for limit in (budget, None):
            rows.append({"agent": name, **evaluate_policy(env_name, episodes, act, limit, seed_start,
                                                          batch=name.startswith("policy"))})
            if progress is not None:
                progress(len(rows), 2 * len(agents))
    return rows
