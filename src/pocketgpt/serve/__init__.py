"""The serving layer: an OpenAI-compatible HTTP server over the generation layer's schedulers (the `serve`
extra: Starlette and uvicorn, imported by pocketgpt.serve.server only)."""

SLOTS = 32  # sequences decoded together
MAX_QUEUE = 64  # requests that may wait for a slot before the server answers 429
CONTEXT = 2048  # positions each slot holds at most (a real model's own context can be far longer)
MAX_BODY = 1 << 20  # bytes a request body may have; a prompt that fills an 8k-token context is tens of kilobytes
PREFIX_CACHE = 256  # megabytes of prompt-prefix keys and values kept for reuse across requests
