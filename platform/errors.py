"""Errors raised by convergence.

Every error the product raises on purpose derives from ``ConvergenceError`` and carries the HTTP
status the API answers with and the exit code the CLI ends with; the CLI and the API map it in one
place each, so a user sees one precise line, never a traceback.

ConvergenceError                     exit  http
├── NotFound                          3    404  unknown model, dataset, run, event, file
├── InvalidInput                      2    422  bad shapes, NaNs, malformed times, bad flags
│   ├── MalformedRequest              2    400  a body that is not JSON, a header that cannot be read
│   ├── PayloadTooLarge               2    413  a body or batch over the configured limit
│   └── UnsafeArtifact                2    422  a model file that is not a safe artifact (pickle, wrong format)
├── Unauthenticated                   8    401  no credentials, or a token or API key that is not valid
├── PolicyViolation                   4    403  illegal stage change, budget exceeded, rule refused
│   ├── Forbidden                     4    403  a role or separation-of-duties rule refused (``rule``)
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
    "Forbidden",
    "IntegrityError",
    "InvalidInput",
    "MalformedRequest",
    "NotFound",
    "PayloadTooLarge",
    "PolicyViolation",
    "SchemaOutdated",
    "StepFailed",
    "Unauthenticated",
    "Unavailable",
    "UnsafeArtifact",
    "error_class",
]


class ConvergenceError(Exception):
    """Root of every error convergence raises deliberately."""

    http_status: int = 500
    exit_code: int = 1
    fields: tuple[str, ...] = ()  # what a subclass carries beyond message and hint (in to_dict, from_dict)

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message

    def to_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "message": self.message, "hint": self.hint,
                **{name: getattr(self, name) for name in self.fields}}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ConvergenceError:
        """Rebuild an error from its ``to_dict`` (an API answer) as this class: what a client raises."""
        hint = data.get("hint")
        exc = cls.__new__(cls)
        ConvergenceError.__init__(exc, str(data.get("message", "")), hint=str(hint) if hint else None)
        for name in cls.fields:
            setattr(exc, name, str(data.get(name) or ""))
        return exc


class NotFound(ConvergenceError):
    http_status = 404
    exit_code = 3


class InvalidInput(ConvergenceError):
    http_status = 422
    exit_code = 2


class MalformedRequest(InvalidInput):
    http_status = 400


class PayloadTooLarge(InvalidInput):
    http_status = 413


class UnsafeArtifact(InvalidInput):
    """A model file that needs code to load, or is not of its family's format: refused, never loaded."""


class Unauthenticated(ConvergenceError):
    """Who is asking is not established: answered 401 with ``WWW-Authenticate: Bearer``."""

    http_status = 401
    exit_code = 8


class PolicyViolation(ConvergenceError):
    http_status = 403
    exit_code = 4


class Forbidden(PolicyViolation):
    """A role or separation-of-duties rule refused; ``rule`` names it (e.g. ``approver-not-registrant``)."""

    fields = ("rule",)

    def __init__(self, message: str, *, rule: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.rule = rule


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
    fields = ("step",)

    def __init__(self, message: str, *, step: str, hint: str | None = None) -> None:
        super().__init__(f"step {step!r} failed: {message}", hint=hint)
        self.step = step


def _subclasses(cls: type[ConvergenceError]) -> list[type[ConvergenceError]]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


def error_class(name: str, http_status: int) -> type[ConvergenceError]:
    """The class an API error answer names (``{"error": "Forbidden", …}``), else the closest one by status:
    how a client turns the answer back into the same exception and exit code."""
    known = {cls.__name__: cls for cls in _subclasses(ConvergenceError)}
    if name in known:
        return known[name]
    by_status = {400: MalformedRequest, 401: Unauthenticated, 403: PolicyViolation, 404: NotFound,
                 409: IntegrityError, 413: PayloadTooLarge, 422: InvalidInput, 503: Unavailable}
    return by_status.get(http_status, ConvergenceError)
