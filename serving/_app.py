"""The HTTP surface of a serving replica: ``/predict`` (trading) and ``/generate`` (language).

A plain ASGI app mounted inside the BentoML service: BentoML's per-endpoint machinery (schema
generation, its dispatcher) was the cost measured by bench/serving_bench.py (plain BentoML batching
against this, in the README), so requests are parsed and batched here. Every error is a 4xx/503 with
one JSON line ``{"error", "message"}``; nothing reaches a 500. With ``CVG_SERVE_AUTH=required`` the model
routes need an API key or an OIDC token (checked against a short cache, not the database, per request); ``/info`` tells anonymous callers only what is served.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import struct
import sys
import time
from typing import Any

import numpy as np

from convergence.platform.errors import (
    ConvergenceError,
    InvalidInput,
    MalformedRequest,
    PayloadTooLarge,
    Unavailable,
)
from convergence.serving._models import LanguageBatcher, Loaded, TradingBatcher
from convergence.serving._rollout import KEY_HEADER, Arm, Rollout, RolloutThread, prompt_answer, rows_answer, split_key
from convergence.serving._runtime import Ids, KillWatcher, Metrics, PredictionLogger, UsageRecorder

IDS = Ids()

BINARY = "application/octet-stream"  # body: uint32 rows, uint32 columns (little-endian), then float32 row-major


MalformedBody = MalformedRequest  # the name the tests and older callers use


@dataclasses.dataclass
class Replica:
    """Everything one serving process holds: the production arm (model, batcher, log), a rollout's newcomer when
    one runs, the kill watcher, metrics and usage."""

    arm: Arm
    watcher: KillWatcher
    metrics: Metrics
    usage: UsageRecorder
    max_body: int
    max_rows: int
    auth: Any = None  # an identity.Authenticator: for the model routes when required, and for /info's details
    auth_required: bool = False
    max_prompt_chars: int = 32_768
    rollout: Rollout | None = None  # the shadow or canary beside production, set by the follower thread
    follower: RolloutThread | None = None

    @property
    def loaded(self) -> Loaded:
        return self.arm.loaded

    @property
    def batcher(self) -> TradingBatcher | LanguageBatcher:
        return self.arm.batcher

    @property
    def logger(self) -> PredictionLogger:
        return self.arm.logger

    def promote(self, arm: Arm) -> None:
        """A rollout was promoted: its arm answers everything now (one assignment: a request sees one or the other)."""
        arm.batcher.on_batch = self.arm.batcher.on_batch  # the batch-size histogram goes on
        self.arm = arm
        self.usage.model_version_id = arm.loaded.version_id

    def ready(self) -> bool:
        return self.watcher.polled.is_set() and self.watcher.is_alive()

    def close(self) -> None:
        self.watcher.stop.set()
        if self.follower is not None:
            self.follower.stop.set()
        loggers = [self.arm.logger] + ([self.rollout.arm.logger] if self.rollout else [])
        for logger in loggers:
            logger.stop.set()
        for logger in loggers:
            logger.join(timeout=10)
        self.usage.stop.set()
        with contextlib.suppress(ConvergenceError):
            self.usage.record()


REPLICAS: dict[str, Replica] = {}


def _arm(family: str, route: str, **which: Any) -> Arm:
    """Load a version (``which``: name, version_id, why) as serving does, with its own batcher and log."""
    from convergence.platform.settings import get_settings
    from convergence.serving._models import load

    s = get_settings()
    loaded = load(family=family, **which)
    batcher: TradingBatcher | LanguageBatcher = (TradingBatcher(loaded, max_rows=s.serve_max_batch_rows)
                                                 if family == "trading"
                                                 else LanguageBatcher(loaded, max_batch=s.serve_max_generate_batch,
                                                                      wait_s=s.serve_generate_wait_ms / 1000))
    logger = PredictionLogger(loaded.version_id, sample=s.serve_log_sample, flush_s=s.serve_log_flush_s)
    logger.start()
    return Arm(loaded, batcher, logger, route)


def start_replica(family: str, *, name: str | None = None, version_id: int | None = None,
                  follow: bool | None = None) -> Replica:
    """Load the version to serve and start the replica's threads; ``follow`` (default: when no exact version was
    asked for) serves its name's shadow or canary beside it as the deployments table says."""
    import socket

    from convergence.platform.settings import get_settings

    s = get_settings()
    arm = _arm(family, "production", name=name, version_id=version_id, why=s.serve_why if version_id else None)
    metrics = Metrics()
    watcher = KillWatcher(s.serve_kill_poll_s)
    watcher.poll()  # the first answer before the first request: a killed model never serves, even briefly
    watcher.start()
    usage = UsageRecorder(arm.loaded.version_id, family, lambda: metrics.total("predictions_total"),
                          s.serve_usage_interval_s)
    usage.start()
    from convergence.governance.identity import Authenticator

    replica = Replica(arm, watcher, metrics, usage, s.serve_max_body_bytes, s.serve_max_rows,
                      Authenticator(settings=s), s.serve_auth == "required", s.serve_max_prompt_chars)
    arm.batcher.on_batch = lambda n: metrics.observe("batch_size", n, Metrics.BATCH_BUCKETS)

    def newcomer(version: int, route: str) -> Arm:
        new = _arm(family, route, version_id=version, why=f"the {route} of a rollout")
        served = replica.arm.loaded.extra  # production now (it changes with a promotion)
        if family == "trading" and new.loaded.extra["n_features"] != served["n_features"]:
            new.logger.stop.set()
            raise InvalidInput(f"version {version} takes {new.loaded.extra['n_features']} features; production "
                               f"takes {served['n_features']}")
        return new

    if follow if follow is not None else version_id is None:  # `--version N` serves exactly N
        replica.follower = RolloutThread(replica, model_name=arm.loaded.extra["kill_names"][-1],
                                         replica_id=f"{socket.gethostname()[:40]}-{IDS.prefix[:8]}",
                                         report_s=s.serve_rollout_report_s, make_arm=newcomer, ids=IDS)
        replica.follower.start()
    REPLICAS[family] = replica
    # Everything loaded so far (torch, BentoML, the model) lives as long as the process: keep the cyclic
    # collector from walking it on every full collection, which stalled requests for ~100 ms (p99).
    gc.collect()
    gc.freeze()
    # The replica's own threads (prediction log, kill-switch poll, usage) run Python while a request waits for
    # the GIL; Python hands it over only every 5 ms by default, which was the 1-connection tail (tail_bench).
    sys.setswitchinterval(s.serve_gil_switch_ms / 1000)
    return replica


def _count(status: int, family: str | None) -> None:
    """Every error answer counted by status: on the family's replica, else on the one this process serves
    (``/generate`` asked of a trading server, a route that does not exist)."""
    replica = REPLICAS.get(family or "") or next(iter(REPLICAS.values()), None)
    if replica is not None:
        replica.metrics.inc("errors_total", status=str(status))


def _answer(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Any:
    """JSON in ASCII: a lone surrogate or control character echoed from a body is an escape, never an
    encoding error while the error itself is being answered."""
    from starlette.responses import Response

    return Response(json.dumps(body), status_code=status, headers=headers, media_type="application/json")


def _error(exc: ConvergenceError, family: str | None) -> Any:
    """The one JSON error answer, counted by status."""
    _count(exc.http_status, family)
    body = {"error": type(exc).__name__, "message": exc.message}
    if exc.hint:
        body["hint"] = exc.hint
    return _answer(body, exc.http_status)


def _route_family(path: str) -> str | None:
    return "trading" if path == "/predict" else "language" if path == "/generate" else None


async def _http_error(request: Any, exc: Any) -> Any:
    """Starlette's own refusals (no such route, a method the route does not take) in the same shape and
    counted like ours, as the platform API answers them."""
    name = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    path = request.url.path[:200]
    message = (f"no route {request.method} {path}" if exc.status_code == 404 else
               f"{request.method} is not allowed on {path}" if exc.status_code == 405 else str(exc.detail))
    _count(exc.status_code, _route_family(request.url.path))
    return _answer({"error": name, "message": message}, exc.status_code, exc.headers)


async def _unforeseen(request: Any, exc: Exception) -> Any:
    """The last net, outside the routes' own: Starlette sends this answer, then re-raises for the server's log."""
    return _internal(_route_family(request.url.path) or "serving", exc)


async def _body(request: Any, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        shown = f"{int(declared):,}" if len(declared) <= 18 else "10**18 or more"  # int() of 5,000 digits raises
        raise PayloadTooLarge(f"body of {shown} bytes is over the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(raw: bytes, allowed: set[str]) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise MalformedBody("body is not valid JSON here: nested too deeply") from None
    except ValueError:  # an integer of thousands of digits: Python's int-string conversion limit
        raise MalformedBody("body is not valid JSON here: a number with too many digits") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"body must be a JSON object with {', '.join(sorted(allowed))}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidInput(f"unknown field(s) {_shown_names(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return data


def _shown_names(names: list[str], most: int = 5) -> str:
    """Field names from a body as a message may carry them: the first few, short, unprintable ones escaped."""
    shown = [(n if n.isprintable() else n.encode("unicode_escape").decode("ascii"))[:40] for n in names[:most]]
    return ", ".join(shown) + (f" and {len(names) - most:,} more" if len(names) > most else "")


def parse_rows(raw: bytes, content_type: str, n_features: int, max_rows: int) -> np.ndarray:
    """Feature rows from JSON ``{"rows": [[…], …]}`` or the binary float32 body, validated."""
    if content_type.startswith(BINARY):
        if len(raw) < 8:
            raise InvalidInput("binary body needs an 8-byte header: uint32 rows, uint32 columns (little-endian)")
        rows, cols = struct.unpack("<II", raw[:8])
        if len(raw) - 8 != rows * cols * 4:
            raise InvalidInput(f"binary body declares {rows}×{cols} float32 ({rows * cols * 4} bytes) but carries "
                               f"{len(raw) - 8} bytes")
        X = np.frombuffer(raw, dtype="<f4", offset=8).reshape(rows, cols)
    else:
        data = _json_object(raw, {"rows"})
        rows_in = data.get("rows")
        X = _fast_rows(raw, rows_in)
        if X is None:
            X = _checked_rows(rows_in, n_features)
    if len(X) == 0:
        raise InvalidInput("empty batch: send at least one row")
    if len(X) > max_rows:
        raise PayloadTooLarge(f"{len(X)} rows is over the limit of {max_rows} per request")
    if X.shape[1] != n_features:
        raise InvalidInput(f"rows have {X.shape[1]} features; this model takes {n_features}")
    bad = ~np.isfinite(X)
    if bad.any():
        i, j = map(int, np.argwhere(bad)[0])
        raise InvalidInput(f"row {i}, feature {j} is {X[i, j]}: features must be finite numbers")
    return X


def _fast_rows(raw: bytes, rows_in: Any) -> np.ndarray | None:
    """The common case, checked at C speed: a body whose only string is the key and with no true/false/null
    holds only numbers, so numpy can take it whole. Anything else goes the precise, slower way."""
    if (not isinstance(rows_in, list) or raw.count(b'"') != 2 or b"true" in raw or b"false" in raw
            or b"null" in raw):
        return None
    try:
        with np.errstate(over="ignore"):  # 1e39 becomes inf in float32, and is refused as not finite
            X = np.asarray(rows_in, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        return None
    return X if X.ndim == 2 and len(X) else None


def _checked_rows(rows_in: Any, n_features: int) -> np.ndarray:
    """Every value looked at, so the message names the first bad one."""
    if not isinstance(rows_in, list):
        raise InvalidInput('"rows" must be a list of feature rows (lists of numbers)')
    for i, row in enumerate(rows_in):
        if not isinstance(row, list):
            raise InvalidInput(f"row {i} is not a list of numbers")
        for j, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InvalidInput(f"row {i}, feature {j} is {type(v).__name__} {repr(v)[:60]}, not a number")
            if isinstance(v, int) and not -FLOAT32_MAX <= v <= FLOAT32_MAX:  # 10**400: no float holds it
                raise InvalidInput(f"row {i}, feature {j} is an integer of {len(str(abs(v)))} digits: "
                                   "features must be finite float32 numbers")
    lengths = sorted({len(r) for r in rows_in})
    if len(lengths) > 1:
        raise InvalidInput(f"rows have different lengths ({lengths}); each needs {n_features} features")
    with np.errstate(over="ignore"):  # 1e39 becomes inf in float32, and is refused as not finite
        X = np.asarray(rows_in, dtype=np.float32) if rows_in else np.zeros((0, n_features), np.float32)
    if X.ndim != 2:  # [[]]: rows without features
        X = X.reshape(len(rows_in), -1)
    return X


FLOAT32_MAX = 3.4028234663852886e38


def check_prompt(prompt: Any, *, max_chars: int) -> str:
    """A prompt is text the tokenizer can take: a non-empty string of valid Unicode (no lone surrogates), with
    no control characters but tab and newlines, and not longer than ``max_chars``."""
    if not isinstance(prompt, str) or not prompt:
        raise InvalidInput('"prompt" must be a non-empty string')
    if len(prompt) > max_chars:
        raise InvalidInput(f'"prompt" has {len(prompt):,} characters; at most {max_chars:,}')
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput('"prompt" is not valid Unicode text (a lone surrogate such as \\ud800)') from None
    bad = next((c for c in prompt if (ord(c) < 32 and c not in "\t\n\r") or 127 <= ord(c) < 160), None)
    if bad is not None:
        raise InvalidInput(f'"prompt" holds the control character U+{ord(bad):04X}; only tab and newlines may appear')
    return prompt


def _internal(family: str, exc: BaseException) -> Any:
    """A failure that is not ours to name: logged with its traceback, answered 500 in the same JSON shape and
    counted by status like every other error."""
    logging.getLogger("convergence.serving").error("%s request failed", family, exc_info=exc)
    return _error(ConvergenceError("the server failed to answer; the failure is in its log"), family)


def _killed(replica: Replica) -> dict[str, Any] | None:
    """The kill switch that stops this replica: its own name's, or (a compiled or INT8 copy) its network's."""
    for name in replica.loaded.extra.get("kill_names", (replica.loaded.name,)):
        if (state := replica.watcher.state(name)) is not None:
            return state
    return None


async def _caller(replica: Replica, request: Any, *, required: bool) -> Any:
    """The authenticated principal, or None when nothing is required and no credential was sent; 401 when a
    credential is required or was sent and is not valid. Cached credentials are answered on the event loop;
    one that needs the database or the issuer is checked in a thread, so other requests keep flowing."""
    import anyio

    header = request.headers.get("authorization")
    if not required and not header:
        return None
    return replica.auth.cached(header) or await anyio.to_thread.run_sync(replica.auth.from_header, header)


def _safe_answer(replica: Replica, kill: dict[str, Any]) -> float:
    """What a killed trading model answers: the safe output the kill recorded (the value approved for the
    production version of the name that was killed, also when a compiled copy serves), or 503."""
    safe = kill.get("safe_output")
    if safe is None:
        raise Unavailable(f"{replica.loaded.name} is stopped by its kill switch: {kill['reason']}")
    return safe


def _replica_app_class() -> Any:
    """Starlette, except that ``POST /predict`` goes straight to its handler: at 64 connections Starlette's
    exception layers, router and route matching around the handler were a fifth of the event loop's time
    (py-spy, bench/serving_bench.py). A Starlette still, so BentoML's mount sees the routes it serves."""
    from starlette.applications import Starlette
    from starlette.requests import Request

    class ReplicaApp(Starlette):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] == "POST" and _route_path(scope) == "/predict":
                scope["app"] = self
                try:
                    response = await self.fast_predict(Request(scope, receive))
                except Exception as exc:  # noqa: BLE001 - the handler answers its own errors; this is the last net
                    response = _internal("trading", exc)
                await response(scope, receive, send)
                return
            await super().__call__(scope, receive, send)

    return ReplicaApp


def _route_path(scope: Any) -> str:
    """The path below where the app is mounted (BentoML mounts it at ``/``, so usually the whole path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def build_app() -> Any:
    """The ASGI app every replica mounts; it serves whichever family's replica this process started."""
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from convergence.governance import contract

    def replica_for(family: str) -> Replica:
        replica = REPLICAS.get(family)
        if replica is None:
            raise Unavailable(f"this server does not serve a {family} model")
        return replica

    async def predict(request: Any) -> Any:
        t0 = time.perf_counter()
        try:
            replica = replica_for("trading")
            await _caller(replica, request, required=replica.auth_required)
            raw = await _body(request, replica.max_body)
            arm, ro = replica.arm, replica.rollout  # one request, one view of the split
            X = parse_rows(raw, request.headers.get("content-type", ""), arm.loaded.extra["n_features"],
                           replica.max_rows)
            ids = IDS.take(len(X))
            if (kill := _killed(replica)) is not None:
                replica.metrics.inc("killed_total", len(X), model=arm.loaded.name)
                safe = _safe_answer(replica, kill)
                arm.logger.add(ids, X, [safe] * len(X), (time.perf_counter() - t0) * 1000 / len(X), killed=True)
                head, _, headers = arm.label
                return JSONResponse({**head, "prediction_ids": ids, "predictions": [safe] * len(X),
                                     "killed": True, "reason": kill["reason"]}, headers=headers)
            key = split_key(request.headers.get(KEY_HEADER), raw) if ro is not None else b""
            served, y = await rows_answer(arm, ro, X, key)
            if not np.isfinite(y).all():  # finite features far outside what the net knows can overflow it
                raise InvalidInput(f"row {int(np.argmin(np.isfinite(y)))}: the model's output is not finite for "
                                   "these features (far outside the range it was trained on)")
        except ConvergenceError as exc:
            return _error(exc, "trading")
        except Exception as exc:  # noqa: BLE001 - never a bare traceback, always counted
            return _internal("trading", exc)
        latency = time.perf_counter() - t0
        m = replica.metrics
        m.observe("latency_seconds", latency, Metrics.LATENCY_BUCKETS)
        m.inc("predictions_total", len(X), version_id=str(served.loaded.version_id))
        served.logger.add(ids, contract.trading.log_rows(X), y, latency * 1000 / len(X))  # the contract's log
        # The same JSON as json.dumps of head + predictions, written directly (the ids are hex and digits, and
        # float's repr of a finite number is JSON): json.dumps was 4 % of the event loop at 64 connections.
        ids_json, y_json = '", "'.join(ids), ", ".join(map(repr, y.tolist()))
        _, head_json, headers = served.label
        body = f'{head_json}, "prediction_ids": ["{ids_json}"], "predictions": [{y_json}]}}'
        return Response(body, media_type="application/json", headers=headers)

    async def generate(request: Any) -> Any:
        t0 = time.perf_counter()
        try:
            replica = replica_for("language")
            await _caller(replica, request, required=replica.auth_required)
            data = _json_object(await _body(request, replica.max_body), {"prompt", "max_tokens", "temperature", "seed"})
            arm, ro = replica.arm, replica.rollout
            prompt, max_tokens = data.get("prompt"), data.get("max_tokens", 32)
            temperature, seed = data.get("temperature", 0.0), data.get("seed", 0)
            context = arm.loaded.extra["context"]
            prompt = check_prompt(prompt, max_chars=replica.max_prompt_chars)
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens < context:
                raise InvalidInput(f'"max_tokens" must be an integer from 1 to {context - 1}')
            if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                    or not math.isfinite(temperature) or temperature < 0):
                raise InvalidInput('"temperature" must be a finite number ≥ 0')
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
                raise InvalidInput('"seed" must be a non-negative integer')
            if (kill := _killed(replica)) is not None:
                replica.metrics.inc("killed_total", 1, model=arm.loaded.name)
                raise Unavailable(f"{arm.loaded.name} is stopped by its kill switch: {kill['reason']}")
            # canary by prompt: one prompt (or one x-request-key) is always answered by one version
            key = split_key(request.headers.get(KEY_HEADER), prompt.encode()) if ro is not None else b""
            served, out = await prompt_answer(arm, ro, prompt, (max_tokens, float(temperature), seed), key)
        except ConvergenceError as exc:
            return _error(exc, "language")
        except Exception as exc:  # noqa: BLE001 - never a bare traceback, always counted
            return _internal("language", exc)
        latency = time.perf_counter() - t0
        [pid] = IDS.take(1)
        replica.metrics.observe("latency_seconds", latency, Metrics.LATENCY_BUCKETS)
        replica.metrics.inc("predictions_total", 1, version_id=str(served.loaded.version_id))
        replica.metrics.inc("tokens_total", out["tokens"])
        # The log is the model contract's signature (what drift reads): lengths, finish, likelihood, token bands.
        served.logger.add([pid], out["logged"][None], [out["tokens"]], latency * 1000)
        head, _, headers = served.label
        return JSONResponse({**head, "prediction_id": pid, "text": out["text"], "tokens": out["tokens"],
                             "finish_reason": out["finish_reason"]}, headers=headers)

    async def info(request: Any) -> Any:
        out = {}
        for family, r in REPLICAS.items():
            public = {"model": r.loaded.name, "version": r.loaded.version, "version_id": r.loaded.version_id,
                      "killed": _killed(r) is not None}
            try:  # a caller holding a role sees who killed it and why, the device and the queues
                caller = await _caller(r, request, required=False)
                detailed = caller is not None and bool(caller.roles)
            except ConvergenceError:
                detailed = False
            ro = r.rollout
            if ro is not None:  # anyone may see that a newcomer serves beside production, and its share
                public["rollout"] = {"deployment_id": ro.id, "mode": ro.mode, "percent": ro.percent,
                                     "version_id": ro.arm.loaded.version_id, "tripped": ro.tripped is not None}
            out[family] = public if not detailed else {
                **public, "stage": r.loaded.stage, "role": r.loaded.extra.get("role"),
                "runtime": r.loaded.extra.get("runtime"), "why": r.loaded.extra.get("why"),
                "device": r.loaded.device, "kill": _killed(r),
                "safe_output": r.loaded.safe_output, "queue_depth": r.batcher.depth, "logged": r.logger.written,
                "log_failed": r.logger.failed,
                **({"rollout_measured": ro.measured()} if ro is not None else {})}
        return JSONResponse(out)

    async def metrics(request: Any) -> Any:
        return Response(render_metrics(), media_type="text/plain; version=0.0.4")

    app = _replica_app_class()(routes=[Route("/predict", predict, methods=["POST"]),
                                       Route("/generate", generate, methods=["POST"]),
                                       Route("/info", info, methods=["GET"]),
                                       Route("/metrics", metrics, methods=["GET"])],
                               exception_handlers={HTTPException: _http_error, Exception: _unforeseen})
    app.fast_predict = predict
    return app


def render_metrics() -> str:
    lines = []
    for replica in REPLICAS.values():
        replica.metrics.set("queue_depth", replica.batcher.depth)
        replica.metrics.set("shed_total", 0)  # the batcher queues; it never sheds
        lines.append(replica.metrics.render())
    return "".join(lines)

