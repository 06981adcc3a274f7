"""`pocketgpt sample` and `pocketgpt serve`: text from a model, printed as it comes or served over HTTP.
Sampling flags map one-to-one onto pocketgpt.generate.Sampling; draft flags onto make_draft."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pocketgpt.cli.common import (
    UsageError,
    count,
    defaults,
    emit_json,
    port,
    positive_float,
    positive_int,
    say,
    unescape,
)
from pocketgpt.generate import (
    Request,
    Sampling,
    Sequence,
    SpecStats,
    TextStream,
    default_length,
    encode_prompt,
    make_draft,
    run_sequence,
    speculate,
)
from pocketgpt.generate.sampling import MAX_TEMPERATURE
from pocketgpt.interop import load
from pocketgpt.model.gpt import CACHE_KINDS
from pocketgpt.serve import CONTEXT, MAX_BODY, MAX_QUEUE, PREFIX_CACHE, SLOTS


def add_sampling_args(p) -> None:
    s = Sampling()
    p.add_argument("--temperature", type=float, default=s.temperature,
                   help=f"0 is greedy, at most {MAX_TEMPERATURE:g} (default {s.temperature})")
    p.add_argument("--top-k", dest="top_k", type=positive_int, help="sample among the k likeliest tokens only "
                   "(default: all)")
    p.add_argument("--top-p", dest="top_p", type=float, help="sample from the smallest set holding this much "
                   "probability, in (0, 1] (default: all)")
    p.add_argument("--seed", type=int, help="a 64-bit seed, -1 for fresh randomness; sample i of --count uses "
                   "seed + i (default: fresh)")


def add_draft_args(p) -> None:
    d = p.add_mutually_exclusive_group()
    d.add_argument("--draft", metavar="DRAFT", help="speculative decoding with a smaller model of the same tokenizer")
    d.add_argument("--draft-quantized", dest="draft_quantized", action="store_true",
                   help="speculative decoding with a 4-bit copy of the model itself")
    d.add_argument("--draft-layers", dest="draft_layers", type=positive_int, metavar="N",
                   help="speculative decoding with the model's own first N layers and its head (layer skipping)")
    d.add_argument("--draft-ngram", dest="draft_ngram", action="store_true",
                   help="speculative decoding with n-gram lookup in the context (no draft model)")
    d.add_argument("--draft-url", dest="draft_url", metavar="URL",
                   help="speculative decoding with a draft served by `pocketgpt serve DRAFT --role draft` at URL, "
                   "in its own process")
    k = defaults(speculate)["k"]
    p.add_argument("--draft-k", dest="draft_k", type=positive_int, default=k, help=f"tokens drafted per round "
                   f"(default {k})")
    p.add_argument("--adaptive", action="store_true", help="choose each round's draft length (0 to 16) from the "
                   "measured acceptance and verification cost; --draft-k is then not used")


def add(sub) -> None:
    s = sub.add_parser("sample", help="generate text from a model", description="Generate text; prints tokens as "
                       "they arrive. Text-mode samples are separated by a line of ---.")
    s.add_argument("checkpoint", metavar="MODEL", help="a checkpoint folder, a GGUF file or a Hugging Face folder")
    s.add_argument("--count", type=positive_int, default=10, help="samples (default 10)")
    s.add_argument("--prompt", default="", help="text to continue, \\n for a newline (default: none)")
    add_sampling_args(s)
    s.add_argument("--max-tokens", dest="max_new_tokens", type=positive_int,
                   help="new tokens per sample (default: the context for documents, 256 for text)")
    s.add_argument("--kv-cache", dest="kv_cache", choices=CACHE_KINDS, default="float",
                   help="q4: keys and values stored in 4 bits, KIVI-style (default float)")
    s.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end a sample at this text (repeatable; \\n for a newline; default: none)")
    add_draft_args(s)
    s.add_argument("--json", action="store_true", help="print the samples (and speculative statistics) as JSON")
    s.set_defaults(func=run_sample, parser=s)

    v = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with continuous batching",
                       description="Serve a model over an OpenAI-compatible API (/v1/models, /v1/completions, "
                       "/v1/chat/completions, /health); needs the serve extra.")
    v.add_argument("checkpoint", metavar="MODEL", help="a checkpoint folder, a GGUF file or a Hugging Face folder")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    v.add_argument("--port", type=port, default=8000, help="port to listen on (default 8000)")
    v.add_argument("--name", help="the model id clients ask for (default: the checkpoint folder's name)")
    v.add_argument("--slots", type=positive_int, default=SLOTS, help=f"sequences decoded together (default {SLOTS})")
    v.add_argument("--context", type=positive_int, default=CONTEXT, help=f"positions each slot holds, at most the "
                   f"model's context (default {CONTEXT})")
    v.add_argument("--prefix-cache", dest="prefix_cache", type=count, default=PREFIX_CACHE, metavar="MB",
                   help="megabytes of keys and values of prompt openings kept for requests that start the same way, "
                   f"e.g. one system prompt; 0 turns it off; plain decoding only (default {PREFIX_CACHE})")
    v.add_argument("--max-queue", dest="max_queue", type=int, default=MAX_QUEUE,
                   help=f"requests that may wait for a slot before the server answers 429 (default {MAX_QUEUE})")
    v.add_argument("--api-key", dest="api_key", help="require Authorization: Bearer KEY on every path but /health "
                   "(default: none; prefer --api-key-file, which keeps the key out of the process list)")
    v.add_argument("--api-key-file", dest="api_key_file", help="the API key, on the file's first line")
    v.add_argument("--allowed-origins", dest="allowed_origins", default="", metavar="ORIGINS",
                   help="comma-separated web origins (e.g. https://app.example.com) whose pages may call the server, "
                   "or *; requests from other web pages are refused (default: none but the server's own)")
    v.add_argument("--max-body", dest="max_body", type=positive_int, default=MAX_BODY,
                   help=f"largest request body in bytes (default {MAX_BODY})")
    v.add_argument("--prune-to", dest="prune_to", type=positive_int, default=None, metavar="TOKENS",
                   help="a prompt longer than this (or than the context leaves room for) loses its passages least "
                   "relevant to its question instead of being refused (default: refused with 400)")
    v.add_argument("--request-timeout", dest="request_timeout", type=positive_float, default=None,
                   metavar="SECONDS", help="cancel a request that runs longer (default: none)")
    v.add_argument("--role", choices=("target", "draft"), default="target",
                   help="draft: answer /v1/draft for a target that runs with --draft-url, drafting with MODEL, or "
                   "with its first N layers (--draft-layers N) or 4-bit copy (--draft-quantized) (default target)")
    add_draft_args(v)
    v.set_defaults(func=run_serve, parser=v)


def draft_of(args, target):
    """The draft the flags ask for, or None."""
    if args.draft is not None:
        other = load(args.draft)
        return make_draft("model", model=other.model()), f"model {args.draft}", other.tokenizer
    if args.draft_quantized:
        return make_draft("quantized", target), "4-bit self", None
    if args.draft_layers:
        return make_draft("layers", target, layers=args.draft_layers), f"first {args.draft_layers} layers", None
    if args.draft_ngram:
        return make_draft("ngram"), "n-gram", None
    if args.draft_url:
        return (make_draft("remote", target, url=args.draft_url, on_failure=say), f"remote {args.draft_url}",
                None)
    return None, None, None


def check_draft_tokenizer(args, ckpt, draft_tokenizer) -> None:
    if draft_tokenizer is not None and draft_tokenizer.to_dict() != ckpt.tokenizer.to_dict():
        raise UsageError(f"--draft {args.draft} has another tokenizer than {args.checkpoint}")


def run_sample(args) -> int:
    ckpt = load(args.checkpoint)
    model, tok, documents = ckpt.model(), ckpt.tokenizer, ckpt.documents
    draft, kind, draft_tok = draft_of(args, model)
    check_draft_tokenizer(args, ckpt, draft_tok)
    if draft is not None and args.kv_cache != "float":
        raise UsageError("--kv-cache q4 applies to plain decoding, not to speculative decoding")
    stops = tuple(unescape(s) for s in args.stop)
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.seed, stops)
    prompt = tuple(encode_prompt(tok, unescape(args.prompt), documents))
    length = args.max_new_tokens or default_length(model.config.block_size, documents)
    stats = SpecStats() if draft is not None else None
    samples = []
    for i in range(args.count):
        seed = None if args.seed is None or args.seed == -1 else args.seed + i
        seq = Sequence(Request(prompt, length, replace(sampling, seed=seed), tok.stop_tokens))
        cache = None if draft is not None else model.new_cache(1, args.kv_cache)
        text, pieces = TextStream(tok.decode, stops), []
        if not args.json:
            print(("---\n" if i and not documents else "") + unescape(args.prompt), end="", flush=True)
        for token in run_sequence(model, seq, sliding=not documents, draft=draft, k=args.draft_k,
                                  adaptive=args.adaptive, cache=cache, stats=stats):
            pieces.append(text.push(token))
            if not args.json:
                print(pieces[-1], end="", flush=True)
            if text.stopped:
                break
        pieces.append(text.flush())
        samples.append("".join(pieces))
        if not args.json:
            print(pieces[-1])
    if stats is not None and not args.json:
        say(f"speculative ({kind}, {'adaptive k' if args.adaptive else f'k={args.draft_k}'}): {stats.summary()}")
    if args.json:
        emit_json({"samples": samples, **({"speculative": stats.to_dict()} if stats is not None else {})})
    return 0


def run_serve(args) -> int:
    try:
        import uvicorn

        import pocketgpt.serve.server  # noqa: F401 (Starlette, from the serve extra)
    except ImportError as e:
        raise UsageError(f"serving needs the serve extra (pip install 'pocketgpt[serve]'): {e}") from None

    if args.role == "draft" and any((args.draft, args.draft_ngram, args.draft_url)):
        raise UsageError("a draft server drafts with MODEL itself, its first N layers (--draft-layers) or its 4-bit "
                         "copy (--draft-quantized)")
    access = access_of(args)
    ckpt = load(args.checkpoint)
    model = ckpt.model()
    name = args.name or Path(args.checkpoint).resolve().name
    if args.role == "draft":
        from pocketgpt.serve.draft import DraftService, create_draft_app

        draft, kind, _ = draft_of(args, model)
        drafter = draft.model if draft is not None else model
        app = create_draft_app(DraftService(drafter, name), access)
        say(f"drafting with {name}{' (' + kind + ')' if draft else ''}, {drafter.num_params:,} parameters, at "
            f"http://{args.host}:{args.port}/v1/draft")
    else:
        app = target_app(args, ckpt, model, name, access)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except SystemExit as e:  # uvicorn exits when it cannot bind the address
        raise UsageError(f"could not listen on {args.host}:{args.port} (is the port in use?)") from e
    return 0


def access_of(args):
    """Who may call the server (pocketgpt.serve.access.Access), from the flags; UsageError for a key file that
    cannot be read or holds no key, and for a draft server given a key (its target would not send one)."""
    from pocketgpt.serve.access import Access

    if args.api_key is not None and args.api_key_file is not None:
        raise UsageError("give the API key once: --api-key or --api-key-file")
    key = args.api_key
    if args.api_key_file is not None:
        try:
            lines = Path(args.api_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the API key file {args.api_key_file}: {e}") from None
        key = lines[0] if lines else ""
    key = key.strip() if key is not None else None
    if key == "":
        raise UsageError("the API key is empty")
    if key is not None and args.role == "draft":
        raise UsageError("a draft server takes no API key (its target sends none); keep it on a loopback address")
    origins = tuple(o.strip().rstrip("/") for o in args.allowed_origins.split(",") if o.strip())
    return Access(key, origins, args.max_body, args.host)


def target_app(args, ckpt, model, name: str, access):
    """The OpenAI-compatible app over the model's batcher (speculative with a draft flag)."""
    from pocketgpt.generate import Batcher, PrefixCache, SpeculativeBatcher
    from pocketgpt.serve.server import Engine, create_app

    draft, kind, draft_tok = draft_of(args, model)
    check_draft_tokenizer(args, ckpt, draft_tok)
    batcher = (SpeculativeBatcher(model, draft, args.draft_k, args.adaptive, args.slots) if draft is not None
               else Batcher(model, args.slots, args.context, PrefixCache(args.prefix_cache << 20)
                            if args.prefix_cache else None))
    engine = Engine(model, ckpt.tokenizer, name, ckpt.documents, args.slots, args.max_queue, batcher,
                    args.request_timeout, args.prune_to)
    say(f"serving {name} ({model.num_params:,} parameters{', ' + kind + ' draft' if draft else ''}) "
        f"at http://{args.host}:{args.port}/v1 with {args.slots} slots")
    return create_app(engine, access)
