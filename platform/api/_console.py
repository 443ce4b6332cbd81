"""The console: read-only web pages under ``/ui`` for auditors and model-risk reviewers, served by ``cvg api``.

Server-rendered (Jinja2, autoescaped) with one small script for what must run in the browser: local times on
hover and the inclusion check of a ledger event against a signed checkpoint with the public key (WebCrypto
Ed25519), so an auditor need not take the server's word. Sign-in is the issuer's authorization code flow with
PKCE, or an API key; every page reads through ``Operations`` as that principal. Nothing here writes: the only
forms are GET filters and sign-in/out, and every answer carries a strict Content-Security-Policy.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from convergence.platform.api._console_auth import SESSION_COOKIE, ConsoleSessions
from convergence.platform.errors import ConvergenceError, InvalidInput, Unauthenticated

HERE = Path(__file__).resolve().parent / "console"
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# Evidently's report is its own page with inline script: sandboxed to an opaque origin (no cookies, no console
# pages readable from it) and allowed to fetch nothing.
REPORT_CSP = ("sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
              "style-src 'unsafe-inline'; img-src data:; font-src data:")
NAV = (("inventory", "/ui/", "Inventory"), ("time-travel", "/ui/time-travel", "Time travel"),
       ("ledger", "/ui/ledger", "Ledger"), ("budgets", "/ui/budgets", "Budgets"))


def _headers(csp: str = CSP) -> dict[str, str]:
    return {"content-security-policy": csp, "x-content-type-options": "nosniff", "referrer-policy": "same-origin",
            "cache-control": "no-store", "x-frame-options": "DENY"}


class Console:
    """The console's pages: templates, sessions and the routes; one per app."""

    def __init__(self, *, settings: Any) -> None:
        import jinja2

        self.settings = settings
        from convergence.platform.api._console_pages import ChainStatus

        self.sessions = ConsoleSessions(settings=settings)
        self.chain = ChainStatus(max_age_s=settings.console_verify_s)
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                      undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(utc=_utc, short=lambda h: (h or "")[:12], num=_num)
        self.env.globals.update(nav=NAV)

    # --- rendering --------------------------------------------------------------------------------

    def render(self, template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("me", None)
        context.setdefault("csrf", None)
        context.setdefault("active", "")
        body = self.env.get_template(template).render(**context)
        return HTMLResponse(body, status_code=http_status, headers=_headers())

    def error(self, exc: ConvergenceError, **context: Any) -> HTMLResponse:
        return self.render("error.html", http_status=exc.http_status, error=type(exc).__name__, message=exc.message,
                           hint=exc.hint, **context)

    # --- who is asking ----------------------------------------------------------------------------

    async def who(self, request: Request, *, cross_site_ok: bool = False, strict: bool = False) -> tuple[Any, Any]:
        """The principal of the console session (cookie) or of an ``Authorization`` header (service use);
        ``(None, None)`` when neither is there. A request another site started (``Sec-Fetch-Site``) never acts
        with the session; ``strict`` (what may write: the pack can sign a checkpoint) wants the browser to say
        same-origin. A session whose credential no longer works is dropped."""
        import anyio

        cookie = request.cookies.get(SESSION_COOKIE)
        site = request.headers.get("sec-fetch-site")
        if (strict and site != "same-origin") or (not cross_site_ok and site in ("cross-site", "same-site")):
            cookie = None
        session = await anyio.to_thread.run_sync(lambda: self.sessions.get(cookie)) if cookie else None
        header = f"Bearer {session.credential}" if session else request.headers.get("authorization")
        if not header:
            return None, None
        auth, rid = request.app.state.auth, getattr(request.state, "request_id", None)
        try:
            principal = auth.cached(header, request_id=rid)
            if principal is None:
                principal = await anyio.to_thread.run_sync(lambda: auth.from_header(header, request_id=rid))
        except Unauthenticated:
            if session is None:
                raise
            await anyio.to_thread.run_sync(lambda: self.sessions.forget(cookie or ""))
            return None, None
        return principal, session

    async def page(self, request: Request, active: str, build: Callable[..., tuple[str, dict[str, Any]]],
                   *args: Any, **kwargs: Any) -> Response:
        """A page: sign-in first when nobody is, then ``build(ops, …)`` in a thread as that principal."""
        import anyio

        from convergence.platform.api.operations import Operations

        try:
            principal, session = await self.who(request)
        except Unauthenticated as exc:
            return self.render("login.html", http_status=401, message=exc.message, next=request.url.path,
                               oidc=self.sessions.oidc_enabled)
        except ConvergenceError as exc:
            return self.error(exc)
        if principal is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse("/ui/login?" + urllib.parse.urlencode({"next": target}), status_code=303,
                                    headers=_headers())
        ops = Operations(who=lambda: principal, jobs=request.app.state.jobs)
        me = {"name": principal.name, "roles": sorted(principal.roles), "kind": principal.kind,
              "method": session.method if session else "bearer"}
        common = {"me": me, "csrf": session.csrf if session else None, "active": active}
        try:
            template, context = await anyio.to_thread.run_sync(lambda: build(ops, *args, **kwargs))
        except ConvergenceError as exc:
            return self.error(exc, **common)
        return self.render(template, **common, **context)


def _utc(value: Any) -> Any:
    """An instant as ``<time>``: UTC on the page, the reader's local time on hover (the script sets the title)."""
    from markupsafe import Markup, escape

    if not value:
        return Markup("—")
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return escape(str(value))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    when = when.astimezone(dt.timezone.utc)
    iso = when.isoformat(timespec="seconds").replace("+00:00", "Z")
    return Markup(f'<time datetime="{iso}" tabindex="0">{when:%Y-%m-%d %H:%M:%S} UTC</time>')


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    return f"{value:.{digits}g}"


def _int(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise InvalidInput(f"{what} must be a positive whole number, not {text[:40]!r}")
    return int(text)


def _query(request: Request, name: str, limit: int = 200) -> str:
    from convergence.platform.api._spec import _visible

    value = request.query_params.get(name, "")
    if len(value) > limit:
        raise InvalidInput(f"{name} is longer than {limit} characters")
    try:
        return _visible(value.strip())
    except ValueError as exc:
        raise InvalidInput(f"{name} {exc}") from None


def install_console(app: Any, *, settings: Any) -> None:
    """Mount the console's routes on the control-plane app (not in the OpenAPI document: they are pages)."""
    from convergence.platform.api import _console_routes

    console = Console(settings=settings)
    app.state.console = console
    _console_routes.add_routes(app, console)

