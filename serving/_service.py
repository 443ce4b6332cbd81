"""The BentoML services ``cvg serve`` starts: ``bentoml serve convergence.serving._service:Trading``.

Each service loads its model when BentoML starts the worker (which version: ``CVG_SERVE_MODEL`` /
``CVG_SERVE_VERSION``, set by ``cvg serve``), mounts the replica's ASGI app at ``/``, reports
readiness through ``__is_ready__`` (BentoML's ``/readyz``; ``/livez`` is BentoML's) and serves its own
Prometheus ``/metrics``. BentoML's tracing is excluded for the model routes and its access log and
traffic metrics are off: measured, they cost more than the model (bench/serving_bench.py: plain BentoML
batching against ours, in the README).
"""

from __future__ import annotations

from typing import Any

import bentoml

from convergence.serving._app import REPLICAS, build_app, start_replica

APP = build_app()
CONFIG: dict[str, Any] = {
    "metrics": {"enabled": False},  # ours replace BentoML's per-request traffic middleware
    "logging": {"access": {"enabled": False}},
    "tracing": {"excluded_urls": ["/predict", "/generate"]},
    "traffic": {"timeout": 60},
    "workers": 1,
}


def _still_production(version_id: int) -> bool:
    """Whether the version `cvg serve` pinned (or, for a compiled or INT8 copy, the version it was made from) is
    still its name's production version."""
    from convergence import governance as gov
    from convergence.platform.db import session_scope
    from convergence.serving._models import source_version

    with session_scope(write=False) as s:
        return source_version(gov.get_model(session=s, version_id=version_id)).stage == "production"


class _Replica:
    family = ""

    def __init__(self) -> None:
        from convergence.platform.settings import get_settings

        settings = get_settings()
        pinned = settings.serve_version
        if pinned and settings.serve_follow_rollouts and not _still_production(pinned):
            # a worker restarted after a rollout's promotion retired what `cvg serve` checked: follow the name
            pinned = None
        start_replica(self.family, name=settings.serve_model or None, version_id=pinned,
                      follow=settings.serve_follow_rollouts)

    def __is_ready__(self) -> bool:
        replica = REPLICAS.get(self.family)
        return bool(replica and replica.ready())

    @bentoml.on_shutdown
    def _close(self) -> None:
        replica = REPLICAS.pop(self.family, None)
        if replica:
            replica.close()


@bentoml.service(name="convergence-trading", **CONFIG)
@bentoml.asgi_app(APP, path="/")
class Trading(_Replica):
    family = "trading"


@bentoml.service(name="convergence-language", **CONFIG)
@bentoml.asgi_app(APP, path="/")
class Language(_Replica):
    family = "language"
