"""Where pipeline runs happen when an operation asks for one.

``InlineJobs`` (the CLI without the API) runs them in the foreground with live progress.
``BackgroundJobs`` (owned by the API app, never a module global) runs at most ``CVG_API_MAX_RUNS`` at a
time on threads (Ray does the heavy work in its own processes) and keeps each job's status, progress and
summary for ``GET /pipelines/jobs/{id}``. Kubernetes triggers only create objects, so they run inline.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import threading
from collections.abc import Callable
from typing import Any

from convergence.platform.errors import ConvergenceError, NotFound, PolicyViolation


def _run(family: str, cfg: Any, principal: Any, project: str, trigger: dict[str, Any] | None,
         progress: Callable[[str, str, str], None] | None, ray_address: str | None = None) -> dict[str, Any]:
    from convergence.pipelines import run_language, run_trading

    runner = run_language if family == "language" else run_trading
    return runner(cfg, principal=principal, progress=progress, project=project, trigger=trigger,
                  ray_address=ray_address)


class InlineJobs:
    """Runs now, in this process; ``progress(step, state, detail)`` sees each step."""

    local = True  # the caller's own machine: files it names are its own

    def __init__(self, progress: Callable[[str, str, str], None] | None = None, kube: dict[str, Any] | None = None,
                 ray_address: str | None = None):
        self.progress, self.kube, self.ray_address = progress, kube or {}, ray_address

    def run(self, *, family: str, cfg: Any, principal: Any, project: str,
            trigger: dict[str, Any] | None) -> dict[str, Any]:
        summary = _run(family, cfg, principal, project, trigger, self.progress, self.ray_address)
        return {"id": None, "family": family, "status": summary["status"], "run_id": summary["run_id"],
                "summary": summary, "progress": [], "error": None}

    def get(self, job_id: int) -> dict[str, Any]:
        raise NotFound(f"no pipeline job {job_id}: jobs live on the API server (set CVG_API_URL)")

    def retrain(self, *, name: str, alert_ids: list[int], principal: Any, kubernetes: bool) -> dict[str, Any]:
        from convergence.pipelines import retrain_after_alerts

        return retrain_after_alerts(name=name, alert_ids=alert_ids, principal=principal, kubernetes=kubernetes,
                                    progress=self.progress, api=self.kube or None)

    def trigger(self, *, family: str, principal: Any, overrides: dict[str, Any] | None) -> dict[str, Any]:
        from convergence.pipelines import trigger_run

        return trigger_run(family=family, requested_by=principal, overrides=overrides, **self.kube)


@dataclasses.dataclass
class _Job:
    id: int
    family: str
    requested_by: str
    status: str = "queued"
    run_id: int | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    progress: list[dict[str, str]] = dataclasses.field(default_factory=list)
    started_at: str = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())
    finished_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class BackgroundJobs(InlineJobs):
    """Pipeline runs on threads of the API server, at most ``max_active`` at once."""

    local = False  # the API server: a path in a request names the server's files, never read

    def __init__(self, max_active: int, kube: dict[str, Any] | None = None) -> None:
        super().__init__(None, kube)
        self.max_active = max_active
        self._jobs: dict[int, _Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def _admit(self, family: str, principal: Any) -> _Job:
        with self._lock:
            active = [j for j in self._jobs.values() if j.status in ("queued", "running")]
            if self.max_active == 0:
                raise PolicyViolation("this server does not run pipelines (CVG_API_MAX_RUNS=0)",
                                      hint="trigger them on Kubernetes: `cvg pipelines trigger FAMILY --kubernetes`")
            if len(active) >= self.max_active:
                raise PolicyViolation(f"{len(active)} pipeline run(s) already in progress on this server "
                                      f"(job {active[0].id}); at most {self.max_active} at once",
                                      hint="try again when it ends, or trigger the run on Kubernetes")
            job = _Job(next(self._ids), family, principal.name)
            self._jobs[job.id] = job
            return job

    def run(self, *, family: str, cfg: Any, principal: Any, project: str,
            trigger: dict[str, Any] | None) -> dict[str, Any]:
        data = cfg.to_dict().get("data", {}) if family == "trading" else {}
        if data.get("source") == "csv" or data.get("path"):
            raise PolicyViolation("a run on the API server reads the data shipped with it, not a file path from a "
                                  "request (data.source=csv / data.path)",
                                  hint="run it where the file is: `cvg pipelines run` without CVG_API_URL")
        job = self._admit(family, principal)

        def progress(step: str, state: str, detail: str) -> None:
            job.progress.append({"step": step, "state": state, "detail": detail})

        def work() -> None:
            job.status = "running"
            try:
                summary = _run(family, cfg, principal, project, trigger, progress)
                job.summary, job.run_id, job.status = summary, summary.get("run_id"), summary["status"]
            except ConvergenceError as exc:
                job.status, job.error = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - recorded on the job; the server keeps serving
                job.status, job.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
            finally:
                job.finished_at = dt.datetime.now(dt.timezone.utc).isoformat()

        threading.Thread(target=work, name=f"cvg-job-{job.id}", daemon=True).start()
        return job.to_dict()

    def get(self, job_id: int) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no pipeline job {job_id} on this server (jobs are kept until it restarts)")
        return job.to_dict()

    def retrain(self, *, name: str, alert_ids: list[int], principal: Any, kubernetes: bool) -> dict[str, Any]:
        if kubernetes:
            return super().retrain(name=name, alert_ids=alert_ids, principal=principal, kubernetes=True)
        from convergence import governance as gov
        from convergence.platform.db import session_scope

        with session_scope(write=False) as s:  # the job runs the production version's own family
            family = gov.production_family(session=s, name=name)
        job = self._admit(family, principal)
        job.status = "running"

        def work() -> None:
            try:
                result = super(BackgroundJobs, self).retrain(name=name, alert_ids=alert_ids, principal=principal,
                                                             kubernetes=False)
                job.run_id, job.status, job.summary = result.get("run_id"), result.get("status", "succeeded"), result
            except Exception as exc:  # noqa: BLE001 - recorded on the job
                job.status, job.error = "failed", str(exc) if isinstance(exc, ConvergenceError) else repr(exc)
            finally:
                job.finished_at = dt.datetime.now(dt.timezone.utc).isoformat()

        threading.Thread(target=work, name=f"cvg-job-{job.id}", daemon=True).start()
        return {"job": job.id, "status": "running"}
