"""Which version serves, loading it safely, and running it in batches.

Only an approved or production version may serve; the artifact's SHA-256 is checked on load (through
the registry). Concurrent requests are batched inside the service: a single consumer takes whatever is
queued (up to the batch limit) the moment the model is free, so batches grow with load and nothing is
ever shed; the queue is the only wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import numpy as np

from convergence.platform.errors import InvalidInput, NotFound, PolicyViolation

SERVABLE = ("approved", "production")
DEFAULT_NAMES = {"trading": "es-trading-student", "language": "sotu-lm-student"}


@dataclasses.dataclass
class Loaded:
    version_id: int
    name: str
    version: int
    family: str
    stage: str
    model: Any
    extra: dict[str, Any]
    device: str
    safe_output: float | None = None  # fixed by the approver: what a kill answers instead of 503


def source_version(mv: Any) -> Any:
    """The version a compiled or INT8 copy was made from (the network whose kill switch and rollouts it follows);
    any other version is its own."""
    return mv.parent if mv.role in ("compiled", "quantized") and mv.parent is not None else mv


def resolve(*, session: Any, family: str, name: str | None = None, version_id: int | None = None,
            prefer_int8: bool | None = False) -> Any:
    """The version to serve (see ``choose``), as the ledger recorded it."""
    return choose(session=session, family=family, name=name, version_id=version_id, prefer_int8=prefer_int8)[0]


def choose(*, session: Any, family: str, name: str | None = None, version_id: int | None = None,
           prefer_int8: bool | None = None) -> tuple[Any, str]:
    """The version to serve and why: ``version_id`` if approved or in production; else NAME's production version
    or, on a CPU by default (``prefer_int8`` None), whichever of it and its approved compiled and INT8 children
    the registry's own measurements show fastest at batch 1; ``prefer_int8`` True takes the INT8 child, False
    the production version itself. Each as the ledger recorded it (IntegrityError when the table disagrees)."""
    from sqlalchemy import select

    from convergence import governance as gov

    if family not in DEFAULT_NAMES:
        raise InvalidInput(f"unknown model family {family!r}: use trading or language")
    if version_id is not None:
        mv = gov.get_model(session=session, version_id=version_id)
        if mv.family != family:
            raise InvalidInput(f"version {version_id} ({mv.name}) is a {mv.family} model, not {family}")
        if mv.stage not in SERVABLE:
            raise PolicyViolation(f"version {version_id} ({mv.name} v{mv.version}) is {mv.stage}: only approved or "
                                  "production versions may serve",
                                  hint="validate and approve it (two different people) first")
        gov.check_recorded(session=session, version=mv)  # the stage and SHA-256 the ledger recorded, not the table's
        return mv, f"version {version_id} was asked for"
    name = name or DEFAULT_NAMES[family]
    versions = list(session.execute(select(gov.ModelVersion).where(gov.ModelVersion.name == name)).scalars())
    if not versions:
        raise NotFound(f"no model called {name!r}", hint="`cvg models list` shows the registry")
    live = [v for v in versions if v.stage == "production"]
    if not live:
        raise PolicyViolation(f"{name!r} has no version in production (stages: "
                              f"{', '.join(sorted({v.stage for v in versions}))})",
                              hint="promote an approved version, or pass --version N of an approved one")
    mv = live[-1]
    if mv.family != family:
        raise InvalidInput(f"{name!r} is a {mv.family} model, not {family}")
    gov.check_recorded(session=session, version=mv)
    if prefer_int8 is False:
        return mv, (f"the production version of {name}" + (" (--float)" if family == "trading" else ""))
    children = list(session.execute(select(gov.ModelVersion).where(
        gov.ModelVersion.parent_id == mv.id, gov.ModelVersion.role.in_(("compiled", "quantized")),
        gov.ModelVersion.stage.in_(SERVABLE)).order_by(gov.ModelVersion.id.desc())).scalars())
    if prefer_int8:
        child = next((c for c in children if c.role == "quantized"), None)
        if child is None:
            return mv, f"the production version of {name}: it has no approved INT8 copy"
        gov.check_recorded(session=session, version=child)
        return child, f"the approved INT8 copy of {name}'s production version (--int8)"
    return _fastest(session, mv, children)


def _fastest(session: Any, mv: Any, children: list[Any]) -> tuple[Any, str]:
    """The production version or one of its approved compiled/INT8 children, whichever was measured fastest at
    batch 1 when it was registered (a child whose compile gate did not pass, or without a figure, never)."""
    from convergence import governance as gov

    def batch1(v: Any) -> float:
        value = (v.metrics or {}).get("latency_batch1_s")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")
        return float(value) if ok else float("inf")

    def compiled_here(c: Any) -> bool:  # by the compile step, from this very version, its gate passed
        params = c.params or {}
        gate = params.get("compile_gate")
        return (c.family == "trading" and params.get("compiled_from") == mv.id and isinstance(gate, dict)
                and gate.get("passed") is True)

    eligible = [c for c in children if compiled_here(c) and batch1(c) < float("inf")]
    if not eligible:
        return mv, f"the production version of {mv.name}: it has no approved compiled or INT8 copy"
    ranked = sorted([mv, *eligible], key=batch1)
    best = ranked[0]
    if best is not mv:
        gov.check_recorded(session=session, version=best)
    figures = ", ".join(f"{v.name} v{v.version} {batch1(v) * 1e6:.1f} µs" if batch1(v) < float("inf") else
                        f"{v.name} v{v.version} unmeasured" for v in ranked[:4])
    more = f" and {len(ranked) - 4} more" if len(ranked) > 4 else ""
    return best, f"fastest at batch 1 as measured at registration ({figures}{more})"


def load(*, family: str, name: str | None = None, version_id: int | None = None,
         prefer_int8: bool | None = None, why: str | None = None) -> Loaded:
    """Resolve, fetch (SHA-256 checked) and load the model; CUDA when available, CPU otherwise. A compiled
    graph runs in onnxruntime (CUDA's provider when present) with the replica's thread setting."""
    import torch

    from convergence import governance as gov
    from convergence.governance import contract
    from convergence.platform.db import session_scope
    from convergence.platform.settings import get_settings

    cuda = torch.cuda.is_available()
    with session_scope(write=False) as s:
        mv, chosen = choose(session=s, family=family, name=name, version_id=version_id,
                            prefer_int8=False if cuda and prefer_int8 is None else prefer_int8)
        path = gov.load_artifact(session=s, version_id=mv.id)
        info = (mv.id, mv.name, mv.version, mv.family, mv.stage)
        safe_output, role = mv.safe_output, mv.role
        # every answer names the bytes it came from and the approval that let them serve
        traced = {"sha256": mv.artifact_sha256, "approval_seq": gov.rollout.approval_seq(session=s, version_id=mv.id)}
        # a compiled or INT8 copy is its eager network in another form: that network's kill switch stops it too
        # the production version this network is (itself, or the version a copy was made from)
        source = source_version(mv)
        kill_names = (mv.name, source.name) if source is not mv else (mv.name,)
        production_id = source.id
    torch.set_num_threads(1)  # one request thread per worker; batching, not intra-op threads, gives throughput
    if family == "trading":
        net, blob = contract.trading.load_artifact(path, device="cuda" if cuda else "cpu",
                                                   threads=get_settings().serve_onnx_threads)
        runtime = "onnxruntime" if "runtime" in blob else "torch"
        device = net.device if runtime == "onnxruntime" else "cuda" if cuda and not blob.get("quantized") else "cpu"
        extra = {"mean": blob["mean"].astype(np.float32), "std": blob["std"].astype(np.float32),
                 "y_scale": float(blob["y_scale"]), "n_features": int(blob["arch"]["n_in"]),
                 "quantized": bool(blob.get("quantized")), "meta": blob.get("meta", {}), "runtime": runtime}
        model = net if runtime == "onnxruntime" else net.to(device).eval()
    else:
        net, tokenizer, blob = contract.language.load_artifact(path)
        device = "cuda" if cuda else "cpu"
        extra = {"tokenizer": tokenizer, "context": int(blob["arch"]["context"]), "runtime": "torch"}
        model = net.to(device).eval()
    extra.update(role=role, why=why or chosen, kill_names=kill_names, production_id=production_id, **traced)
    return Loaded(*info, model, extra, device, safe_output)


class TradingBatcher:
    """Feature rows in, predictions out; concurrent requests share forward passes.

    With a rollout attached (``rollout``), one cycle serves both versions: production predicts every row of the
    batch (so the rows a canary answers come with production's answer to compare against, at almost no cost),
    the canary predicts only its requests' rows, and after the answers went out the rollout scores the batch
    (``after_batch``: a shadow's forward pass, comparisons, the shadow log)."""

    def __init__(self, loaded: Loaded, *, max_rows: int) -> None:
        self.loaded, self.max_rows = loaded, max_rows
        self.queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[Any], bool]] | None = None
        self.depth = 0
        self.on_batch: Any = None  # callback(rows) for metrics
        self.rollout: Any = None  # serving._rollout.Rollout while one is attached to this (production) batcher

    def predict_now(self, X: np.ndarray) -> np.ndarray:
        import torch

        e = self.loaded.extra
        if e["runtime"] == "onnxruntime":  # the session copies to the GPU itself when it runs on one
            return self.loaded.model(((X - e["mean"]) / e["std"]).astype(np.float32)) * e["y_scale"]
        Xn = torch.from_numpy(((X - e["mean"]) / e["std"]).astype(np.float32))
        with torch.inference_mode():
            if self.loaded.device == "cuda":  # pinned host memory, async copy; .cpu() is the one sync needed
                out = self.loaded.model(Xn.pin_memory().to("cuda", non_blocking=True))
            else:
                out = self.loaded.model(Xn)
        return out.float().cpu().numpy().ravel() * e["y_scale"]

    async def submit(self, X: np.ndarray) -> np.ndarray:
        return (await self.routed(X, canary=None))[0]

    async def routed(self, X: np.ndarray, *, canary: Any) -> tuple[np.ndarray, Any]:
        """Predictions for ``X`` and the rollout whose canary gave them (None: production did). ``canary``: the
        rollout whose canary should answer, as the request saw it; if another one (or none) is attached by the
        time the batch runs, or it tripped, production answers."""
        loop = asyncio.get_running_loop()
        if self.queue is None:
            self.queue = asyncio.Queue()
            loop.create_task(self._run())
        fut: asyncio.Future[Any] = loop.create_future()
        self.depth += 1
        self.queue.put_nowait((X, fut, canary))
        return await fut

    async def _run(self) -> None:
        assert self.queue is not None
        while True:
            items = [await self.queue.get()]
            rows = len(items[0][0])
            while rows < self.max_rows and not self.queue.empty():
                items.append(self.queue.get_nowait())
                rows += len(items[-1][0])
            self.depth -= len(items)
            X = np.concatenate([x for x, _, _ in items]) if len(items) > 1 else items[0][0]
            try:
                y = self.predict_now(X)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request, never lost
                for _, fut, _ in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            if self.on_batch:
                self.on_batch(rows)
            ro, scored = self.rollout, None
            if ro is not None:
                try:
                    scored = ro.answer(items, y)  # its canary's requests get the canary's answers
                except Exception:  # noqa: BLE001 - production answers whatever the rollout could not settle
                    logging.getLogger("convergence.serving").exception("rollout answer failed")
                    ro = None
            start = 0
            for x, fut, _ in items:
                if not fut.done():
                    fut.set_result((y[start:start + len(x)], None))
                start += len(x)
            await asyncio.sleep(0)  # let the answered requests go out before the next batch
            if ro is not None and scored is not None:
                try:
                    ro.after_batch(X, y, scored)
                except Exception:  # noqa: BLE001 - a rollout's scoring must never stop production's batches
                    logging.getLogger("convergence.serving").exception("rollout scoring failed")


@dataclasses.dataclass
class GenRequest:
    prompt: list[int]
    max_tokens: int
    temperature: float
    seed: int
    future: asyncio.Future[tuple[list[int], Any]]


class LanguageBatcher:
    """Prompts in, tokens out; concurrent requests are generated together (one KV-cached pass per step)."""

    def __init__(self, loaded: Loaded, *, max_batch: int, wait_s: float = 0.01) -> None:
        self.loaded, self.max_batch, self.wait_s = loaded, max_batch, wait_s if max_batch > 1 else 0.0
        self.queue: asyncio.Queue[GenRequest] | None = None
        self.depth = 0
        self.on_batch: Any = None

    def generate_now(self, reqs: list[GenRequest]) -> list[tuple[list[int], Any]]:
        """Each request's tokens and what the model thought of the text it served (the contract's ``Score``)."""
        from convergence.governance import contract

        eos = self.loaded.extra["tokenizer"].token_to_id(contract.language.EOS)
        out, scores = contract.language.generate_scored(
            self.loaded.model, [r.prompt for r in reqs], max_new_tokens=max(r.max_tokens for r in reqs),
            temperature=[r.temperature for r in reqs], seed=[r.seed for r in reqs], eos_id=eos,
            limits=[r.max_tokens for r in reqs])
        return list(zip(out, scores, strict=True))

    async def submit(self, prompt: list[int], max_tokens: int, temperature: float,
                     seed: int) -> tuple[list[int], Any]:
        loop = asyncio.get_running_loop()
        if self.queue is None:
            self.queue = asyncio.Queue()
            loop.create_task(self._run())
        fut: asyncio.Future[tuple[list[int], Any]] = loop.create_future()
        self.depth += 1
        self.queue.put_nowait(GenRequest(prompt, max_tokens, temperature, seed, fut))
        return await fut

    async def _run(self) -> None:
        assert self.queue is not None
        while True:
            reqs = [await self.queue.get()]
            # Gather for a few milliseconds (a generation takes tens): clients answered together come back
            # together, and a batch that waits for them runs one pass per token for all of them.
            deadline = time.perf_counter() + self.wait_s
            while len(reqs) < self.max_batch:
                if not self.queue.empty():
                    reqs.append(self.queue.get_nowait())
                    continue
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    reqs.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            self.depth -= len(reqs)
            try:
                # Generation takes milliseconds to seconds: off the event loop, so health checks still answer.
                outs = await asyncio.to_thread(self.generate_now, reqs)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for r in reqs:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            if self.on_batch:
                self.on_batch(len(reqs))
            for r, tokens in zip(reqs, outs, strict=True):
                if not r.future.done():
                    r.future.set_result(tokens)

