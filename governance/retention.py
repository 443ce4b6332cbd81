"""Retention: the public surface, read as ``retention.apply(...)``, ``retention.set_policy(...)``.

How long each class of record is kept (prediction log, drift reports, usage, artifacts of ended versions),
never below the legal minimum configured for it, and deleting only what has expired, audited.
"""

from convergence.governance._retention import CLASSES, RecordClass, apply, minimum_days, policies, set_policy

__all__ = [
    "CLASSES",
    "RecordClass",
    "apply",
    "minimum_days",
    "policies",
    "set_policy",
]
