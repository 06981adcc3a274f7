"""The VLA slice end to end: expert demonstrations, behaviour cloning, evaluation on held-out seeds.

    python benchmarks/vla.py [--write-readme]

For BabyAI-GoToLocal-v0 and BabyAI-GoToObj-v0: collect the expert bot's episodes (training seeds 0...),
train the patch + instruction policy with `pocketgpt.vla.policy.train_policy` (its wall time is reported),
then evaluate on 500 seeds from 1,000,000 on: the policy, the same policy with its instruction blanked,
random actions and the expert bot, at a 16-step budget and at the environment's own limit.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

from pocketgpt.vla.env import collect  # noqa: E402
from pocketgpt.vla.policy import evaluation_table, train_policy  # noqa: E402

# episodes, training steps, peak learning rate.
RUNS = {"BabyAI-GoToLocal-v0": (10000, 6000, 1e-3), "BabyAI-GoToObj-v0": (1500, 3000, 1e-3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=500, help="evaluation episodes per row")
    ap.add_argument("--write-readme", action="store_true")
    args = ap.parse_args()

    rows = ["| environment | agent | success, 16 steps (95% CI) | success, the environment's limit (95% CI) |",
            "| --- | --- | --- | --- |"]
    notes = []
    for env, (episodes, steps, lr) in RUNS.items():
        start = time.perf_counter()
        demos = collect(env, episodes)
        collect_s = time.perf_counter() - start
        policy, info = train_policy(demos, steps=steps, lr=lr, log=lambda r, env=env: print(env, r, flush=True))
        table = evaluation_table(env, policy, args.episodes, budget=16)
        by_agent: dict[str, list] = {}
        for r in table:
            by_agent.setdefault(r["agent"], []).append(r)
        for agent, (short, full) in by_agent.items():
            cells = [f"{r['success']:.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})" for r in (short, full)]
            rows.append(f"| {env} | {agent} | {cells[0]} | {cells[1]} (limit {full['budget']}) |")
            print(rows[-1], flush=True)
        notes.append(f"{env}: {episodes} expert episodes ({info['samples']} steps, collected in {collect_s:.0f} s), "
                     f"{steps} training steps of 64 at lr {lr:g} in {info['seconds'] / 60:.1f} minutes "
                     f"on this 2-core CPU (final loss {info['final_loss']:.3f}).")
    report("vla", rows + [""] + notes + [f"{args.episodes} evaluation episodes per row, seeds from 1,000,000 "
                                         "(training used seeds from 0)."], args.write_readme)


if __name__ == "__main__":
    main()
