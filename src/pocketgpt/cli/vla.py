"""`pocketgpt vla`: collect BabyAI demonstrations, train a policy on them, evaluate it (the vla extra)."""

from __future__ import annotations

from pathlib import Path

from pocketgpt.cli.common import Parser, UsageError, defaults, emit_json, finish, positive_int, progress_bar
from pocketgpt.train import check_can_save, load_checkpoint, save_checkpoint
from pocketgpt.vla.env import collect
from pocketgpt.vla.policy import evaluation_table, train_policy

COLLECT, TRAIN, EVALUATE = defaults(collect), defaults(train_policy), defaults(evaluation_table)


def add(sub) -> None:
    x = sub.add_parser("vla", help="vision-language-action: collect demonstrations, train, evaluate (BabyAI)",
                       description="A pocketgpt transformer that reads the agent's view as 49 image patches plus "
                       "the instruction and emits an action; needs the vla extra (minigrid).")
    xs = x.add_subparsers(dest="vla_command", required=True, parser_class=Parser)
    xc = xs.add_parser("collect", help="record the BabyAI expert bot's episodes")
    c, t, e = COLLECT, TRAIN, EVALUATE
    xc.add_argument("--env", default=c["name"], help=f"the environment (default {c['name']})")
    xc.add_argument("--episodes", type=positive_int, default=c["episodes"],
                    help=f"episodes to record (default {c['episodes']})")
    xc.add_argument("--seed", type=int, default=c["seed_start"], help="first training seed; evaluation seeds start at "
                    f"1,000,000 (default {c['seed_start']})")
    xc.add_argument("--out", help="demonstrations file (default ENV-EPISODES.npz)")
    xc.add_argument("--force", action="store_true", help="replace an existing demonstrations file")
    xc.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    xc.set_defaults(parser=xc)
    xt = xs.add_parser("train", help="behaviour cloning on collected demonstrations")
    xt.add_argument("--data", required=True, help="a file from pocketgpt vla collect")
    xt.add_argument("--out", default="out/vla", help="the policy's checkpoint folder (default out/vla)")
    xt.add_argument("--steps", type=positive_int, default=t["steps"], help=f"training steps (default {t['steps']})")
    xt.add_argument("--batch-size", dest="batch_size", type=positive_int, default=t["batch_size"],
                    help=f"decisions per step (default {t['batch_size']})")
    xt.add_argument("--lr", type=float, default=t["lr"], help=f"peak learning rate (default {t['lr']:g})")
    xt.add_argument("--n-layer", dest="n_layer", type=positive_int, help="blocks (default: vla_config's, 2)")
    xt.add_argument("--n-embd", dest="n_embd", type=positive_int, help="channels (default: vla_config's, 128)")
    xt.add_argument("--n-head", dest="n_head", type=positive_int, help="attention heads (default: vla_config's, 16)")
    xt.add_argument("--seed", type=int, default=t["seed"], help=f"seed of the weights and the batches (default "
                    f"{t['seed']})")
    xt.add_argument("--force", action="store_true", help="replace an existing checkpoint at --out")
    xt.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    xt.set_defaults(parser=xt)
    xe = xs.add_parser("eval", help="success rate with 95%% CI on held-out seeds, with and without the instruction")
    xe.add_argument("checkpoint", metavar="CKPT", help="a policy from pocketgpt vla train")
    xe.add_argument("--env", help="default: the environment the policy was trained on")
    xe.add_argument("--episodes", type=positive_int, default=e["episodes"],
                    help=f"held-out episodes per row (default {e['episodes']})")
    xe.add_argument("--budget", type=positive_int, default=e["budget"], help=f"the short step budget (default "
                    f"{e['budget']}); the environment's own limit is always reported too")
    xe.add_argument("--no-baselines", dest="no_baselines", action="store_true",
                    help="skip the random-action and expert-bot rows")
    xe.add_argument("--json", action="store_true", help="print the rows as JSON")
    xe.set_defaults(parser=xe)
    x.set_defaults(func=run)


def run(args) -> int:
    try:
        from pocketgpt.vla import env as vla_env
        from pocketgpt.vla import policy as vla_policy

        vla_env.require_minigrid()
    except ImportError as e:
        raise UsageError(str(e)) from None
    if args.vla_command == "collect":
        out = Path(args.out or f"{args.env}-{args.episodes}.npz")
        if out.exists() and not args.force:
            raise UsageError(f"{out} exists; pass --force to replace it")
        with progress_bar(f"collecting {args.env}", "episode") as progress:
            demos = vla_env.collect(args.env, args.episodes, args.seed, progress=progress)
        demos.save(out)
        return finish(f"{args.episodes} expert episodes of {args.env} ({len(demos.actions)} steps, seeds "
                      f"{args.seed}-{args.seed + args.episodes - 1}) -> {out}",
                      {"env": args.env, "episodes": args.episodes, "steps": len(demos.actions), "out": str(out)},
                      args.json)
    if args.vla_command == "train":
        demos = vla_env.Demos.load(args.data)
        check_can_save(args.out, overwrite=args.force)
        arch = {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head") if getattr(args, k) is not None}
        with progress_bar("training the policy", "step") as progress:
            policy, info = vla_policy.train_policy(demos, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                                   seed=args.seed, on_step=lambda i: progress(i["step"], args.steps),
                                                   **arch)
        save_checkpoint(args.out, policy.checkpoint({"env": demos.env, "demos": str(args.data)}), overwrite=args.force)
        return finish(f"trained on {info['samples']} expert steps for {args.steps} steps in {info['seconds']:.0f} s, "
                      f"final loss {info['final_loss']:.4f} -> {args.out}", {**info, "out": str(args.out)}, args.json)
    ckpt = load_checkpoint(args.checkpoint)
    policy = vla_policy.VLAPolicy.from_checkpoint(ckpt)
    env_name = args.env or ckpt.data.get("env", "BabyAI-GoToLocal-v0")
    with progress_bar("evaluating", "row") as progress:
        rows = vla_policy.evaluation_table(env_name, policy, args.episodes, args.budget,
                                           baselines=not args.no_baselines, progress=progress)
    for r in rows:
        lo, hi = r["ci95"]
        print(f"{r['agent']:<26} budget {r['budget']:>3}: success {r['success']:.3f} (95% CI {lo:.3f}-{hi:.3f})")
    if args.json:
        emit_json({"env": env_name, "episodes": args.episodes, "rows": rows})
    return 0
