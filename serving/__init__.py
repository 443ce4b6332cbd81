"""Serving: BentoML services for approved models, adaptive batching inside the service, kill switch,
batched prediction logging, Prometheus metrics.

Finds models only through the governance registry (approved or production versions, SHA-256 checked);
reads their artifacts through the model contract (governance.contract), never the training code. BentoML and
torch load only when serving.
"""

from convergence.serving._check import check_servable, known_servers, record_server, serve_command
from convergence.serving._process import ServerProcess, free_port

__all__ = ["ServerProcess", "check_servable", "free_port", "known_servers", "record_server", "serve_command"]
