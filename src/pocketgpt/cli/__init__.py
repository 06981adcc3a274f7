"""`pocketgpt <command>`: a thin layer over the library, one module per command group.

Handlers parse flags into the library's own types (GPTConfig, TrainSettings, Sampling, QuantRecipe), call the
same functions a Python user calls, and print what they return. Every bad input ends as one line on stderr,
`pocketgpt <command>: error: ...`, and exit code 2: the library's errors name their fields, and this module
names the flags instead. Commands that report figures print, with --json, one JSON object on the last line.
"""

from __future__ import annotations

import sys

from pocketgpt import __version__
from pocketgpt.cli import chat, examine, generation, guard, interop, quant, tokenizer, train, vla
from pocketgpt.cli.common import Parser
from pocketgpt.errors import InputError, SettingsError
from pocketgpt.train import CheckpointExists

GROUPS = (train, generation, chat, examine, interop, quant, tokenizer, guard, vla)


def build_parser() -> Parser:
    p = Parser(prog="pocketgpt", description="A GPT you can read, train, shrink, serve and guard on a CPU.")
    p.add_argument("--version", action="version", version=f"pocketgpt {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in GROUPS:
        group.add(sub)
    return p


def flag_namer(parser):
    """field -> its flag in this command (--max-tokens for max_new_tokens), or the field's own name."""
    flags = {a.dest: a.option_strings[-1] for a in (parser._actions if parser else []) if a.option_strings}
    return lambda field: flags.get(field, field)


def message(e: Exception, parser) -> str:
    if isinstance(e, SettingsError):
        return e.named(flag_namer(parser))
    if isinstance(e, CheckpointExists):
        return f"{e}; pass --force to replace it"
    return str(e)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command
    parser = getattr(args, "parser", None)
    try:
        return args.func(args)
    except InputError as e:
        print(f"pocketgpt {command}: error: {message(e, parser)}", file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"pocketgpt {command}: error: out of memory{': ' + str(e) if str(e) else ''}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written (a file where a folder goes, permissions)
        print(f"pocketgpt {command}: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # training diverged
        print(f"pocketgpt {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        note = "; the last complete checkpoint is intact" if command == "train" else ""
        print(f"pocketgpt {command}: interrupted{note}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
