"""The serving layer: an OpenAI-compatible HTTP server over the generation layer's schedulers (the `serve`
extra: Starlette and uvicorn)."""
