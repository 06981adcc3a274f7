"""BabyAI environments (minigrid) seen as 56x56 RGB agent views, and demonstrations from the expert bot.

The agent view is the 7x7 grid in front of the agent drawn at 8 pixels per tile; `patches` cuts it into the
49 tiles, each a flat 8x8x3 vector scaled to [0, 1], in row-major tile order. Training demonstrations use
seeds 0, 1, 2, ...; evaluation uses seeds from EVAL_SEED_START on, so the two never share an episode.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketgpt.errors import InputError
from pocketgpt.files import atomic_file

TILE = 8
GRID = 7
EVAL_SEED_START = 1_000_000


def require_minigrid():
    try:
        import gymnasium
        import minigrid  # noqa: F401  (registers the BabyAI environments)
    except ImportError:
        raise ImportError("the VLA commands need minigrid: pip install 'pocketgpt[vla]'") from None
    return gymnasium


def make_env(name: str):
    """A BabyAI environment whose observations hold the 56x56x3 agent view."""
    gym = require_minigrid()
    from minigrid.wrappers import RGBImgPartialObsWrapper

    try:
        env = gym.make(name)
    except gym.error.Error as e:
        raise InputError(f"unknown environment {name!r}: {e}") from None
    return RGBImgPartialObsWrapper(env, tile_size=TILE)


def reset(env, seed: int):
    """env.reset(seed=seed) without minigrid's "Sampling rejected" chatter on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return env.reset(seed=seed)


def action_names(env) -> list[str]:
    return [a.name for a in env.unwrapped.actions]


def patches(image: np.ndarray) -> np.ndarray:
    """(56, 56, 3) uint8 -> (49, 192) float32: one row per tile, row-major, pixels in [0, 1]."""
    g = image.reshape(GRID, TILE, GRID, TILE, 3).transpose(0, 2, 1, 3, 4)
    return g.reshape(GRID * GRID, TILE * TILE * 3).astype(np.float32) / 255.0


@dataclass
class Demos:
    """Steps of expert episodes: images (N, 56, 56, 3) uint8, missions (N,), actions (N,), episode ids (N,)."""

    env: str
    images: np.ndarray
    missions: list[str]
    actions: np.ndarray
    episodes: np.ndarray
    actions_names: list[str]

    def save(self, path: str | Path) -> None:
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, images=self.images, actions=self.actions, episodes=self.episodes,
                                meta=np.array(json.dumps({"env": self.env, "missions": self.missions,
                                                          "actions": self.actions_names})))

    @classmethod
    def load(cls, path: str | Path) -> Demos:
        try:
            with np.load(path) as f:
                meta = json.loads(str(f["meta"]))
                return cls(meta["env"], f["images"], meta["missions"], f["actions"], f["episodes"], meta["actions"])
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{path}: not a demonstrations file ({e})") from None


def collect(name: str = "BabyAI-GoToLocal-v0", episodes: int = 3000, seed_start: int = 0, progress=None) -> Demos:
    """Run the BabyAI expert bot for `episodes` episodes (seeds seed_start, seed_start + 1, ...);
    progress(done, total) after each episode."""
    from minigrid.utils.baby_ai_bot import BabyAIBot

    env = make_env(name)
    images, missions, actions, ids = [], [], [], []
    for ep in range(episodes):
        obs, _ = reset(env, seed_start + ep)
        bot = BabyAIBot(env.unwrapped)
        done = False
        while not done:
            action = bot.replan()
            images.append(obs["image"])
            missions.append(obs["mission"])
            actions.append(int(action))
            ids.append(ep)
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
        if progress is not None:
            progress(ep + 1, episodes)
    return Demos(name, np.array(images, np.uint8), missions, np.array(actions, np.int64), np.array(ids, np.int64),
                 action_names(env))
