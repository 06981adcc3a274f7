"""pocketgpt.guard: a tool-call gateway for agents, independent of the model that drives them.

Every call goes through Gateway.call(agent, tool, args): least privilege (which agent may call which tool),
argument rules, rate limits, data-flow rules on where argument values came from, injection scanning of
what tools return, human approval, and a hash-chained audit log. The red team (guard.redteam) attacks it.
Standard library only (YAML policies need PyYAML).
"""

from pocketgpt.guard.gateway import Decision, Gateway, GuardError
from pocketgpt.guard.policy import Policy, PolicyError, load_policy
from pocketgpt.guard.taint import Tainted

__all__ = ["Decision", "Gateway", "GuardError", "Policy", "PolicyError", "Tainted", "load_policy"]
