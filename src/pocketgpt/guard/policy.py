"""Policies: which agent may call which tool, with which arguments, how often, and what needs a human.

A policy is a TOML file (or YAML, with PyYAML installed), checked on load: an unknown key, a wrong type or
a bad regular expression is a PolicyError naming the file and the key. The shape:

    unlabeled = "untrusted"          # arguments without provenance labels count as untrusted (the default)
    max_arg_bytes = 65536            # larger arguments are refused
    trusted_sources = ["directory"]  # output sources trusted besides "user" and "policy"

    [scanner]                        # the injection scanner (guard.scanner)
    tool_outputs = "flag"            # flag | strip | deny a tool output that scores >= threshold
    user_inputs = "flag"             # flag | deny
    threshold = 0.5

    [agents.assistant]
    tools = ["read_inbox", "send_email"]
    models = ["pocketgpt/shakespeare"]       # for the inventory only

    [tools.send_email]
    sensitive = true                 # its arguments must be trusted unless an argument says trusted = false
    untrusted = "deny"               # deny | approve: what an untrusted value in a trusted-only argument gets
    approval = false                 # true: every call waits for a human
    output_source = "tool"           # the label its results carry (trusted_output = true: "policy")
    untrusted_context = "allow"      # allow | approve | deny: a call made after the agent read untrusted data
    context_applies = "no-trusted-argument"  # ... when none of its arguments is trusted, or "always"
    field_sources = { name = "directory" }   # output fields (dict keys, at any depth) labelled by their own source
    [tools.send_email.args.to]
    type = "string"                  # string | integer | number | boolean | list | object | any
    required = true
    domains = ["example.com"]        # e-mail addresses or web addresses must be in these domains (or under them)
    [tools.send_email.args.cc]
    type = "list"                    # each element meets the checks below (or those of an [items] table)
    max_items = 10
    recipients = "contacts"          # a string names a set the application fills at run time (Gateway(sets=))
    trusted_or_in = "contacts"       # an untrusted value passes the trust check if every element is in the set
    nullable = true                  # null (None) passes
    on_fail = "approve"              # deny | approve: what a failed check of this argument gets
    on_untrusted = "approve"         # deny | approve: overrides the tool's `untrusted` for this argument
    show = true                      # an approver sees the value (default: redacted, its type and length only)
    [tools.send_email.args.body]
    type = "string"
    max_length = 5000
    trusted = false                  # may carry text that came from tools

    [tools.send_email.args.attachments]
    type = "list"
    [tools.send_email.args.attachments.items]
    type = "object"                  # a dict whose keys are the fields below (unknown keys fail)
    [tools.send_email.args.attachments.items.fields.path]
    type = "string"
    required = true
    root = "/home/user"              # relative paths are under this root
    paths = ["docs"]


    [[rate_limits]]
    agent = "*"                      # an agent's name or *
    tool = "send_email"              # a tool's name or *
    max_calls = 10
    per_seconds = 60

Argument checks: type, required, nullable, enum, min, max, pattern (full match), max_length, domains, recipients
(allowed e-mail addresses), paths (allowed path prefixes, absolute or under `root`; ".." is refused), max_items,
items (the rule of each element of a list), fields (the rules of a dict's keys). The value checks of a rule
without `items` apply to each element of a list value. enum, domains and recipients take a list, or the name
of a set filled at run time (pocketgpt.guard.gateway.Gateway's `sets`).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "list": (list, tuple),
         "object": (dict,), "any": (object,)}
ACTIONS = ("deny", "approve")


class PolicyError(ValueError):
    pass


@dataclass
class ArgRule:
    name: str
    type: str = "any"
    required: bool = False
    enum: list | None = None
    min: float | None = None
    max: float | None = None
    pattern: re.Pattern | None = None
    max_length: int | None = None
    domains: list[str] | str | None = None  # a str names a run-time set
    recipients: list[str] | str | None = None
    paths: list[str] | None = None
    root: str | None = None
    trusted: bool | None = None  # None: the tool's `sensitive` decides
    nullable: bool = False
    max_items: int | None = None
    items: ArgRule | None = None
    fields: dict[str, ArgRule] | None = None
    trusted_or_in: str | None = None
    on_fail: str = "deny"
    on_untrusted: str | None = None  # None: the tool's `untrusted` decides
    show: bool = False  # whether an approver sees the value (otherwise its length and type only)

    def sets(self) -> set[str]:
        """The names of the run-time sets this rule and its nested rules read."""
        own = {v for v in (self.enum, self.domains, self.recipients, self.trusted_or_in) if isinstance(v, str)}
        nested = [self.items] if self.items else []
        nested += list((self.fields or {}).values())
        return own.union(*(r.sets() for r in nested))


@dataclass
class ToolPolicy:
    name: str
    args: dict[str, ArgRule] = field(default_factory=dict)
    sensitive: bool = False
    untrusted: str = "deny"
    approval: bool = False
    output_source: str = "tool"
    trusted_output: bool = False
    description: str = ""
    untrusted_context: str = "allow"
    context_applies: str = "no-trusted-argument"
    field_sources: dict[str, str] = field(default_factory=dict)

    def must_be_trusted(self, arg: str) -> bool:
        rule = self.args.get(arg)
        return self.sensitive if rule is None or rule.trusted is None else rule.trusted


@dataclass
class AgentPolicy:
    name: str
    tools: list[str]
    models: list[str] = field(default_factory=list)


@dataclass
class RateLimit:
    id: str
    agent: str
    tool: str
    max_calls: int
    per_seconds: float


@dataclass
class Policy:
    agents: dict[str, AgentPolicy]
    tools: dict[str, ToolPolicy]
    rate_limits: list[RateLimit] = field(default_factory=list)
    scanner_outputs: str = "flag"
    scanner_inputs: str = "flag"
    scanner_threshold: float = 0.5
    unlabeled: str = "untrusted"
    max_arg_bytes: int = 65536
    trusted_sources: list[str] = field(default_factory=list)
    source: str = "<dict>"

    def sets(self) -> set[str]:
        """The names of the run-time sets the policy's rules read."""
        return set().union(*(r.sets() for t in self.tools.values() for r in t.args.values()))


class _Reader:
    """Typed access to one table of the raw policy, with errors that name the key."""

    def __init__(self, table: Any, where: str, origin: str):
        if not isinstance(table, dict):
            raise PolicyError(f"{origin}: {where} must be a table")
        self.table, self.where, self.origin, self.used = table, where, origin, set()

    def get(self, key: str, kinds: tuple, default=None, choices=None):
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise PolicyError(f"{self.origin}: {self.where}.{key} must be {names} (got {value!r})")
        if choices is not None and value not in choices:
            raise PolicyError(f"{self.origin}: {self.where}.{key} must be one of {', '.join(choices)} (got {value!r})")
        return value

    def strings(self, key: str, or_set: bool = False) -> list[str] | str | None:
        """A list of strings (or_set: or one string, the name of a run-time set)."""
        value = self.get(key, (list, str) if or_set else (list,))
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise PolicyError(f"{self.origin}: {self.where}.{key} must be a list of strings")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise PolicyError(f"{self.origin}: unknown key {self.where}.{unknown[0]}")


def _arg_rule(name: str, raw: Any, where: str, origin: str) -> ArgRule:
    r = _Reader(raw, where, origin)
    enum = r.get("enum", (list, str))
    rule = ArgRule(name, type=r.get("type", (str,), "any", tuple(TYPES)), required=r.get("required", (bool,), False),
                   enum=enum, min=r.get("min", (int, float)), max=r.get("max", (int, float)),
                   max_length=r.get("max_length", (int,)), domains=r.strings("domains", or_set=True),
                   recipients=r.strings("recipients", or_set=True), paths=r.strings("paths"),
                   root=r.get("root", (str,)), trusted=r.get("trusted", (bool,)),
                   nullable=r.get("nullable", (bool,), False), max_items=r.get("max_items", (int,)),
                   trusted_or_in=r.get("trusted_or_in", (str,)), on_fail=r.get("on_fail", (str,), "deny", ACTIONS),
                   on_untrusted=r.get("on_untrusted", (str,), None, ACTIONS), show=r.get("show", (bool,), False))
    pattern = r.get("pattern", (str,))
    if pattern is not None:
        try:
            rule.pattern = re.compile(pattern)
        except re.error as e:
            raise PolicyError(f"{origin}: {where}.pattern is not a valid regular expression: {e}") from None
    if rule.root is not None and not rule.root.startswith("/"):
        raise PolicyError(f"{origin}: {where}.root must be an absolute path")
    if rule.paths and rule.root is None and not all(p.startswith("/") for p in rule.paths):
        raise PolicyError(f"{origin}: {where}.paths must be absolute (or give a root for relative ones)")
    items = r.get("items", (dict,))
    if items is not None:
        if rule.type not in ("list", "any"):
            raise PolicyError(f"{origin}: {where}.items needs type = \"list\"")
        rule.items = _arg_rule(name, items, f"{where}.items", origin)
    fields = r.get("fields", (dict,))
    if fields is not None:
        if rule.type not in ("object", "any"):
            raise PolicyError(f"{origin}: {where}.fields needs type = \"object\"")
        rule.fields = {k: _arg_rule(k, v, f"{where}.fields.{k}", origin) for k, v in fields.items()}
    r.done()
    return rule


def parse_policy(raw: dict, origin: str = "<dict>") -> Policy:
    top = _Reader(raw, "policy", origin)
    tools = {}
    for name, t in (top.get("tools", (dict,), {}) or {}).items():
        r = _Reader(t, f"tools.{name}", origin)
        args = {a: _arg_rule(a, spec, f"tools.{name}.args.{a}", origin)
                for a, spec in (r.get("args", (dict,), {}) or {}).items()}
        tools[name] = ToolPolicy(name, args, sensitive=r.get("sensitive", (bool,), False),
                                 untrusted=r.get("untrusted", (str,), "deny", ("deny", "approve")),
                                 approval=r.get("approval", (bool,), False),
                                 output_source=r.get("output_source", (str,), "tool"),
                                 trusted_output=r.get("trusted_output", (bool,), False),
                                 description=r.get("description", (str,), ""),
                                 untrusted_context=r.get("untrusted_context", (str,), "allow",
                                                         ("allow", *ACTIONS)),
                                 context_applies=r.get("context_applies", (str,), "no-trusted-argument",
                                                       ("no-trusted-argument", "always")),
                                 field_sources=r.get("field_sources", (dict,), {}))
        if not all(isinstance(v, str) for v in tools[name].field_sources.values()):
            raise PolicyError(f"{origin}: tools.{name}.field_sources must map field names to source names")
        r.done()
    agents = {}
    for name, a in (top.get("agents", (dict,), {}) or {}).items():
        r = _Reader(a, f"agents.{name}", origin)
        granted = r.strings("tools") or []
        missing = [t for t in granted if t not in tools]
        if missing:
            raise PolicyError(f"{origin}: agents.{name}.tools names {missing[0]!r}, which has no [tools.{missing[0]}]")
        agents[name] = AgentPolicy(name, granted, r.strings("models") or [])
        r.done()
    limits = []
    for i, lim in enumerate(top.get("rate_limits", (list,), []) or []):
        r = _Reader(lim, f"rate_limits[{i}]", origin)
        limit = RateLimit(f"rate_limits[{i}]", r.get("agent", (str,), "*"), r.get("tool", (str,), "*"),
                          r.get("max_calls", (int,), 0), float(r.get("per_seconds", (int, float), 0)))
        if limit.max_calls < 1 or limit.per_seconds <= 0:
            raise PolicyError(f"{origin}: rate_limits[{i}] needs max_calls >= 1 and per_seconds > 0")
        r.done()
        limits.append(limit)
    scan = _Reader(top.get("scanner", (dict,), {}) or {}, "scanner", origin)
    policy = Policy(agents, tools, limits,
                    scanner_outputs=scan.get("tool_outputs", (str,), "flag", ("flag", "strip", "deny")),
                    scanner_inputs=scan.get("user_inputs", (str,), "flag", ("flag", "deny")),
                    scanner_threshold=float(scan.get("threshold", (int, float), 0.5)),
                    unlabeled=top.get("unlabeled", (str,), "untrusted", ("trusted", "untrusted")),
                    max_arg_bytes=top.get("max_arg_bytes", (int,), 65536),
                    trusted_sources=top.strings("trusted_sources") or [], source=origin)
    scan.done()
    top.done()
    return policy


def load_policy(path: str | Path) -> Policy:
    """Read and check a policy file (.toml, or .yaml/.yml with PyYAML)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PolicyError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: not a policy file (not UTF-8 text: invalid byte at offset {e.start})") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise PolicyError(f"{path}: YAML policies need PyYAML (pip install pyyaml); TOML needs nothing") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PolicyError(f"{path}: not valid YAML: {e}") from None
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise PolicyError(f"{path}: not valid TOML: {e}") from None
    return parse_policy(raw if raw is not None else {}, str(path))
