"""pocketgpt: a GPT you can read, train, shrink, speed up and guard, in Python, on a CPU.

Importing the package imports nothing else, so that `python -m pocketgpt.reference` runs on the
standard library alone. The engine lives in pocketgpt.model, training in pocketgpt.train.
"""

__version__ = "0.1.0"
