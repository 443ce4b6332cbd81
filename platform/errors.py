"""Errors raised by convergence.

Every error the product raises on purpose derives from ``ConvergenceError`` and carries the HTTP
status the API answers with and the exit code the CLI ends with; the CLI and the API map it in one
place each, so a user sees one precise line, never a traceback.

ConvergenceError                     exit  http
├── NotFound                          3    404  unknown model, dataset, run, event, file
├── InvalidInput                      2    422  bad shapes, NaNs, malformed times or JSON, bad flags
├── PolicyViolation                   4    403  self-approval, illegal stage change
│   └── BudgetExceeded                4    403  a compute or energy budget would be exceeded
├── IntegrityError                    5    409  audit chain broken, artifact hash mismatch, duplicates
├── Unavailable                       6    503  database unreachable, dependency missing, model killed
│   └── SchemaOutdated                6    503  database not at the migrations' head revision
└── StepFailed                        7    500  a pipeline step raised something that is not ours
"""

from __future__ import annotations

__all__ = [
    "BudgetExceeded",
    "ConvergenceError",
    "IntegrityError",
    "InvalidInput",
    "NotFound",
    "PolicyViolation",
    "SchemaOutdated",
    "StepFailed",
    "Unavailable",
]


class ConvergenceError(Exception):
    """Root of every error convergence raises deliberately."""

    http_status: int = 500
    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "message": self.message, "hint": self.hint}


class NotFound(ConvergenceError):
    http_status = 404
    exit_code = 3


class InvalidInput(ConvergenceError):
    http_status = 422
    exit_code = 2


class PolicyViolation(ConvergenceError):
    http_status = 403
    exit_code = 4


class BudgetExceeded(PolicyViolation):
    pass


class IntegrityError(ConvergenceError):
    http_status = 409
    exit_code = 5


class Unavailable(ConvergenceError):
    http_status = 503
    exit_code = 6


class SchemaOutdated(Unavailable):
    pass


class StepFailed(ConvergenceError):
    """A pipeline step raised a foreign exception; the original is the ``__cause__``."""

    http_status = 500
    exit_code = 7

    def __init__(self, message: str, *, step: str, hint: str | None = None) -> None:
        super().__init__(f"step {step!r} failed: {message}", hint=hint)
        self.step = step
