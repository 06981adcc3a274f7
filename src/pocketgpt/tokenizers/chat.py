"""Chat templates: the model's own Jinja template (a GGUF's tokenizer.chat_template, a Hugging Face folder's
tokenizer_config.json), rendered with jinja2 the way transformers' apply_chat_template renders it, and the
Shakespeare layout for models that have none.

transformers compiles templates in a sandboxed environment with trim_blocks and lstrip_blocks, the loop
controls extension, a tojson filter that keeps non-ASCII text, raise_exception() and strftime_now(); the
variables are messages, add_generation_prompt and the tokenizer's special tokens (bos_token, eos_token).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pocketgpt.errors import InputError

ROLES = ("system", "user", "assistant")
PLAIN_STOP = "\n\n"  # a blank line ends a reply in the Shakespeare layout


class ChatError(InputError):
    pass


def check_messages(messages) -> list[dict]:
    """[{"role": str, "content": str}, ...]; content may be OpenAI's list of parts ({"type": "text", "text"})."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages must be a non-empty list")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ChatError("each message needs a string role and a content")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ChatError("content parts must be {\"type\": \"text\", \"text\": ...}")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ChatError("each message needs a string role and a content")
        out.append({"role": m["role"], "content": content})
    return out


@lru_cache(maxsize=8)
def _compile(template: str):
    def raise_exception(message):
        raise ChatError(f"the chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ChatError(f"the model's chat template does not compile: {e}") from None


def render(template: str, messages: list[dict], add_generation_prompt: bool = True, **special) -> str:
    """The text of a conversation under a Jinja chat template (special: bos_token, eos_token, ...)."""
    try:
        return _compile(template).render(messages=check_messages(messages),
                                         add_generation_prompt=add_generation_prompt, **special)
    except TemplateError as e:
        raise ChatError(f"the model's chat template failed: {e}") from None


def plain_prompt(messages: list[dict]) -> str:
    """The Shakespeare layout: each message "ROLE:\\n<content>\\n\\n", then "ASSISTANT:\\n"."""
    return "".join(f"{m['role'].upper()}:\n{m['content']}\n\n" for m in check_messages(messages)) + "ASSISTANT:\n"


def chat_text(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> tuple[str, tuple[str, ...]]:
    """(the prompt text, the stop strings a reply ends at): the tokenizer's own template if it has one (its
    end-of-turn token then ends the reply), else the Shakespeare layout (a blank line ends it)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return plain_prompt(messages), (PLAIN_STOP,)
    inv = tokenizer.inverse
    special = {"bos_token": inv.get(tokenizer.bos, ""), "eos_token": inv.get(tokenizer.eos, "")}
    return render(template, messages, add_generation_prompt, **special), ()
