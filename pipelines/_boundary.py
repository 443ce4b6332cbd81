"""The user-code boundary around every pipeline step (after Dagster's ``user_code_error_boundary``).

Our own errors pass through unchanged; anything else becomes ``StepFailed(step=…)`` with the
original as ``__cause__``, so a failed Ray task says which step failed and why in one line.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from convergence.platform.errors import ConvergenceError, StepFailed

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def step_boundary(step: str) -> Iterator[None]:
    try:
        yield
    except ConvergenceError:
        raise
    except Exception as exc:
        raise StepFailed(f"{type(exc).__name__}: {exc}", step=step) from exc


def bounded(step: str) -> Callable[[F], F]:
    """Decorator form of ``step_boundary`` for functions that run as Ray tasks."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with step_boundary(step):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap


def unwrap_ray_error(exc: BaseException, step: str) -> BaseException:
    """Ray re-raises task errors wrapped in RayTaskError; give back ours, or a StepFailed naming the step."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ConvergenceError):
        return cause
    if isinstance(exc, ConvergenceError):
        return exc
    original = cause if isinstance(cause, BaseException) else exc
    err = StepFailed(f"{type(original).__name__}: {str(original).strip().splitlines()[-1] if str(original).strip() else ''}",
                     step=step)
    err.__cause__ = original
    return err
