"""Serving: BentoML services for approved models, kill switch, prediction logging.

Loads models only through the governance registry, which checks approvals and artifact hashes.
"""

__all__: list[str] = []
