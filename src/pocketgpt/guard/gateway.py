"""The gateway: every tool call an agent makes goes through Gateway.call (or await Gateway.acall).

Checks, in order, each with the id of the rule that decides: the request is well formed (input.*), the
agent exists and holds the tool (agent.*), the tool has an implementation (tool.unregistered), the
arguments fit the policy (args.*; a failed check is denied or, where the argument says so, sent to
approval), a rate limit has room (rate_limits[i]), no argument that must be trusted carries an untrusted
label (flow.untrusted:ARG; denied or sent to approval as the argument or the tool says), a call made after
the agent read untrusted data in this task gets what the tool's `untrusted_context` says (flow.context), and
tools marked for approval get it (approval.required). An allowed call runs; its result comes back labelled
with the tool's output source (or per field, field_sources), after the injection scanner has looked at every
string in it; when the policy withholds a flagged output, or the output cannot be read (a cycle), the result
says "withheld": the tool ran, its output was not passed on. Anything unexpected denies; nothing raises out
of call() for bad input. Every decision goes to the audit log when there is one.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pocketgpt.guard import addresses, scanner
from pocketgpt.guard.approval import ApprovalRequest, Approver, shown_args
from pocketgpt.guard.audit import AuditLog
from pocketgpt.guard.policy import TYPES, ArgRule, Policy, ToolPolicy
from pocketgpt.guard.taint import TRUSTED, Tainted, fully_labelled, plain, sources


class GuardError(Exception):
    pass


@dataclass(frozen=True)
class Decision:
    action: str  # allow | deny | approve (needs a human)
    rule: str
    reason: str = ""


@dataclass(frozen=True)
class Result:
    decision: str  # allow | deny | error (the tool raised) | withheld (the tool ran, its output was not passed on)
    rule: str
    reason: str = ""
    value: Tainted | None = None
    findings: tuple = ()

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"


Sets = dict[str, Callable[[], Any] | Any]


class _Snapshot:
    """The run-time sets as one check reads them: each read from the application's state at most once per check
    (a callable is called then: the state may have changed since the last), strings case-folded."""

    def __init__(self, sets: Sets | None):
        self.sets, self.read = sets or {}, {}

    def members(self, name: str) -> set:
        if name not in self.read:
            if name not in self.sets:
                raise KeyError(f"no set {name!r} given to the gateway")
            found = self.sets[name]() if callable(self.sets[name]) else self.sets[name]
            self.read[name] = {_folded(x) for x in found}
        return self.read[name]


def _folded(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _listed(allowed: list | str, sets: _Snapshot) -> set:
    return sets.members(allowed) if isinstance(allowed, str) else {_folded(a) for a in allowed}


def _value_check(rule: ArgRule, value: Any, sets: _Snapshot) -> str | None:
    """The first value check (enum onwards) a scalar fails."""
    if rule.enum is not None and _folded(value) not in _listed(rule.enum, sets):
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
        if rule.domains is not None:
            allowed = sets.members(rule.domains) if isinstance(rule.domains, str) else rule.domains
            if not addresses.in_domains(addresses.host(value), allowed):
                return "domains"
        if rule.recipients is not None and value.casefold() not in _listed(rule.recipients, sets):
            return "recipients"
        if rule.paths is not None and not addresses.in_paths(value, rule.paths, rule.root):
            return "paths"
    elif any(x is not None for x in (rule.max_length, rule.pattern, rule.domains, rule.recipients, rule.paths)):
        return "type"
    return None


def check_arg(rule: ArgRule, value: Any, sets: Sets | _Snapshot | None = None) -> str | None:
    """The name of the first check the value fails, or None. A list meets the rule's `items` element by element,
    or, without `items`, the rule's value checks element by element; a dict meets its `fields`."""
    sets = sets if isinstance(sets, _Snapshot) else _Snapshot(sets)
    if value is None and rule.nullable:
        return None
    if not isinstance(value, TYPES[rule.type]) or (isinstance(value, bool) and rule.type in ("integer", "number")):
        return "type"
    if isinstance(value, list | tuple):
        if rule.max_items is not None and len(value) > rule.max_items:
            return "max_items"
        for item in value:
            failed = check_arg(rule.items, item, sets) if rule.items else _element_check(rule, item, sets)
            if failed:
                return failed
        return None
    if isinstance(value, dict) and rule.fields is not None:
        for key, item in value.items():
            if key not in rule.fields:
                return "fields"
            failed = check_arg(rule.fields[key], item, sets)
            if failed:
                return failed
        return "fields" if any(f.required and k not in value for k, f in rule.fields.items()) else None
    return _leaf_check(rule, value, sets)


def _element_check(rule: ArgRule, value: Any, sets: _Snapshot) -> str | None:
    """What a list's element (of any type) fails of the rule's value checks when the rule has no `items`: a nested
    list element by element."""
    if isinstance(value, list | tuple):
        for item in value:
            failed = _element_check(rule, item, sets)
            if failed:
                return failed
        return None
    return _leaf_check(rule, value, sets)


def _leaf_check(rule: ArgRule, value: Any, sets: _Snapshot) -> str | None:
    """The value checks of anything but a list. A dict without `fields` fails max_length, pattern and paths as a
    type and passes when the rule has none of them nor enum, domains or recipients, which it meets as a scalar."""
    if isinstance(value, dict) and rule.enum is None and rule.domains is None and rule.recipients is None:
        return None if all(x is None for x in (rule.max_length, rule.pattern, rule.paths)) else "type"
    return _value_check(rule, value, sets)


def _in_trusted_set(tp: ToolPolicy, name: str, value: Any, sets: _Snapshot) -> bool:
    """Whether an untrusted argument passes anyway: its rule's trusted_or_in set holds every leaf of it."""
    rule = tp.args.get(name)
    if rule is None or rule.trusted_or_in is None:
        return False
    members = sets.members(rule.trusted_or_in)
    leaves = _leaves(plain(value))
    return bool(leaves) and all(_folded(x) in members for x in leaves)


def _leaves(value: Any) -> list:
    """The scalar leaves of a value (dict keys included)."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _leaves(k) + _leaves(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _leaves(v)]
    return [value]


class Gateway:
    def __init__(self, policy: Policy, tools: dict[str, Callable], approver: Approver | None = None,
                 audit: AuditLog | str | None = None, clock: Callable[[], float] = time.monotonic,
                 sets: Sets | None = None):
        """sets: the run-time sets the policy names (a set, a list, or a function returning one, read from
        trusted state on each check: the user's contacts, the payees paid before)."""
        missing = sorted(policy.sets() - set(sets or {}))
        if missing:
            raise GuardError(f"the policy reads the set {missing[0]!r}, which was not given (Gateway(sets=...))")
        self.policy, self.tools, self.approver, self.clock = policy, dict(tools), approver, clock
        self.sets = dict(sets or {})
        self.audit = AuditLog(audit) if isinstance(audit, str) else audit
        self.calls: dict[tuple, deque] = defaultdict(deque)
        self.lock = threading.Lock()
        self.trusted_sources = TRUSTED | set(policy.trusted_sources)
        self.context: set[str] = set()  # the sources of everything the agent read in this task
        self.plan: dict | None = None  # the task's plan (begin_task)

    def begin_task(self, plan: dict[str, dict] | None = None) -> None:
        """A new user task: what the agent read before no longer counts as its context (flow.context). The context
        and the plan belong to the gateway: tasks that run at the same time need a gateway each.

        plan (optional, as CaMeL derives one from the user's request before any tool output is read): the
        tools the task may call, each with the arguments whose values the user fixed, {"send_email": {"to":
        ["bob@example.com"]}, "read_inbox": {}}; a value is a list of the allowed values. During the task, a call
        to a tool outside the plan, or with a planned argument outside its values, goes to approval
        (plan.unplanned, plan.ARG)."""
        self.context = set()
        self.plan = None if plan is None else {t: {a: [_folded(v) for v in (vs if isinstance(vs, list) else [vs])]
                                                   for a, vs in args.items()} for t, args in plan.items()}

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
        approvals = []  # checks that failed where the argument sends a failure to a human
        sets = _Snapshot(self.sets)  # each run-time set read once for this call
        for name, rule in tp.args.items():
            if name not in args:
                if rule.required:
                    return Decision("deny", f"args.missing:{name}", f"{tool} needs {name!r}")
                continue
            failed = check_arg(rule, values[name], sets)
            if failed:
                found = Decision(rule.on_fail, f"args.{name}.{failed}", f"{tool}({name}=...) fails the {failed} check")
                if rule.on_fail == "deny":
                    return found
                approvals.append(found)
        for limit in p.rate_limits:
            if limit.agent in ("*", agent) and limit.tool in ("*", tool):
                window = self.calls[(limit.id, agent, tool)]
                now = self.clock()
                while window and window[0] <= now - limit.per_seconds:
                    window.popleft()
                if len(window) >= limit.max_calls:
                    return Decision("deny", limit.id, f"more than {limit.max_calls} calls in {limit.per_seconds:g} s")
        for name, value in args.items():
            if tp.must_be_trusted(name) and not self._trusted(value) and not _in_trusted_set(tp, name, value, sets):
                found = ", ".join(sorted(sources(value))) or "no label"
                rule = tp.args.get(name)
                action = rule.on_untrusted if rule is not None and rule.on_untrusted else tp.untrusted
                decision = Decision(action, f"flow.untrusted:{name}", f"{name} carries untrusted data ({found})")
                if action == "deny":
                    return decision
                approvals.append(decision)
        planned = self._plan_decision(tool, values)
        if planned is not None:
            approvals.append(planned)
        context = self._context_decision(tp, args)
        if context is not None:
            if context.action == "deny":
                return context
            approvals.append(context)
        if approvals:
            return approvals[0]
        if tp.approval:
            return Decision("approve", "approval.required", f"{tool} always needs approval")
        return Decision("allow", "allow")

    def _trusted(self, value: Any) -> bool:
        found = sources(value)
        if not found:
            return self.policy.unlabeled == "trusted" or fully_labelled(value)  # an empty list holds no data
        return found <= self.trusted_sources and (self.policy.unlabeled == "trusted" or fully_labelled(value))

    def _plan_decision(self, tool: str, values: dict) -> Decision | None:
        """plan.*: approval for a call the task's plan does not name, or with a planned argument off the plan."""
        if self.plan is None:
            return None
        if tool not in self.plan:
            return Decision("approve", "plan.unplanned", f"{tool} is not in the task's plan")
        for name, allowed in self.plan[tool].items():
            given = values.get(name)
            leaves = _leaves(given) if isinstance(given, list | tuple | dict) else [given]
            if not leaves or any(_folded(x) not in allowed for x in leaves):
                return Decision("approve", f"plan.{name}", f"{tool}({name}=...) is not what the task's plan names")
        return None

    def _context_decision(self, tp: ToolPolicy, args: dict) -> Decision | None:
        """flow.context: the tool's untrusted_context action, when the agent has read untrusted data in this task
        (and, unless context_applies = "always", none of the call's arguments is trusted)."""
        if tp.untrusted_context == "allow":
            return None
        read = self.context - self.trusted_sources
        if not read:
            return None
        if tp.context_applies != "always" and any(self._trusted(v) for v in args.values()):
            return None
        return Decision(tp.untrusted_context, "flow.context",
                        f"{tp.name} called after reading untrusted data ({', '.join(sorted(read))}) "
                        "with no trusted argument" if tp.context_applies != "always" else
                        f"{tp.name} called after reading untrusted data ({', '.join(sorted(read))})")

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
        return self._record(agent, tool, args, self._after_run(tool, output, decision.rule))

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
        return self._record(agent, tool, args, self._after_run(tool, output, decision.rule))

    def user_input(self, text: str, agent: str = "user") -> Result:
        """Label the user's text as trusted after scanning it (a hit is flagged or denied, as the policy says)."""
        if not isinstance(text, str):
            return Result("deny", "input.type", "user input must be a string")
        found = scanner.scan(text)
        if found.score >= self.policy.scanner_threshold and self.policy.scanner_inputs == "deny":
            denied = Result("deny", "scan.input", ", ".join(found.rules), findings=found.findings)
            return self._record(agent, "user_input", {"text": text}, denied)
        return Result("allow", "allow", value=Tainted(text, frozenset({"user"})), findings=found.findings)

    def _after_run(self, tool: str, output: Any, rule: str) -> Result:
        """The result of a call that ran: its output scanned and labelled, or withheld (never an exception)."""
        try:
            return self._wrap_output(tool, output, rule)
        except scanner.Unreadable as e:
            return Result("withheld", "tool.output", f"{tool} ran; its output was withheld: {e}")
        except Exception as e:  # a bug must not pass an output on unchecked, nor lose the audit record
            return Result("withheld", "internal", f"{tool} ran; its output was withheld: {type(e).__name__}: {e}")

    def _wrap_output(self, tool: str, output: Any, rule: str) -> Result:
        tp = self.policy.tools[tool]
        source = "policy" if tp.trusted_output else tp.output_source
        found = scanner.scan_value(output)
        if found.score >= self.policy.scanner_threshold:
            action = self.policy.scanner_outputs
            if action == "deny":
                return Result("withheld", "scan.output", f"{tool} ran; its output was withheld as an injection: "
                              f"{', '.join(found.rules)}", findings=found.findings)
            if action == "strip":
                output = scanner.strip_value(output)
        if tp.field_sources:
            used: set[str] = set()
            value = _label(output, source, tp.field_sources, used)
        else:
            value, used = Tainted(output, frozenset({source})), {source}
        self.context |= used
        return Result("allow", rule, value=value, findings=found.findings)

    def _approve(self, agent: str, tool: str, args: dict, decision: Decision) -> Decision:
        if self.approver is None:
            return Decision("deny", decision.rule, decision.reason + "; no approver configured")
        try:
            request = ApprovalRequest(agent, tool, plain(args), decision.reason,
                                      shown=shown_args(self.policy.tools[tool], plain(args)), rule=decision.rule)
            ok = self.approver.approve(request)
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


def _label(value: Any, source: str, field_sources: dict[str, str], used: set[str]) -> Any:
    """An output labelled leaf by leaf: a dict field named in field_sources (at any depth) by its own source,
    everything else by the tool's; `used` collects the sources given."""
    if isinstance(value, dict):
        return {k: _label(v, field_sources.get(k, source) if isinstance(k, str) else source, field_sources, used)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_label(v, source, field_sources, used) for v in value]
    used.add(source)
    return Tainted(value, frozenset({source}))
