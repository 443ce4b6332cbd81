"""``RemoteOperations``: the operations over HTTP, generated from the same ``@op`` declarations the API
serves, so the CLI in API mode calls exactly what it calls locally and an error answer becomes the same
exception (and exit code) it would have raised in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from convergence.platform.api._spec import OpSpec
from convergence.platform.errors import InvalidInput, Unavailable, error_class


def _raise_for(response: Any) -> None:
    if response.status_code < 400:
        return
    try:
        data = response.json()
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    name, message = str(data.get("error", "")), str(data.get("message") or f"HTTP {response.status_code}")
    raise error_class(name, response.status_code).from_dict({**data, "message": message})


class RemoteOperations:
    """The control plane's operations as an HTTP client (``CVG_API_URL``), authenticated with an API key or
    a token."""

    def __init__(self, base_url: str, credential: str | None, *, timeout_s: float = 60.0) -> None:
        import httpx

        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidInput(f"CVG_API_URL must be http(s)://host[:port], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        headers = {"user-agent": "cvg"} | ({"authorization": f"Bearer {credential}"} if credential else {})
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s, follow_redirects=False)
        self._principal: dict[str, Any] | None = None

    def close(self) -> None:
        self.http.close()

    @property
    def principal(self) -> Any:
        """Who the server says we are (as data; the server holds the Principal)."""
        if self._principal is None:
            self._principal = self.whoami()  # type: ignore[attr-defined]
        return _RemotePrincipal(self._principal)

    def _request(self, spec: OpSpec, kwargs: dict[str, Any]) -> Any:
        import httpx

        path = spec.path.format(**{k: quote(str(kwargs.pop(k)), safe="") for k in spec.path_params})
        values = {k: v for k, v in kwargs.items() if v is not None}
        try:
            if spec.kind == "upload":
                with open(Path(values["source"]), "rb") as fh:
                    response = self.http.post(path, content=fh, headers={"content-type": "application/octet-stream"})
            elif spec.kind == "stream":
                return self._stream(path, values)
            elif spec.method == "GET":
                response = self.http.get(path, params=_query(values))
            else:
                response = self.http.request(spec.method, path, json=values)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                from convergence.platform.errors import NotFound

                raise NotFound(f"no such file: {exc.filename}") from None
            raise Unavailable(f"cannot reach the control plane at {self.base_url}: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the control plane at {self.base_url}: {type(exc).__name__}",
                              hint="is `cvg api` running there? (CVG_API_URL)") from None
        _raise_for(response)
        return response.json()

    def _stream(self, path: str, params: dict[str, Any]) -> Iterator[bytes]:
        import httpx

        request = self.http.build_request("GET", path, params=_query(params))
        try:
            response = self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the control plane at {self.base_url}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            response.read()
            response.close()
            _raise_for(response)
        return _iterate(response)


def _iterate(response: Any) -> Iterator[bytes]:
    try:
        yield from response.iter_bytes()
    finally:
        response.close()


def _query(values: dict[str, Any]) -> dict[str, Any]:
    return {k: ("true" if v is True else "false" if v is False else v) for k, v in values.items()}


class _RemotePrincipal:
    """The server's answer to /whoami, read like a Principal by the CLI's renderers."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.id, self.name, self.roles = data.get("id"), data.get("name", ""), frozenset(data.get("roles", ()))

    def to_dict(self) -> dict[str, Any]:
        return self.data


def _install() -> None:
    from convergence.platform.api.operations import Operations

    for spec in Operations.specs():
        def method(self: RemoteOperations, _spec: OpSpec = spec, **kwargs: Any) -> Any:
            return self._request(_spec, dict(kwargs))

        method.__name__, method.__doc__ = spec.name, (spec.func.__doc__ if spec.func else None)
        setattr(RemoteOperations, spec.name, method)


_install()
