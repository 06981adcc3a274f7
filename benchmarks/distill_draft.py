"""Sequence-level distillation of a speculative draft: sample text from the target, fine-tune the draft on it.

    python benchmarks/distill_draft.py out/target out/draft out/draft-distilled

The draft then predicts what the target would say rather than what Shakespeare said, which is what
speculative decoding rewards. Sequences start from 16 training-text tokens, continue for 112 tokens at
temperature 0.8 (generated in batches of 100), and the draft trains on them with the target's tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from pocketgpt.generate import Sampling, generate_batch
from pocketgpt.train import TRAIN_DEFAULTS, load_checkpoint, load_dataset, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("draft")
    ap.add_argument("out")
    ap.add_argument("--sequences", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=800)
    args = ap.parse_args()

    target_ckpt = load_checkpoint(args.target)
    target, tok = target_ckpt.model(), target_ckpt.tokenizer
    source = load_dataset(target_ckpt.data.get("data", "shakespeare"), "text", tok)
    starts = np.random.default_rng(0).integers(0, len(source.train) - 16, args.sequences)
    prompts = [list(source.train[s:s + 16]) for s in starts]
    outs = generate_batch(target, prompts, max_new_tokens=112, sampling=Sampling(0.8), seeds=list(range(len(prompts))),
                          slots=100)
    text = "\n".join(tok.decode(p + o) for p, o in zip(prompts, outs))
    corpus = Path(f"{args.out}.distill.txt")  # kept: the checkpoint names it as its data
    corpus.write_text(text, encoding="utf-8")
    data = load_dataset(str(corpus), "text", tok)
    draft = load_checkpoint(args.draft).model()
    settings = dataclasses.replace(TRAIN_DEFAULTS["shakespeare-cpu"], steps=args.steps, eval_interval=0,
                                   warmup=50, lr=5e-4)
    result = train(draft, data, settings, out=args.out)
    print(f"{len(text):,} characters sampled; draft validation loss on them {result['val_loss']:.4f} -> {args.out}")


if __name__ == "__main__":
    main()
