"""Reading a drift window out of the prediction log in bulk, as the model contract logged it.

The window is read in chunks of ``CHUNK`` rows, straight from the driver (a server-side cursor on
PostgreSQL, SQLite's own cursor), and only the bytes of the monitored columns: when the watched positions
are one run of the logged float32 vector (the trading signature's newest bar, the language signature's
head), the database cuts them out (``substr``), so a 208-feature row ships 104 bytes, not 832. Each chunk
is decoded with one ``numpy.frombuffer`` into a preallocated float32 matrix; no per-row Python object
outlives its chunk. ``ix_prediction_log_version_ts`` makes a one-hour window of a day read only that hour.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from convergence.governance._contract_io import LOG_DTYPE
from convergence.governance._models import PredictionLog, ReferenceProfile
from convergence.platform.errors import InvalidInput

CHUNK = 65_536  # rows per fetch: ~7 MB of monitored trading bytes, the driver's tuples freed after each


def contiguous(positions: list[int]) -> tuple[int, int] | None:
    """(first, count) when the watched input positions are one contiguous run, else None."""
    watched = [p for p in positions if p >= 0]
    if watched and watched == list(range(watched[0], watched[0] + len(watched))):
        return watched[0], len(watched)
    return None


def window_where(versions: list[int], since: dt.datetime, until: dt.datetime) -> Any:
    # a kill's safe outputs are not the model's answers
    return and_(PredictionLog.model_version_id.in_(versions), PredictionLog.ts >= since, PredictionLog.ts < until,
                PredictionLog.killed.is_(False))


def window_matrix(session: Session, profile: ReferenceProfile, since: dt.datetime, until: dt.datetime,
                  versions: list[int] | None = None) -> np.ndarray:
    """The profile's columns (watched inputs, then the output) for every logged answer of ``versions`` (default:
    the profile's own) in [since, until), as float32 rows × columns."""
    versions = versions or [profile.model_version_id]
    where = window_where(versions, since, until)
    total = session.execute(select(func.count()).select_from(PredictionLog).where(where)).scalar_one()
    if not total:
        raise InvalidInput(f"no predictions of version {profile.model_version_id} were logged between "
                           f"{since.isoformat()} and {until.isoformat()}", hint="widen --window or --since/--until")
    positions = list(profile.positions)
    watched = [p for p in positions if p >= 0]
    run = contiguous(positions)
    width = len(watched) if run else max(watched, default=-1) + 1
    out = np.empty((total, len(positions)), dtype=np.float32)
    filled = _read_binary(session, where, run, width, positions, out)
    filled = _read_json(session, where, positions, out, filled)
    if filled != total:  # rows logged while we read: the count was taken first, the window may have grown
        out = out[:filled]
    return out


def _place(block: np.ndarray, outputs: np.ndarray, positions: list[int], run: Any, out: np.ndarray, at: int) -> None:
    """Copy a decoded chunk's watched columns (in the profile's order) and outputs into ``out`` from row ``at``."""
    n = len(block)
    col = 0
    for i, p in enumerate(positions):
        if p < 0:
            out[at:at + n, i] = outputs
        else:
            out[at:at + n, i] = block[:, col if run else p]
            col += 1


def window_query(where: Any, run: tuple[int, int] | None) -> Any:
    """The statement that reads a window's float32-logged rows: only the watched run's bytes when there is one."""
    blob = (func.substr(PredictionLog.features_f32, run[0] * 4 + 1, run[1] * 4) if run
            else PredictionLog.features_f32)
    return select(blob, PredictionLog.output).where(where, PredictionLog.features_f32.is_not(None))


def _read_binary(session: Session, where: Any, run: tuple[int, int] | None, width: int, positions: list[int],
                 out: np.ndarray) -> int:
    """The float32-logged rows, chunk by chunk, decoded with one frombuffer per chunk; the rows read."""
    query = window_query(where, run)
    streamed = query.execution_options(stream_results=True, yield_per=CHUNK)  # a server-side cursor on PostgreSQL
    filled, row_bytes = 0, width * 4
    for chunk in session.connection().execute(streamed).partitions(CHUNK):
        if filled + len(chunk) > len(out):
            chunk = chunk[:len(out) - filled]
        blobs = [b for b, _ in chunk]
        raw = b"".join(blobs) if run else b"".join(bytes(b[:row_bytes]) for b in blobs)
        if len(raw) != len(chunk) * row_bytes:
            short = sum(len(b) < row_bytes for b in blobs)
            raise InvalidInput(f"{short} logged predictions have fewer than {max(positions) + 1} features: the log "
                               "lacks columns the reference profile monitors")
        block = np.frombuffer(raw, dtype=LOG_DTYPE).reshape(len(chunk), width)
        _place(block, np.fromiter((o for _, o in chunk), dtype=np.float32, count=len(chunk)), positions, run, out,
               filled)
        filled += len(chunk)
    return filled


def _read_json(session: Session, where: Any, positions: list[int], out: np.ndarray, filled: int) -> int:
    """Rows logged as JSON lists (the first wave's, and callers of ``log_predictions`` with lists): few, read as
    they are."""
    rows = session.execute(select(PredictionLog.features, PredictionLog.output).where(
        where, PredictionLog.features_f32.is_(None))).all()
    if not rows:
        return filled
    need = max((p for p in positions if p >= 0), default=-1) + 1
    short = sum(len(f or ()) < need for f, _ in rows)
    if short:
        raise InvalidInput(f"{short} logged predictions have fewer than {need} features: the log lacks columns the "
                           "reference profile monitors")
    rows = rows[:len(out) - filled]
    block = np.array([[f[p] for p in positions if p >= 0] for f, _ in rows], dtype=np.float32).reshape(len(rows), -1)
    _place(block, np.array([o for _, o in rows], dtype=np.float32), positions, True, out, filled)
    return filled + len(rows)
