"""The inventory: agents, the tools each holds with their argument rules, the models behind them, and, given
an audit log, which granted tools an agent never used (over-privilege: candidates to take away)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pocketgpt.guard.policy import ArgRule, Policy


def inventory(policy: Policy, log: str | Path | None = None) -> dict:
    used: Counter = Counter()
    if log is not None:
        for line in Path(log).read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                used[(record["agent"], record["tool"])] += 1
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    agents = []
    for agent in policy.agents.values():
        tools = []
        for name in agent.tools:
            tp = policy.tools[name]
            rules = {a: _rule(r) for a, r in tp.args.items()}
            tools.append({"tool": name, "sensitive": tp.sensitive, "approval": tp.approval, "args": rules,
                          "calls": used[(agent.name, name)] if log is not None else None})
        unused = [t["tool"] for t in tools if t["calls"] == 0] if log is not None else []
        agents.append({"agent": agent.name, "models": agent.models, "tools": tools, "unused_tools": unused})
    return {"policy": policy.source, "agents": agents, "tools": sorted(policy.tools),
            "over_privileged": [a["agent"] for a in agents if a["unused_tools"]]}


def _rule(rule: ArgRule) -> dict:
    """An argument rule as plain data: the keys that differ from their defaults, nested rules included."""
    default = ArgRule(rule.name)
    out = {}
    for key, value in vars(rule).items():
        if key == "name" or value == getattr(default, key):
            continue
        if key == "pattern":
            value = value.pattern
        elif key == "items":
            value = _rule(value)
        elif key == "fields":
            value = {k: _rule(v) for k, v in value.items()}
        out[key] = value
    return out


def render(inv: dict) -> str:
    lines = [f"policy {inv['policy']}: {len(inv['agents'])} agents, {len(inv['tools'])} tools"]
    for a in inv["agents"]:
        lines.append(f"- {a['agent']} (models: {', '.join(a['models']) or 'none listed'})")
        for t in a["tools"]:
            flags = [f for f, on in (("sensitive", t["sensitive"]), ("approval", t["approval"])) if on]
            calls = "" if t["calls"] is None else f", {t['calls']} calls"
            marks = f" [{', '.join(flags)}]" if flags else ""
            lines.append(f"    {t['tool']}({', '.join(t['args'])}){marks}{calls}")
        if a["unused_tools"]:
            lines.append(f"    OVER-PRIVILEGED: never used {', '.join(a['unused_tools'])}")
    return "\n".join(lines)
