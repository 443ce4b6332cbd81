"""Governed rollout, read as ``rollout.deploy(...)``, ``rollout.promote(...)``, ``rollout.rollback(...)``.

Shadow and canary deployments of an approved version beside its name's production version: starting one,
the guards that roll it back (judged by ``breaches``), what serving replicas report and poll, promotion once
the guards have held, and which split served at an instant.
"""

from convergence.governance._rollout import (
    DEFAULT_GUARDS,
    GUARDS,
    active_at,
    approval_seq,
    breaches,
    check_deployment,
    check_promoted,
    check_guards,
    current,
    deploy,
    promote,
    report,
    rollback,
    states,
    status,
    to_dict,
    totals,
    trip,
)

__all__ = [
    "DEFAULT_GUARDS",
    "GUARDS",
    "active_at",
    "approval_seq",
    "breaches",
    "check_deployment",
    "check_promoted",
    "check_guards",
    "current",
    "deploy",
    "promote",
    "report",
    "rollback",
    "states",
    "status",
    "to_dict",
    "totals",
    "trip",
]
