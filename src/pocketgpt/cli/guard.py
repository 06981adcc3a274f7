"""`pocketgpt guard`: verify an audit log, list the inventory of agents and tools, run the red team."""

from __future__ import annotations

import sys

from pocketgpt.cli.common import Parser, UsageError, emit_json, fraction
from pocketgpt.data import read_text
from pocketgpt.guard import audit, inventory, policy, redteam


def add(sub) -> None:
    g = sub.add_parser("guard", help="the agent tool-call guard: verify an audit log, inventory, red team",
                       description="Tools for pocketgpt.guard, the tool-call gateway for agents.")
    gs = g.add_subparsers(dest="guard_command", required=True, parser_class=Parser)
    gv = gs.add_parser("verify", help="check an audit log's hash chain; exit 1 and name the place if broken")
    gv.add_argument("log", metavar="LOG", help="an audit log written by a Gateway")
    gv.add_argument("--key-file", dest="key_file", help="the file holding the key the log was written with "
                    "(AuditLog(path, key=...)): checks every record's MAC and the head's")
    gv.set_defaults(parser=gv)
    gi = gs.add_parser("inventory", help="agents, tools, permissions and models; unused tools given a log")
    gi.add_argument("policy", metavar="POLICY", help="a policy file (TOML or YAML)")
    gi.add_argument("--log", help="an audit log: flags agents holding tools they never used")
    gi.add_argument("--json", action="store_true", help="print the inventory as JSON")
    gi.set_defaults(parser=gi)
    gr = gs.add_parser("redteam", help="the built-in attack suite; exit 1 if attack success is above the limit")
    gr.add_argument("policy", metavar="POLICY", nargs="?", help="default: the shipped example policy")
    gr.add_argument("--max-attack-success", dest="max_attack_success", type=fraction,
                    default=redteam.MAX_ATTACK_SUCCESS, help="the share of attacks that may succeed with the guard "
                    f"before the run fails (default {redteam.MAX_ATTACK_SUCCESS})")
    gr.add_argument("--json", action="store_true", help="print the results as JSON")
    gr.set_defaults(parser=gr)
    g.set_defaults(func=run)


def run(args) -> int:
    if args.guard_command == "verify":
        key = None
        if args.key_file:
            try:
                key = open(args.key_file, "rb").read().strip()
            except OSError as e:
                raise UsageError(f"{args.key_file}: {e.strerror or e}") from None
            if not key:
                raise UsageError(f"{args.key_file}: the key file is empty")
        try:
            problems, last = audit.verify(args.log, key)
        except OSError as e:
            raise UsageError(f"{args.log}: {e.strerror or e}") from None
        if problems:
            for p in problems:
                print(f"{args.log}: {p}", file=sys.stderr)
            return 1
        checked = "its MACs checked with the key" if key else "unkeyed: hashes only, see AuditLog(path, key=...)"
        print(f"{args.log}: intact, {0 if last is None else last['seq'] + 1} records, {checked}")
        return 0
    try:
        pol = policy.load_policy(args.policy or redteam.EXAMPLE_POLICY)
    except policy.PolicyError as e:
        raise UsageError(e) from None
    if args.guard_command == "inventory":
        inv = inventory.inventory(pol, args.log)
        print(inventory.render(inv))
        if args.json:
            emit_json(inv)
        return 0
    lines = [line for line in read_text("shakespeare")[0].splitlines() if line.strip()]
    result = redteam.redteam(pol, benign_texts=lines)
    ok = result["attack_success_with_guard"] <= args.max_attack_success
    summary = (f"{result['attacks']} attacks over {result['domains']} domains: attack success "
               f"{100 * result['attack_success_with_guard']:.1f}% with the guard, "
               f"{100 * result['attack_success_without_guard']:.1f}% without; benign utility "
               f"{100 * result['benign_utility_with_guard']:.1f}% with, "
               f"{100 * result['benign_utility_without_guard']:.1f}% without; "
               f"{100 * result['approval_share_benign']:.1f}% of benign calls sent to approval; scanner detection "
               f"{100 * result['scanner_detection_rate']:.1f}%, false positives "
               f"{100 * result['scanner_false_positive_rate']:.2f}% of {result['benign_texts']} benign texts")
    print(summary if ok else summary + f" -- FAIL: attack success above {100 * args.max_attack_success:g}%")
    if args.json:
        emit_json(result)
    return 0 if ok else 1
