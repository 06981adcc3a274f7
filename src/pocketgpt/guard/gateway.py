"""The gateway: every tool call an agent makes goes through Gateway.call (or await Gateway.acall).

Checks, in order, each with the id of the rule that decides: the request is well formed (input.*), the
agent exists and holds the tool (agent.*), the tool has an implementation (tool.unregistered), the
arguments fit the policy (args.*), a rate limit has room (rate_limits[i]), no argument that must be
trusted carries an untrusted label (flow.untrusted:ARG; denied or sent to approval as the tool says),
and tools marked for approval get it (approval.required). An allowed call runs; its result comes back as a
Tainted value labelled with the tool's output source, after the injection scanner has looked at it
(scan.output when the policy denies flagged outputs). Anything unexpected denies; nothing raises out of
call() for bad input. Every decision goes to the audit log when there is one.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import posixpath
import threading
import time
import urllib.parse
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pocketgpt.guard import scanner
from pocketgpt.guard.approval import ApprovalRequest, Approver
from pocketgpt.guard.audit import AuditLog
from pocketgpt.guard.policy import TYPES, ArgRule, Policy
from pocketgpt.guard.taint import Tainted, plain, sources


class GuardError(Exception):
    pass


@dataclass(frozen=True)
class Decision:
    action: str  # allow | deny | approve (needs a human)
    rule: str
    reason: str = ""


@dataclass(frozen=True)
class Result:
    decision: str  # allow | deny | error (the tool raised)
    rule: str
    reason: str = ""
    value: Tainted | None = None
    findings: tuple = ()

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


def _host(value: str) -> str | None:
    if "://" in value:
        return (urllib.parse.urlsplit(value).hostname or "").lower() or None
    if value.count("@") == 1:
        return value.rsplit("@", 1)[1].lower() or None
    return None


def _in_domains(host: str | None, domains: list[str]) -> bool:
    return host is not None and any(host == d.lower() or host.endswith("." + d.lower()) for d in domains)


def _in_paths(value: str, prefixes: list[str]) -> bool:
    if not value.startswith("/") or "\x00" in value or ".." in value.split("/"):
        return False
    norm = posixpath.normpath(value)
    return any(norm == p.rstrip("/") or norm.startswith(p.rstrip("/") + "/") for p in prefixes)


def check_arg(rule: ArgRule, value: Any) -> str | None:
    """The name of the first check the value fails, or None."""
    if not isinstance(value, TYPES[rule.type]) or (isinstance(value, bool) and rule.type in ("integer", "number")):
        return "type"
    if rule.enum is not None and value not in rule.enum:
        return "enum"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value != value or (rule.min is not None and value < rule.min):  # NaN fails too
            return "min"
        if rule.max is not None and value > rule.max:
            return "max"
    if isinstance(value, str):
        if rule.max_length is not None and len(value) > rule.max_length:
            return "max_length"
        if rule.pattern is not None and not rule.pattern.fullmatch(value):
            return "pattern"
        if rule.domains is not None and not _in_domains(_host(value), rule.domains):
            return "domains"
        if rule.recipients is not None and value.lower() not in {r.lower() for r in rule.recipients}:
            return "recipients"
        if rule.paths is not None and not _in_paths(value, rule.paths):
            return "paths"
    elif any(x is not None for x in (rule.max_length, rule.pattern, rule.domains, rule.recipients, rule.paths)):
        return "type"
    return None


class Gateway:
    def __init__(self, policy: Policy, tools: dict[str, Callable], approver: Approver | None = None,
                 audit: AuditLog | str | None = None, clock: Callable[[], float] = time.monotonic):
        self.policy, self.tools, self.approver, self.clock = policy, dict(tools), approver, clock
        self.audit = AuditLog(audit) if isinstance(audit, str) else audit
        self.calls: dict[tuple, deque] = defaultdict(deque)
        self.lock = threading.Lock()

    # ------------------------------------------------------------------------- deciding

    def check(self, agent: Any, tool: Any, args: Any) -> Decision:
        """The policy's and the data-flow rules' decision on a call, without running it or counting it."""
        try:
            return self._check(agent, tool, args)
        except Exception as e:  # a bug or an input nobody foresaw must not let a call through
            return Decision("deny", "internal", f"{type(e).__name__}: {e}")

    def _check(self, agent, tool, args) -> Decision:
        p = self.policy
        if not isinstance(agent, str) or not isinstance(tool, str) or not isinstance(args, dict):
            return Decision("deny", "input.type", "agent and tool must be strings and args a dict")
        if not all(isinstance(k, str) for k in args):
            return Decision("deny", "input.type", "argument names must be strings")
        if agent not in p.agents:
            return Decision("deny", "agent.unknown", f"no agent {agent!r} in the policy")
        if tool not in p.agents[agent].tools:
            return Decision("deny", "agent.tool-not-granted", f"{agent} does not hold {tool}")
        if tool not in self.tools:
            return Decision("deny", "tool.unregistered", f"{tool} has no implementation")
        values = plain(args)
        try:
            size = len(json.dumps(values, default=str, allow_nan=False).encode("utf-8"))
        except (ValueError, TypeError, RecursionError):
            return Decision("deny", "args.encoding", "arguments must be JSON-serializable")
        if size > p.max_arg_bytes:
            return Decision("deny", "args.size", f"arguments of {size} bytes exceed {p.max_arg_bytes}")
        tp = p.tools[tool]
        for name in args:
            if name not in tp.args:
                return Decision("deny", f"args.unknown:{name}", f"{tool} takes no argument {name!r}")
        for name, rule in tp.args.items():
            if name not in args:
                if rule.required:
                    return Decision("deny", f"args.missing:{name}", f"{tool} needs {name!r}")
                continue
            failed = check_arg(rule, values[name])
            if failed:
                return Decision("deny", f"args.{name}.{failed}", f"{tool}({name}=...) fails the {failed} check")
        for limit in p.rate_limits:
            if limit.agent in ("*", agent) and limit.tool in ("*", tool):
                window = self.calls[(limit.id, agent, tool)]
                now = self.clock()
                while window and window[0] <= now - limit.per_seconds:
                    window.popleft()
                if len(window) >= limit.max_calls:
                    return Decision("deny", limit.id, f"more than {limit.max_calls} calls in {limit.per_seconds:g} s")
        for name, value in args.items():
            if tp.must_be_trusted(name) and not self._trusted(value):
                found = ", ".join(sorted(sources(value))) or "no label"
                return Decision("approve" if tp.untrusted == "approve" else "deny", f"flow.untrusted:{name}",
                                f"{name} carries untrusted data ({found})")
        if tp.approval:
            return Decision("approve", "approval.required", f"{tool} always needs approval")
        return Decision("allow", "allow")

    def _trusted(self, value: Any) -> bool:
        found = sources(value)
        if not found:
            return self.policy.unlabeled == "trusted"
        return Tainted(None, found).trusted and (self.policy.unlabeled == "trusted" or _fully_labelled(value))

    # ------------------------------------------------------------------------- calling

    def call(self, agent: str, tool: str, args: dict) -> Result:
        decision = self.check(agent, tool, args)
        if decision.action == "approve":
            decision = self._approve(agent, tool, args, decision)
        if decision.action != "allow":
            return self._record(agent, tool, args, Result("deny", decision.rule, decision.reason))
        self._count(agent, tool)
        try:
            output = self.tools[tool](**plain(args))
        except Exception as e:
            return self._record(agent, tool, args, Result("error", "tool.error", f"{type(e).__name__}: {e}"))
        return self._record(agent, tool, args, self._wrap_output(tool, output, decision.rule))

    async def acall(self, agent: str, tool: str, args: dict) -> Result:
        decision = self.check(agent, tool, args)
        if decision.action == "approve":
            decision = await asyncio.to_thread(self._approve, agent, tool, args, decision)
        if decision.action != "allow":
            return self._record(agent, tool, args, Result("deny", decision.rule, decision.reason))
        self._count(agent, tool)
        fn = self.tools[tool]
        try:
            output = await fn(**plain(args)) if inspect.iscoroutinefunction(fn) else \
                await asyncio.to_thread(fn, **plain(args))
        except Exception as e:
            return self._record(agent, tool, args, Result("error", "tool.error", f"{type(e).__name__}: {e}"))
        return self._record(agent, tool, args, self._wrap_output(tool, output, decision.rule))

    def user_input(self, text: str, agent: str = "user") -> Result:
        """Label the user's text as trusted after scanning it (a hit is flagged or denied, as the policy says)."""
        if not isinstance(text, str):
            return Result("deny", "input.type", "user input must be a string")
        found = scanner.scan(text)
        if found.score >= self.policy.scanner_threshold and self.policy.scanner_inputs == "deny":
            denied = Result("deny", "scan.input", ", ".join(found.rules), findings=found.findings)
            return self._record(agent, "user_input", {"text": text}, denied)
        return Result("allow", "allow", value=Tainted(text, frozenset({"user"})), findings=found.findings)

    def _wrap_output(self, tool: str, output: Any, rule: str) -> Result:
        tp = self.policy.tools[tool]
        label = frozenset({"policy" if tp.trusted_output else tp.output_source})
        text = output if isinstance(output, str) else json.dumps(output, default=str)
        found = scanner.scan(text)
        if found.score >= self.policy.scanner_threshold:
            action = self.policy.scanner_outputs
            if action == "deny":
                return Result("deny", "scan.output", f"{tool}'s output looks like an injection: "
                              f"{', '.join(found.rules)}", findings=found.findings)
            if action == "strip" and isinstance(output, str):
                output = scanner.strip(output, found)
        return Result("allow", rule, value=Tainted(output, label), findings=found.findings)

    def _approve(self, agent: str, tool: str, args: dict, decision: Decision) -> Decision:
        if self.approver is None:
            return Decision("deny", decision.rule, decision.reason + "; no approver configured")
        try:
            ok = self.approver.approve(ApprovalRequest(agent, tool, plain(args), decision.reason))
        except Exception as e:
            return Decision("deny", decision.rule, f"approval failed: {e}")
        return Decision("allow", decision.rule) if ok else Decision("deny", decision.rule, "not approved")

    def _count(self, agent: str, tool: str) -> None:
        now = self.clock()
        with self.lock:
            for limit in self.policy.rate_limits:
                if limit.agent in ("*", agent) and limit.tool in ("*", tool):
                    self.calls[(limit.id, agent, tool)].append(now)

    def _record(self, agent: str, tool: str, args: Any, result: Result) -> Result:
        if self.audit is not None:
            self.audit.append(str(agent), str(tool), result.decision, result.rule,
                              plain(args) if isinstance(args, dict) else {"args": repr(args)[:200]})
        return result


def _fully_labelled(value: Any) -> bool:
    """True when every leaf of value sits inside some Tainted (so no part of it arrived unlabelled)."""
    if isinstance(value, Tainted):
        return True
    if isinstance(value, dict):
        return all(_fully_labelled(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_fully_labelled(v) for v in value)
    return False
