"""The pipeline runner shared by every family: run records, heartbeats, steps, Ray.

A run is recorded before any work starts and closed exactly once: by the pipeline's own
registration transaction on success, or here with the error on failure. A background heartbeat
keeps the record fresh; the next start marks runs whose heartbeat went stale (a SIGKILLed
process) as failed. Every step runs inside the user-code boundary and is timed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from convergence.pipelines import _progress
from convergence.pipelines._boundary import step_boundary, unwrap_ray_error
from convergence.platform.db import session_scope
from convergence.platform.errors import BudgetExceeded, ConvergenceError, Unavailable
from convergence.platform.settings import get_settings

if TYPE_CHECKING:
    from convergence.governance import Principal

Progress = Callable[[str, str, str], None]  # (step, "start" | "running" | "done" | "failed", detail)


class _Ticker(threading.Thread):
    """While a step runs, says every ``interval_s`` how long it has been running and what its workers last
    told the progress board (epoch, step, loss): a Ray Train teacher is minutes of silence otherwise."""

    def __init__(self, step: str, progress: Progress, interval_s: float, board: Callable[[], Any]) -> None:
        super().__init__(name=f"cvg-progress-{step}", daemon=True)
        self.step, self.progress, self.interval_s, self.board = step, progress, interval_s, board
        self.stopped, self.t0 = threading.Event(), time.perf_counter()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                told = _progress.read(self.board(), self.step)
                if self.stopped.is_set():
                    return
                self.progress(self.step, "running",
                              f"{time.perf_counter() - self.t0:.0f} s so far" + (f" · {told}" if told else ""))
            except Exception:  # noqa: BLE001 - a progress display must never fail the step
                return


def _quiet(step: str, state: str, detail: str) -> None:
    pass


@dataclasses.dataclass
class RunContext:
    run_id: int
    principal: Principal
    workdir: Path
    progress: Progress
    project: str = "default"
    family: str | None = None
    metering: bool = False
    board: Any = None  # where workers tell their epoch/step/loss (pipelines._progress); set once Ray is up
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    finished: bool = False

    @contextlib.contextmanager
    def step(self, name: str, detail: str = "") -> Iterator[None]:
        """Run a step inside the boundary; meter it, record its usage, then enforce budgets."""
        from convergence.platform.energy import Meter

        from convergence.platform.settings import get_settings

        self.progress(name, "start", detail)
        t0 = time.perf_counter()
        meter = Meter().start() if self.metering else None
        ticker = _Ticker(name, self.progress, get_settings().progress_interval_s, lambda: self.board)
        ticker.start()
        try:
            with step_boundary(name):
                yield
        except BaseException as exc:
            ticker.stopped.set()
            self._record(name, meter)  # a failed step still used what it used
            self.progress(name, "failed", str(exc))
            raise
        ticker.stopped.set()
        self.timings[name] = round(time.perf_counter() - t0, 3)
        exceeded = self._record(name, meter)
        told = _progress.read(self.board, name)  # the last epoch/step and loss its workers told
        self.progress(name, "done", f"{self.timings[name]:.1f} s" + (f" · {told}" if told else ""))
        if exceeded:
            raise BudgetExceeded(f"stopped after step {name}: " + "; ".join(exceeded),
                                 hint="completed steps and their usage are kept; raise the budget to run again")

    @contextlib.contextmanager
    def on_ray(self, address: str | None) -> Iterator[None]:
        """The ``connect_ray`` step, then the steps inside on Ray with a progress board their workers can
        reach; the board goes, and a Ray this run started is shut down, when they end."""
        with self.step("connect_ray"):
            started_ray = connect_ray(address)
            self.board = _progress.open_board()
        try:
            yield
        finally:
            _progress.close(self.board)
            self.board = None
            if started_ray:
                import ray

                ray.shutdown()

    def close(self, session: Any, *, verdict: dict[str, Any], versions: dict[str, int], evidence_sha256: str) -> None:
        """Close the run in the registration transaction: succeeded with its versions, or gates_failed with why."""
        from convergence import governance as gov

        if verdict["passed"]:
            gov.finish_run(session=session, principal=self.principal, run_id=self.run_id,
                           summary={"versions": versions, "evidence_sha256": evidence_sha256})
        else:
            gov.finish_run(session=session, principal=self.principal, run_id=self.run_id, status="gates_failed",
                           error="; ".join(verdict["failed"]),
                           summary={"failed": verdict["failed"], "evidence_sha256": evidence_sha256})
        self.finished = True

    def _record(self, step: str, meter: Any) -> list[str]:
        if meter is None:
            return []
        from convergence import governance as gov

        reading = meter.stop()
        with session_scope() as session:
            gov.record_usage(session=session, project=self.project, reading=reading, run_id=self.run_id,
                             family=self.family, step=step, principal=self.principal)
            return gov.check_during(session=session, project=self.project, family=self.family, principal=self.principal)


class _Heartbeat(threading.Thread):
    def __init__(self, run_id: int, interval: float) -> None:
        super().__init__(name=f"cvg-heartbeat-{run_id}", daemon=True)
        self.run_id, self.interval, self.stop = run_id, interval, threading.Event()

    def run(self) -> None:
        from convergence.governance import heartbeat

        while not self.stop.wait(self.interval):
            with contextlib.suppress(ConvergenceError):  # a missed beat is retried; the run goes on
                with session_scope() as session:
                    heartbeat(session=session, run_id=self.run_id)


def _refuse_over_budget(*, pipeline: str, project: str, family: str | None, principal: Principal) -> None:
    """Before a run: its estimate (the last run's usage) must fit every active hard limit; refusals are audited."""
    from convergence import governance as gov

    with session_scope() as session:
        estimate = gov.estimate_run(session=session, project=project, pipeline=pipeline)
        try:
            gov.check_before(session=session, project=project, family=family, estimate=estimate)
        except BudgetExceeded as exc:
            gov.commit_refusal(session=session, principal=principal, action="run.refused",
                               subject=gov.Subject("pipeline", pipeline),
                               payload={"reason": exc.message, "estimate": estimate, "project": project})
            raise


@contextlib.contextmanager
def pipeline_run(*, pipeline: str, params: dict[str, Any], dataset_id: int | None, principal: Principal,
                 project: str = "default", family: str | None = None,
                 progress: Progress | None = None) -> Iterator[RunContext]:
    """Record a run (after failing stale ones and checking budgets), keep it alive, meter its steps,
    and close it as failed, or stopped by a budget, on any error."""
    from convergence import governance as gov

    settings = get_settings()
    with session_scope() as session:
        gov.fail_stale_runs(session=session, principal=principal, stale_after_s=settings.stale_after_s)
    _refuse_over_budget(pipeline=pipeline, project=project, family=family, principal=principal)
    with session_scope() as session:
        run = gov.start_run(session=session, principal=principal, pipeline=pipeline, params=params, dataset_id=dataset_id,
                            project=project)
    workdir = settings.home / "runs" / str(run.id)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(run.id, principal, workdir, progress or _quiet, project=project, family=family,
                     metering=settings.metering)
    beat = _Heartbeat(run.id, settings.heartbeat_interval_s)
    beat.start()
    try:
        yield ctx
    except BaseException as exc:
        if not ctx.finished:
            with session_scope() as session:
                gov.finish_run(session=session, principal=principal, run_id=run.id, error=str(exc)[:2000] or type(exc).__name__,
                               status="stopped" if isinstance(exc, BudgetExceeded) else "failed")
        raise
    finally:
        beat.stop.set()
        beat.join(timeout=5)


def connect_ray(address: str | None = None) -> bool:
    """Join ``address`` (or CVG_RAY_ADDRESS), else start local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or get_settings().ray_address
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 **({} if address else {"num_cpus": os.cpu_count() or 2}))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Unavailable(f"cannot connect to Ray at {address or 'a new local instance'}: {exc}",
                          hint="check --ray-address / CVG_RAY_ADDRESS, or omit it to start Ray locally") from exc
    return True


def ray_node() -> dict[str, str]:
    """Which Ray node runs the caller (its id and IP), for evidence of where a fold or a student trained;
    empty outside Ray."""
    import ray

    if not ray.is_initialized():
        return {}
    return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}


def fit_on_ray_train(loop: Callable[[dict[str, Any]], None], config: dict[str, Any], *, workers: int,
                     storage: Path, run_name: str, checkpoint_file: str = "teacher.safetensors") -> tuple[Any, dict[str, Any]]:
    """Run ``loop`` on Ray Train's TorchTrainer (GPUs when torch sees one, else a CPU per worker) and return
    the state dict rank 0 saved as ``checkpoint_file`` in its last checkpoint, with the last metrics."""
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = torch.cuda.is_available()
    trainer = TorchTrainer(loop, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                                        resources_per_worker=None if use_gpu else {"CPU": 1}),
                           run_config=RunConfig(storage_path=str(storage), name=run_name))
    result = trainer.fit()
    if result.error:
        raise result.error
    if result.checkpoint is None:
        from convergence.platform.errors import StepFailed

        raise StepFailed("Ray Train finished without a checkpoint", step="train_teacher")
    with result.checkpoint.as_directory() as d:
        from safetensors.torch import load_file  # tensors only: a checkpoint is data, never code

        state = load_file(os.path.join(d, checkpoint_file), device="cpu")
    return state, dict(result.metrics or {})


def report_checkpoint(metrics: dict[str, Any], model: Any, rank: int, checkpoint_file: str = "teacher.safetensors") -> None:
    """Inside a Ray Train loop: report ``metrics``; rank 0 attaches the (unwrapped) model's state dict."""
    import tempfile

    from ray import train
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            module = model.module if hasattr(model, "module") else model
            save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
                      os.path.join(d, checkpoint_file))
            checkpoint = train.Checkpoint.from_directory(d)
        train.report(metrics, checkpoint=checkpoint)


def ray_get_all(refs: list[Any], step: str) -> list[Any]:
    """ray.get that hands back our errors (or a StepFailed naming the step) instead of RayTaskError."""
    import ray

    try:
        return ray.get(refs)
    except Exception as exc:
        raise unwrap_ray_error(exc, step) from None
