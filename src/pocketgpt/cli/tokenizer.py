"""`pocketgpt tokenizer train`: a GPT-2-style byte-level BPE learnt from a text file."""

from __future__ import annotations

import time
from pathlib import Path

from pocketgpt.cli.common import Parser, UsageError, finish, positive_int, progress_bar
from pocketgpt.data import BUILTIN, read_text
from pocketgpt.tokenizers.bpe import train_bpe


def add(sub) -> None:
    k = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    ksub = k.add_subparsers(dest="action", required=True, parser_class=Parser)
    kt = ksub.add_parser("train", help="learn GPT-2-style byte-level BPE merges from a text file",
                         description="Train a byte-level BPE (GPT-2's format: vocab.json + merges.txt); "
                         "use it with `pocketgpt train --tokenizer DIR`.")
    kt.add_argument("data", metavar="FILE", help=f"a UTF-8 text file, or {', '.join(BUILTIN)}")
    kt.add_argument("--vocab-size", dest="vocab_size", type=positive_int, required=True,
                    help="tokens in the vocabulary: 256 bytes, the merges and <|endoftext|> (at least 257)")
    kt.add_argument("--out", required=True, help="folder for vocab.json and merges.txt")
    kt.add_argument("--force", action="store_true", help="replace a tokenizer already in --out")
    kt.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    kt.set_defaults(parser=kt)
    k.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.out)
    if not args.force and any((out / name).exists() for name in ("vocab.json", "merges.txt")):
        raise UsageError(f"{out} already holds a tokenizer; pass --force to replace it")
    text, _ = read_text(args.data)
    start = time.perf_counter()
    with progress_bar("learning merges", "merge") as progress:
        tok = train_bpe(text, args.vocab_size, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out)
    n_tokens = len(tok.encode(text))
    result = {"vocab_size": tok.vocab_size, "merges": len(tok.merges), "tokens": n_tokens,
              "chars_per_token": len(text) / n_tokens, "seconds": time.perf_counter() - start, "out": str(out)}
    return finish(f"trained a byte-level BPE of {tok.vocab_size} tokens on {args.data}: "
                  f"{result['chars_per_token']:.2f} characters per token -> {out}/vocab.json, merges.txt",
                  result, args.json)
