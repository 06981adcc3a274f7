"""`pocketgpt chat`: an interactive conversation with a chat model in the terminal, or one answer (-p).

Replies stream as they are written; the history is kept within the context by dropping the oldest turns
(never the system prompt); /reset forgets the conversation, /system TEXT sets the system prompt; Ctrl-C stops
the reply being written (not the program) and Ctrl-D leaves.
"""

from __future__ import annotations

import sys
from dataclasses import replace

from pocketgpt.cli.common import positive_int, unescape
from pocketgpt.cli.generation import add_sampling_args
from pocketgpt.generate import Request, Sampling, Sequence, TextStream, decode
from pocketgpt.generate.chat import fit_conversation
from pocketgpt.interop import load

REPLY_TOKENS = 512  # the most tokens one reply may take, unless told
CONTEXT = 4096  # the most positions a conversation keeps, unless told (the model's own context may be longer)


def add(sub) -> None:
    c = sub.add_parser("chat", help="talk with a chat model in the terminal (or answer once with -p)",
                       description="An interactive chat with a model, using its own chat template. Commands: /reset "
                       "(forget the conversation), /system TEXT (set the system prompt), /quit. Ctrl-C stops a reply, "
                       "Ctrl-D leaves.")
    c.add_argument("checkpoint", metavar="MODEL", help="a checkpoint folder, a GGUF file or a Hugging Face folder")
    c.add_argument("-p", "--prompt", help="answer this one message and exit (default: an interactive session)")
    c.add_argument("--system", help="the system prompt (default: the template's own, if any)")
    add_sampling_args(c)
    c.add_argument("--max-tokens", dest="max_new_tokens", type=positive_int, default=REPLY_TOKENS,
                   help=f"the most tokens of one reply (default {REPLY_TOKENS})")
    c.add_argument("--context", type=positive_int, default=CONTEXT, help=f"positions the conversation may fill, at "
                   f"most the model's context (default {CONTEXT})")
    c.set_defaults(func=run, parser=c)


class Chat:
    def __init__(self, ckpt, sampling: Sampling, max_new_tokens: int, context: int, system: str | None):
        self.model, self.tok, self.documents = ckpt.model(), ckpt.tokenizer, ckpt.documents
        self.sampling, self.max_new_tokens = sampling, max_new_tokens
        self.context = min(context, self.model.config.block_size)
        self.max_new_tokens = min(max_new_tokens, self.context - 1)
        self.system, self.history = system, []

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def reply(self, text: str, out) -> str:
        """Answer `text`, writing the reply to `out` as it comes; Ctrl-C ends it early. The turn is kept."""
        self.history.append({"role": "user", "content": text})
        kept, ids, stops = fit_conversation(self.tok, self.messages(), self.context - self.max_new_tokens,
                                            self.documents)
        self.history = kept[1:] if self.system else kept
        sampling = replace(self.sampling, stop=self.sampling.stop + stops)
        seq = Sequence(Request(tuple(ids), self.max_new_tokens, sampling, self.tok.stop_tokens))
        stream, pieces = TextStream(self.tok.decode, sampling.stop), []
        try:
            for token in decode(self.model, seq, cache=self.model.new_cache(1, size=self.context)):
                pieces.append(stream.push(token))
                out.write(pieces[-1])
                out.flush()
                if stream.stopped:
                    break
            pieces.append(stream.flush())
        except KeyboardInterrupt:
            pieces.append(" [stopped]")
        out.write(pieces[-1] + "\n")
        answer = "".join(pieces).removesuffix(" [stopped]")
        self.history.append({"role": "assistant", "content": answer})
        return answer


def run(args) -> int:
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed)
    chat = Chat(load(args.checkpoint), sampling, args.max_new_tokens, args.context,
                unescape(args.system) if args.system else None)
    if args.prompt is not None:
        chat.reply(unescape(args.prompt), sys.stdout)
        return 0
    print(f"chatting with {args.checkpoint}: /reset, /system TEXT, /quit; Ctrl-C stops a reply, Ctrl-D leaves",
          file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        if line.strip() in ("/quit", "/exit"):
            return 0
        if line.strip() == "/reset":
            chat.history = []
            print("(the conversation is forgotten)", file=sys.stderr)
        elif line.startswith("/system"):
            chat.system = line.removeprefix("/system").strip() or None
            print("(system prompt set)" if chat.system else "(the template's own system prompt)", file=sys.stderr)
        elif line.strip():
            chat.reply(line, sys.stdout)
