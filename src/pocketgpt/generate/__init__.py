"""The generation layer: sampling settings (sampling), requests and their progress (request), plain decoding
(decode), text streams with stop strings (text), continuous batching (batching) with prefix caching (prefix)
and speculative decoding (speculative). Every decoder is a generator of token ids or a scheduler of Sequences;
the CLI and the server consume them."""

from pocketgpt.generate.batching import Batcher, Scheduler, generate_batch
from pocketgpt.generate.decode import decode, generate
from pocketgpt.generate.prefix import PrefixCache
from pocketgpt.generate.request import Request, Sequence, check_context
from pocketgpt.generate.sampling import Sampling, draw, next_token, probs_from_logits
from pocketgpt.generate.speculative import (
    KINDS,
    NGramDraft,
    SpecStats,
    SpeculativeBatcher,
    make_draft,
    run_sequence,
    speculate,
    speculative_generate,
)
from pocketgpt.generate.text import TextStream, default_length, encode_prompt

__all__ = ["KINDS", "Batcher", "NGramDraft", "PrefixCache", "Request", "Sampling", "Scheduler", "Sequence", "SpecStats",
           "SpeculativeBatcher", "TextStream", "check_context", "decode", "default_length", "draw", "encode_prompt",
           "generate", "generate_batch", "make_draft", "next_token", "probs_from_logits", "run_sequence", "speculate",
           "speculative_generate"]
