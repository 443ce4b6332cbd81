"""``cvg api``: FastAPI over ``Operations``, every route authenticated, every error one JSON object.

Routes are generated from the operations' ``@op`` declarations: path parameters from the path, query
parameters for GET, a JSON body (unknown fields refused) otherwise, so the HTTP surface, its OpenAPI 3.1
document and the CLI's client cannot drift apart. Errors map in one place: a ``ConvergenceError`` answers
its status with ``{"error", "message", "hint"?, "rule"?}``; validation is 422 (400 for JSON that does not
parse, 413 for a body over the limit); anything unexpected is a logged 500 that says only its request id.
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from convergence.platform.api._spec import OpSpec
from convergence.platform.errors import ConvergenceError, InvalidInput, MalformedRequest, PayloadTooLarge

log = logging.getLogger("convergence.api")

ERROR_STATUSES = (400, 401, 403, 404, 409, 413, 422, 503)


def _error_body(exc: ConvergenceError) -> dict[str, Any]:
    return {k: v for k, v in exc.to_dict().items() if v is not None}


def _error_response(exc: ConvergenceError) -> Any:
    """The answer to one of our errors (the middleware adds the request id to every answer it passes)."""
    from starlette.responses import JSONResponse

    headers = {}
    if exc.http_status == 401:
        headers["www-authenticate"] = 'Bearer realm="convergence"'
    return JSONResponse(_error_body(exc), status_code=exc.http_status, headers=headers)


class _Limits:
    """ASGI middleware: a request id on every request and answer, and the body-size limits."""

    def __init__(self, app: Any, *, max_body: int, max_upload: int) -> None:
        self.app, self.max_body, self.max_upload = app, max_body, max_upload

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        # The audit trail records this id, so the server makes it (a caller's X-Request-Id is not trusted).
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        upload = scope.get("path") == "/artifacts"
        limit = self.max_upload if upload else self.max_body
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _send_error(send, PayloadTooLarge(f"body of {int(declared):,} bytes is over the limit of {limit:,}"),
                              request_id)
            return
        if not upload:  # small JSON bodies: read them here, so an oversized chunked body is a clear 413
            body, more = b"", True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    await _send_error(send, PayloadTooLarge(f"body is over the limit of {limit:,} bytes"), request_id)
                    return
            buffered = [{"type": "http.request", "body": body, "more_body": False}]

            async def replay() -> dict[str, Any]:
                return buffered.pop() if buffered else await receive()

            receive_next = replay
        else:
            receive_next = receive
        seen = 0

        async def counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive_next()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(f"body is over the limit of {limit:,} bytes")
            return message

        async def tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        await self.app(scope, counted, tagged)


async def _send_error(send: Any, exc: ConvergenceError, request_id: str) -> None:
    """An answer from the middleware itself, before the app: it carries its request id here."""
    response = _error_response(exc)
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": [*response.raw_headers, (b"x-request-id", request_id.encode())]})
    await send({"type": "http.response.body", "body": response.body})


def _validation_error(errors: list[dict[str, Any]]) -> ConvergenceError:
    if any(e.get("type") == "json_invalid" for e in errors):
        return MalformedRequest("the body is not valid JSON")
    parts = []
    for err in errors[:3]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body",)) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return InvalidInput("; ".join(parts) or "invalid request")


def _install_error_handlers(app: Any) -> None:
    from fastapi.exceptions import RequestValidationError
    from sqlalchemy.exc import DataError, DBAPIError
    from starlette.exceptions import HTTPException

    def rid(request: Any) -> str | None:
        return getattr(request.state, "request_id", None)

    @app.exception_handler(ConvergenceError)
    async def ours(request: Any, exc: ConvergenceError) -> Any:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> Any:
        return _error_response(_validation_error(list(exc.errors())))

    @app.exception_handler(HTTPException)
    async def http(request: Any, exc: HTTPException) -> Any:
        from starlette.responses import JSONResponse

        name = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        message = (f"no route {request.method} {request.url.path}" if exc.status_code == 404 else
                   f"{request.method} is not allowed on {request.url.path}" if exc.status_code == 405 else
                   str(exc.detail))
        return JSONResponse({"error": name, "message": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(DBAPIError)
    async def database(request: Any, exc: DBAPIError) -> Any:
        if isinstance(exc, DataError):  # a value the database cannot store; never echo the statement
            return _error_response(InvalidInput("the database refused a value in this request"))
        log.error("database error on %s %s (request %s): %s", request.method, request.url.path, rid(request),
                  type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__)
        from convergence.platform.errors import Unavailable

        return _error_response(Unavailable("the database could not complete this request"))

    @app.exception_handler(Exception)
    async def bug(request: Any, exc: Exception) -> Any:
        from starlette.responses import JSONResponse

        log.exception("internal error on %s %s (request %s)", request.method, request.url.path, rid(request))
        # Starlette answers a bug outside the middleware stack: the request id header is set here.
        return JSONResponse({"error": "InternalError", "message": f"internal error (request {rid(request)}); "
                             "the server's log has the details"}, status_code=500,
                            headers={"x-request-id": rid(request) or ""})


def _signature(spec: OpSpec) -> tuple[list[inspect.Parameter], Any]:
    """FastAPI parameters for an operation: path, query (GET and downloads) or one JSON body model."""
    from fastapi import Body, Path as PathParam, Query
    from pydantic import ConfigDict, create_model

    out: list[inspect.Parameter] = []
    body: dict[str, Any] = {}
    for p in spec.parameters():
        if spec.kind == "upload":
            continue  # the upload's file is the request body itself
        default = ... if p.default is inspect.Parameter.empty else p.default
        if p.name in spec.path_params:
            out.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY,
                                         annotation=Annotated[p.annotation, PathParam()]))
        elif spec.method == "GET":
            out.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY,
                                         annotation=Annotated[p.annotation, Query()], default=default))
        else:
            body[p.name] = (p.annotation, default)
    model = None
    if body:
        title = "".join(part.title() for part in spec.name.split("_")) + "Request"
        model = create_model(title, __config__=ConfigDict(extra="forbid"), **body)
        required = any(d is ... for _, d in body.values())
        out.append(inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY,
                                     annotation=Annotated[model if required else model | None, Body()],
                                     default=inspect.Parameter.empty if required else None))
    return out, model


def _endpoint(spec: OpSpec) -> Any:
    from starlette.responses import JSONResponse, StreamingResponse

    from convergence.platform.api.operations import Operations

    params, _ = _signature(spec)

    async def upload(request: Request, ops: Operations) -> Any:
        import anyio

        await anyio.to_thread.run_sync(lambda: ops.check("artifact.upload"))  # before reading a byte of it
        fd, name = tempfile.mkstemp(prefix="cvg-upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in request.stream():
                    out.write(chunk)
            return await anyio.to_thread.run_sync(lambda: ops.upload_artifact(source=Path(name)))
        finally:
            os.unlink(name)

    async def endpoint(request: Request, **kwargs: Any) -> Any:
        import anyio

        principal = request.state.principal
        ops = Operations(who=lambda: principal, jobs=request.app.state.jobs)
        if spec.kind == "upload":
            return JSONResponse(await upload(request, ops), status_code=spec.status)
        body = kwargs.pop("body", None)
        args = {**kwargs, **(body.model_dump(exclude_unset=True) if body is not None else {})}
        result = await anyio.to_thread.run_sync(lambda: getattr(ops, spec.name)(**args))
        if spec.tag == "principals" and spec.method != "GET":
            request.app.state.auth.invalidate()  # a grant, revocation or key change applies to the next request
        if spec.kind == "stream":
            fmt = args.get("format", "jsonl")
            media = {"jsonl": "application/x-ndjson", "csv": "text/csv"}.get(fmt, "application/octet-stream")
            return StreamingResponse(result, media_type=media,
                                     headers={"content-disposition": f'attachment; filename="audit.{fmt}"'})
        return JSONResponse(result, status_code=spec.status)

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request), *params])
    endpoint.__name__ = spec.name
    return endpoint


async def _authenticated(request: Any) -> None:
    """The route dependency: who is asking (``Authorization: Bearer <API key or OIDC token>``). A cached
    credential is answered on the event loop; one that needs the database or the issuer, in a thread."""
    import anyio

    auth, header = request.app.state.auth, request.headers.get("authorization")
    request_id = getattr(request.state, "request_id", None)
    principal = auth.cached(header, request_id=request_id)
    if principal is None:
        principal = await anyio.to_thread.run_sync(lambda: auth.from_header(header, request_id=request_id))
    request.state.principal = principal


def create_app(*, authenticator: Any = None, jobs: Any = None) -> Any:
    """The control-plane app; ``authenticator`` and ``jobs`` are owned by it (tests may pass their own)."""
    from pydantic import BaseModel

    from convergence.governance.identity import Authenticator
    from convergence.platform.api._jobs import BackgroundJobs
    from convergence.platform.api.operations import Operations
    from convergence.platform.settings import get_settings

    settings = get_settings()
    app = FastAPI(title="convergence control plane", version=_version(), docs_url="/docs", redoc_url=None,
                  description="Govern, train, serve and audit trading and language models. Every route but the "
                              "health checks needs `Authorization: Bearer <API key or OIDC access token>`.")
    app.state.auth = authenticator or Authenticator(settings=settings)
    app.state.jobs = jobs or BackgroundJobs(settings.api_max_runs)
    _install_error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="A service account's API key (cvgk_…) or an OIDC access token.")

    class ErrorBody(BaseModel):
        error: str
        message: str
        hint: str | None = None
        rule: str | None = None
        step: str | None = None

    async def authenticated(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        await _authenticated(request)

    app.state.authenticated = authenticated  # the one dependency every route has (benchmarks override it)

    errors = {status: {"model": ErrorBody} for status in ERROR_STATUSES}
    for spec in Operations.specs():
        extra: dict[str, Any] = {}
        responses: dict[int | str, Any] = dict(errors)
        if spec.kind == "stream":
            from starlette.responses import StreamingResponse

            extra["response_class"] = StreamingResponse
            responses[200] = {"description": "the export, streamed", "content": {
                media: {"schema": {"type": "string"}} for media in ("application/x-ndjson", "text/csv",
                                                                   "application/octet-stream")}}
        if spec.kind == "upload":
            extra["openapi_extra"] = {"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
        app.add_api_route(spec.path, _endpoint(spec), methods=[spec.method], status_code=spec.status,
                          tags=[spec.tag], name=spec.name, summary=spec.name.replace("_", " "),
                          description=inspect.getdoc(spec.func), dependencies=[Depends(authenticated)],
                          responses=responses, **extra)
    _health(app)
    from convergence.platform.api._console import install_console

    install_console(app, settings=settings)
    app.add_middleware(_Limits, max_body=settings.api_max_body_bytes, max_upload=settings.api_max_upload_bytes)
    app.router.on_startup.append(_settle)
    return app


def _settle() -> None:
    """Everything imported at start-up lives as long as the process: keep the cyclic collector from walking it
    during requests (a full collection over it showed up as 50 ms tails on audit queries)."""
    import gc

    gc.collect()
    gc.freeze()


def _health(app: Any) -> None:
    from convergence.platform.errors import SchemaOutdated, Unavailable

    @app.get("/livez", tags=["health"], summary="the process is up")
    async def livez() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="the database answers and its schema is current",
             responses={503: {"description": "not ready"}})
    def readyz() -> dict[str, str]:
        from convergence.platform.db import session_scope

        try:
            with session_scope(write=False) as session:
                session.connection()
        except ConvergenceError as exc:  # unauthenticated: say what is wrong, never where the database is
            what = "its schema is not current" if isinstance(exc, SchemaOutdated) else "it does not answer"
            raise Unavailable(f"not ready: the database {what}", hint="see `cvg doctor` on the server") from None
        return {"status": "ready"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("convergence")
    except PackageNotFoundError:
        return "0+unknown"
