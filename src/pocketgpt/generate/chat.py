"""Conversations as prompts: the messages rendered by the model's chat template (pocketgpt.tokenizers.chat),
encoded, and made to fit a token budget by dropping the oldest turns, never the system prompt nor the latest
message. What the chat command and the server's chat endpoint both use.
"""

from __future__ import annotations

from pocketgpt.errors import InputError
from pocketgpt.generate.text import encode_prompt
from pocketgpt.tokenizers.chat import chat_text, check_messages


def chat_ids(tokenizer, messages: list[dict], documents: bool = False) -> tuple[list[int], tuple[str, ...]]:
    """(prompt ids, stop strings) of a conversation that now awaits the assistant's reply."""
    text, stops = chat_text(tokenizer, messages)
    return encode_prompt(tokenizer, text, documents), stops


def fit_conversation(tokenizer, messages: list[dict], budget: int, documents: bool = False):
    """(messages kept, prompt ids, stop strings): the oldest turns after the system prompt are dropped until the
    prompt holds at most `budget` tokens. InputError when even the system prompt and the last message do not fit."""
    messages = check_messages(messages)
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system):]
    while True:
        ids, stops = chat_ids(tokenizer, system + rest, documents)
        if len(ids) <= budget:
            return system + rest, ids, stops
        if len(rest) <= 1:
            raise InputError(f"the conversation needs {len(ids)} tokens even without its earlier turns; the "
                             f"room for a prompt is {budget}")
        rest = rest[1:]
