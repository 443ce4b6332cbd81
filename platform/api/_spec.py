"""How an operation is described once and used three ways: called in-process by the CLI, served as an
HTTP route by the API, and called over HTTP by the CLI's client.

``@op(METHOD, PATH)`` records the HTTP shape on the method; the types in its signature (the aliases
below) are the validation, both in-process (``pydantic.validate_call``) and in the OpenAPI document.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, StringConstraints, ValidationError, validate_call

from convergence.platform.errors import InvalidInput


def _visible(value: str) -> str:
    """No control or invisible characters in anything a caller sends (NUL would even reach PostgreSQL)."""
    for ch in value:
        if ch not in "\n\t" and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co"):
            raise ValueError(f"contains the control or invisible character U+{ord(ch):04X}")
    return value


def _visible_json(value: Any, depth: int = 0) -> Any:
    """The same for every key and string inside a JSON object (metrics, params, overrides), at most 32 deep."""
    if depth > 32:
        raise ValueError("is nested more than 32 levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            _visible(str(key))
            _visible_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _visible_json(item, depth + 1)
    elif isinstance(value, str):
        _visible(value)
    return value


Id = Annotated[int, Field(ge=1, le=2**31 - 1, description="A numeric id.")]
Limit = Annotated[int, Field(ge=1, le=10_000, description="At most this many.")]
Text = Annotated[str, StringConstraints(max_length=4000), AfterValidator(_visible)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(_visible)]
Ref = Annotated[str, StringConstraints(min_length=1, max_length=520), AfterValidator(_visible)]
When = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_visible),
                 Field(description="ISO 8601, 'now', or an age such as 90m, 2h, 7d.")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Family = Literal["trading", "language"]
Stage = Literal["candidate", "validated", "approved", "production", "retired", "rejected"]
ModelRole = Literal["teacher", "student", "quantized", "compiled"]
Role = Literal["registrant", "validator", "approver", "operator", "risk", "finance", "auditor", "admin"]
Number = Annotated[float, Field(allow_inf_nan=False)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_visible_json)]


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """The HTTP shape of one operation."""

    name: str
    method: str
    path: str
    tag: str
    kind: str = "json"  # json | stream (a file download) | upload (a raw body)
    status: int = 200
    func: Callable[..., Any] | None = None

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)

    def parameters(self) -> list[inspect.Parameter]:
        """The operation's parameters (without self), with their annotations resolved."""
        assert self.func is not None
        hints = typing.get_type_hints(self.func, include_extras=True)
        return [p.replace(annotation=hints.get(p.name, Any))
                for p in inspect.signature(self.func).parameters.values() if p.name != "self"]


def _message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "__root__") or "input"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def op(method: str, path: str, *, tag: str, kind: str = "json", status: int = 200) -> Callable[[Any], Any]:
    """Mark an ``Operations`` method as an operation served at ``METHOD PATH``; its arguments are
    validated by their annotations in every mode, and a bad one is one ``InvalidInput`` line."""

    def wrap(func: Callable[..., Any]) -> Any:
        checked = validate_call(config=ConfigDict(arbitrary_types_allowed=True, strict=False))(func)

        @functools.wraps(func)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return checked(self, *args, **kwargs)
            except ValidationError as exc:
                raise InvalidInput(_message(exc)) from None

        call.__op__ = OpSpec(func.__name__, method, path, tag, kind, status, func)  # type: ignore[attr-defined]
        return call

    return wrap


def operations_of(cls: type) -> list[OpSpec]:
    """Every operation a class offers, in definition order of its bases then itself."""
    seen: dict[str, OpSpec] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if spec := getattr(value, "__op__", None):
                seen[name] = spec
    return list(seen.values())
