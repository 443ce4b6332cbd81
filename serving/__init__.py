"""Serving: BentoML services for approved models, adaptive batching inside the service, kill switch,
batched prediction logging, Prometheus metrics.

Finds models only through the governance registry (approved or production versions, SHA-256 checked);
reads their artifacts with the pipelines' format readers. BentoML and torch load only when serving.
"""

from convergence.serving._check import check_servable, serve_command

__all__ = ["check_servable", "serve_command"]
