"""The configuration of tasks: ``[tasks]``, ``[roles.<name>]`` and ``[workflows.<type>]``.

Frozen dataclasses only; config.py parses and checks the file's tables into them (one parser
for the file and for a role changed at run time: ``config.validate_role``).  A config file that
defines no roles gets :func:`derived_roles` (the four shipped roles over every configured model),
and one that defines no workflows the four shipped ones (:data:`SHIPPED_WORKFLOWS`), so that tasks
work on any config; the embedded default and the shipped config.toml spell theirs out.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RoleConfig", "RoleEscalation", "SHIPPED_ROLES", "SHIPPED_WORKFLOWS", "TasksConfig", "by_price",
           "derived_roles", "price"]


@dataclass(frozen=True, slots=True)
class TasksConfig:
    """``[tasks]``: the defaults every role's escalation rules fall back to."""

    max_revisions: int = 2           # critic "revise" re-runs of a step before it escalates
    approval_threshold: float = 0.05  # USD: an escalation estimated above this waits for a person
    max_steps: int = 20              # safety bound on steps per task (runs + revisions + escalations)


@dataclass(frozen=True, slots=True)
class RoleEscalation:
    """``[roles.<name>.escalation]``; None: the ``[tasks]`` default applies."""

    cost_threshold: float | None = None
    max_revisions: int | None = None
    security_threshold: float = 0.8
    complexity_threshold: float = 0.7
    business_impact_threshold: float = 0.6


@dataclass(frozen=True, slots=True)
class RoleConfig:
    """``[roles.<name>]``: the model a role's steps run on, the models it may escalate to, its
    preferences (each step agent's ``timeout``, and its calls' ``temperature`` and ``max_tokens``,
    the latter below the model's own cap; a submission's preferences for the role come first)."""

    name: str
    default_model: str
    models: tuple[str, ...]          # allowed models (always holds default_model)
    capabilities: tuple[str, ...] = ()
    temperature: float = 0.7
    max_tokens: int = 2000
    timeout: float = 300.0
    escalation: RoleEscalation = field(default_factory=RoleEscalation)
    constraints: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    enabled: bool = True
    review: bool = False             # its steps end with a verdict (default: true for a role named critic)


# Kyros's four task types and the roles they pass through, in order.
SHIPPED_WORKFLOWS: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    "implementation": ("architect", "implementer", "critic", "integrator"),
    "review": ("critic", "integrator"),
    "design": ("architect", "critic", "integrator"),
    "testing": ("implementer", "critic"),
})
# name -> capabilities of the shipped roles
SHIPPED_ROLES: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    "architect": ("system_design", "interface_design", "planning"),
    "implementer": ("code_implementation", "test_creation", "bug_fixes", "documentation_updates"),
    "critic": ("code_review", "security_review", "acceptance_check"),
    "integrator": ("integration", "release_notes", "merge_preparation"),
})


def price(model: Any) -> float:
    """A model's price for ordering: input + output USD per 1k tokens (a ``ModelConfig``, or
    its checked table while the config is being loaded)."""
    if isinstance(model, Mapping):
        return float(model.get("input_per_1k", 0.0)) + float(model.get("output_per_1k", 0.0))
    return float(model.input_per_1k) + float(model.output_per_1k)


def by_price(aliases: tuple[str, ...] | list[str], models: Mapping[str, Any]) -> tuple[str, ...]:
    """``aliases`` cheapest first (input + output price); ties keep their order."""
    return tuple(sorted(aliases, key=lambda a: price(models[a]) if a in models else float("inf")))


def derived_roles(models: Mapping[str, Any]) -> Mapping[str, RoleConfig]:
    """The shipped roles for a config that names none: each may use every configured model,
    cheapest first, and starts on the cheapest."""
    allowed = by_price(list(models), models)
    if not allowed:
        return types.MappingProxyType({})
    return types.MappingProxyType({name: RoleConfig(name=name, default_model=allowed[0], models=allowed,
                                                    capabilities=caps, review=name == "critic")
                                   for name, caps in SHIPPED_ROLES.items()})
