"""The console's routes: pages (GET), sign-in and sign-out, the pack download, Evidently's report (sandboxed),
the JSON a browser checks an inclusion proof with, and the two static files. Routes parse, call and render."""

from __future__ import annotations

import urllib.parse
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from convergence.platform.api import _console_pages as pages
from convergence.platform.api._console import HERE, REPORT_CSP, STATIC, Console, _headers, _int, _query
from convergence.platform.api._console_auth import LOGIN_COOKIE, PENDING_S, SESSION_COOKIE, same, safe_next
from convergence.platform.errors import ConvergenceError, InvalidInput, PolicyViolation, Unauthenticated

_FORM_LIMIT = 8192


def add_routes(app: Any, console: Console) -> None:
    def get(path: str) -> Any:
        return app.get(path, include_in_schema=False)

    @get("/ui")
    @get("/ui/")
    async def inventory(request: Request) -> Response:
        try:
            args = {k: _query(request, k) for k in ("q", "family", "stage", "tier", "sort")}
        except InvalidInput as exc:
            return console.error(exc)
        args["sort"] = args["sort"] or "name"
        return await console.page(request, "inventory", pages.inventory_page, desc=request.query_params.get("desc") == "1",
                                  **args)

    @get("/ui/models/{version_id}")
    async def model(request: Request, version_id: str) -> Response:
        try:
            vid = _int(version_id, "a model version id")
        except InvalidInput as exc:
            return console.error(exc)
        return await console.page(request, "inventory", pages.model_page, vid)

    @get("/ui/time-travel")
    async def time_travel(request: Request) -> Response:
        try:
            name, at = _query(request, "name"), _query(request, "at", 64)
        except InvalidInput as exc:
            return console.error(exc)
        return await console.page(request, "time-travel", pages.time_travel_page, name=name, at=at)

    @get("/ui/ledger")
    async def ledger(request: Request) -> Response:
        try:
            before = _query(request, "before", 12)
            start = _int(before, "before") if before else None
        except InvalidInput as exc:
            return console.error(exc)
        return await console.page(request, "ledger", pages.ledger_page, before=start, chain=console.chain)

    @get("/ui/budgets")
    async def budgets(request: Request) -> Response:
        try:
            project = _query(request, "project")
        except InvalidInput as exc:
            return console.error(exc)
        return await console.page(request, "budgets", pages.budgets_page, project=project)

    _downloads(app, console)
    _sign_in(app, console)
    _oidc(app, console)

    @get("/ui/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            return JSONResponse({"error": "NotFound", "message": f"no console file {name[:60]!r}"}, status_code=404)
        return Response((HERE / "static" / name).read_bytes(), media_type=STATIC[name],
                        headers={**_headers(), "cache-control": "no-cache"})


def _downloads(app: Any, console: Console) -> None:
    """What leaves the console as data: the audit pack, Evidently's report, an inclusion proof."""

    async def fetch(request: Request, number: str, what: str, call: Any) -> Any:
        """``call(ops, id)`` in a thread as the console's principal, after parsing the id from the path."""
        import anyio

        from convergence.platform.api.operations import Operations

        wanted = _int(number, what)
        principal, _ = await console.who(request, strict=True)
        if principal is None:
            raise Unauthenticated("sign in to the console first", hint="/ui/login")
        ops = Operations(who=lambda: principal, jobs=request.app.state.jobs)
        return wanted, await anyio.to_thread.run_sync(lambda: call(ops, wanted))

    @app.get("/ui/models/{version_id}/pack", include_in_schema=False)
    async def pack(request: Request, version_id: str) -> Response:
        try:
            vid, chunks = await fetch(request, version_id, "a model version id",
                                      lambda ops, n: ops.model_pack(version_id=n))
        except ConvergenceError as exc:
            return console.error(exc)
        return StreamingResponse(chunks, media_type="application/zip", headers={
            **_headers(), "content-disposition": f'attachment; filename="model-{vid}-audit-pack.zip"'})

    @app.get("/ui/drift/{report_id}/report", include_in_schema=False)
    async def report(request: Request, report_id: str) -> Response:
        try:
            _, body = await fetch(request, report_id, "a drift report id", pages.report_html)
        except ConvergenceError as exc:
            return console.error(exc)
        return Response(body, media_type="text/html; charset=utf-8", headers=_headers(REPORT_CSP))

    @app.get("/ui/ledger/proof/{seq}", include_in_schema=False)
    async def proof(request: Request, seq: str) -> Response:
        try:
            _, data = await fetch(request, seq, "seq", pages.proof_data)
        except ConvergenceError as exc:
            body = {k: v for k, v in exc.to_dict().items() if v is not None}
            return JSONResponse(body, status_code=exc.http_status, headers=_headers())
        return JSONResponse(data, headers=_headers())


def _cookie(console: Console, request: Request, response: Response, name: str, value: str, max_age: int) -> Response:
    """A console cookie: HttpOnly, SameSite=Lax, scoped to /ui; Secure whenever the console is reached over TLS
    (behind a proxy: when CVG_CONSOLE_URL says https)."""
    secure = request.url.scheme == "https" or (console.settings.console_url or "").startswith("https://")
    response.set_cookie(name, value, max_age=max_age, path="/ui", httponly=True, samesite="lax", secure=secure)
    return response


async def _signed_in(console: Console, request: Request, response: Response, credential: str, method: str,
                     expires: float | None) -> Response:
    """Authenticate ``credential`` like an API call, open a session for it and set its cookie on ``response``."""
    import anyio

    auth, rid = request.app.state.auth, getattr(request.state, "request_id", None)
    principal = await anyio.to_thread.run_sync(lambda: auth.from_header(f"Bearer {credential}", request_id=rid))
    replaces = request.cookies.get(SESSION_COOKIE)  # signing in again ends the session this browser had
    session_id, _, lasts = await anyio.to_thread.run_sync(
        lambda: console.sessions.open(principal, credential, method=method, expires=expires, replaces=replaces))
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return _cookie(console, request, response, SESSION_COOKIE, session_id, lasts)


def _sign_in(app: Any, console: Console) -> None:
    """The sign-in page, sign-in with an API key, and sign-out."""
    sessions = console.sessions

    @app.get("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        target = safe_next(request.query_params.get("next"))
        try:
            principal, session = await console.who(request, cross_site_ok=True)
        except ConvergenceError:
            principal, session = None, None
        return console.render("login.html", message=None, next=target, oidc=sessions.oidc_enabled,
                              signed_in_as=principal.name if session is not None else None)

    @app.post("/ui/login/key", include_in_schema=False)
    async def login_key(request: Request) -> Response:
        form = await _form(request)
        target = safe_next(form.get("next"))
        try:
            _same_origin(request)
            key = form.get("api_key", "").strip()
            if not key:
                raise InvalidInput("paste a service account's API key")
            response = RedirectResponse(target, status_code=303, headers=_headers())
            return await _signed_in(console, request, response, key, "api_key", None)
        except ConvergenceError as exc:
            return console.render("login.html", http_status=exc.http_status, message=exc.message, next=target,
                                  oidc=sessions.oidc_enabled)

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        import anyio

        form = await _form(request)
        cookie = request.cookies.get(SESSION_COOKIE)
        try:
            _same_origin(request)
            principal, session = await console.who(request)
            if session is not None and not same(form.get("csrf", ""), session.csrf):
                raise PolicyViolation("sign-out was not sent by this console's page")
        except ConvergenceError as exc:
            return console.error(exc)
        if session is not None and cookie:
            await anyio.to_thread.run_sync(lambda: sessions.close(cookie, principal))
        response = RedirectResponse("/ui/login", status_code=303, headers=_headers())
        response.delete_cookie(SESSION_COOKIE, path="/ui")
        return response


def _oidc(app: Any, console: Console) -> None:
    """Sign-in with the issuer: off to its authorization endpoint, and back through the callback."""
    sessions = console.sessions

    @app.get("/ui/login/oidc", include_in_schema=False)
    async def login_oidc(request: Request) -> Response:
        import anyio

        base = (console.settings.console_url or str(request.base_url)).rstrip("/")
        target = safe_next(request.query_params.get("next"))
        if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):  # another site may not start one
            return console.render("login.html", message=None, next=target, oidc=sessions.oidc_enabled)
        try:
            cookie, url = await anyio.to_thread.run_sync(
                lambda: sessions.begin(next_path=target, redirect_uri=f"{base}/ui/callback"))
        except ConvergenceError as exc:
            return console.render("login.html", http_status=exc.http_status, message=exc.message, next=target,
                                  oidc=sessions.oidc_enabled)
        response = RedirectResponse(url, status_code=303, headers=_headers())
        return _cookie(console, request, response, LOGIN_COOKIE, cookie, PENDING_S)

    @app.get("/ui/callback", include_in_schema=False)
    async def callback(request: Request) -> Response:
        """The issuer's redirect (a cross-site navigation): the session opens here, and a page of our own moves
        on, so the next request is the console's own (its ``Sec-Fetch-Site`` is same-origin)."""
        import anyio

        params = request.query_params
        try:
            if params.get("error"):  # the code only: the issuer's description is not ours to show
                raise Unauthenticated(f"the issuer did not sign you in ({_token(params['error'])})")
            token, target, expires = await anyio.to_thread.run_sync(lambda: sessions.finish(
                state=params.get("state", "")[:200], cookie=request.cookies.get(LOGIN_COOKIE),
                code=params.get("code", "")))
            response = console.render("continue.html", target=target)
            return await _signed_in(console, request, response, token, "oidc", expires)
        except ConvergenceError as exc:
            failed = console.render("login.html", http_status=exc.http_status, message=exc.message, next="/ui/",
                                    oidc=sessions.oidc_enabled)
            failed.delete_cookie(LOGIN_COOKIE, path="/ui")
            return failed


def _token(value: str) -> str:
    """An OAuth error code as the issuer sent it, if it looks like one (RFC 6749: a short ASCII word)."""
    return value if len(value) <= 40 and value.replace("_", "").isalnum() and value.isascii() else "an error"


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form (sign-in and sign-out only), first value of each field."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _FORM_LIMIT:
            return {}
    try:
        fields = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items() if v}


def _same_origin(request: Request) -> None:
    """A form post must come from the console's own pages (the browser's Origin), not another site."""
    origin = request.headers.get("origin")
    if origin is None:  # not a browser's form (a script with its own credential); a browser's says where from
        if request.headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            raise PolicyViolation("this form was sent from another site")
        return
    configured = request.app.state.console.settings.console_url
    try:
        hosts = {request.headers.get("host", ""), urllib.parse.urlsplit(configured).netloc if configured else ""}
        parsed = urllib.parse.urlsplit(origin) if origin != "null" else None
    except ValueError:  # an Origin that is not a URL at all
        parsed = None
    # the host the browser reached, whatever scheme a TLS proxy in front left us; "null" (a sandboxed frame, a
    # privacy redirect) is never the console's own
    if parsed is None or parsed.scheme not in ("http", "https") or parsed.netloc not in hosts - {""}:
        raise PolicyViolation("this form was sent from another site")
