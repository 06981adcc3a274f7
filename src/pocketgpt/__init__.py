"""pocketgpt: a GPT you can read, train, shrink, speed up and guard, in Python, on a CPU."""

from pocketgpt.config import PRESETS, GPTConfig
from pocketgpt.model import GPT

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "PRESETS", "__version__"]
