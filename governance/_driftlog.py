"""Reading a drift window out of the prediction log in bulk, as the model contract logged it.

The window is read in chunks of ``CHUNK`` rows, straight from the driver (a server-side cursor on
PostgreSQL, SQLite's own cursor), and only the bytes of the monitored columns: when the watched positions
are one run of the logged float32 vector (the trading signature's newest bar, the language signature's
head), the database cuts them out (``substr``), so a 208-feature trading row ships 52 bytes, not 832. Each
chunk is decoded with one ``numpy.frombuffer`` into a preallocated float32 matrix; no per-row Python object
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


class _Window:
    """The window's float32 matrix, preallocated from a count taken first. On PostgreSQL each statement sees its
    own snapshot: rows committed between the count and the reads land in an overflow block, never dropped."""

    def __init__(self, rows: int, columns: int) -> None:
        self.out, self.filled, self.extra = np.empty((rows, columns), dtype=np.float32), 0, []

    def add(self, block: np.ndarray) -> None:
        head = block[:len(self.out) - self.filled]
        self.out[self.filled:self.filled + len(head)] = head
        self.filled += len(head)
        if len(head) < len(block):
            self.extra.append(np.array(block[len(head):], dtype=np.float32))

    def matrix(self) -> np.ndarray:
        out = self.out[:self.filled]
        return np.concatenate([out, *self.extra]) if self.extra else out


def window_matrix(session: Session, profile: ReferenceProfile, since: dt.datetime, until: dt.datetime,
                  versions: list[int] | None = None) -> np.ndarray:
    """The profile's columns (watched inputs, then the output when watched) for every logged answer of
    ``versions`` (default: the profile's own) in [since, until), as float32 rows × columns."""
    versions = versions or [profile.model_version_id]
    where = window_where(versions, since, until)
    total = session.execute(select(func.count()).select_from(PredictionLog).where(where)).scalar_one()
    if not total:
        raise InvalidInput(f"no predictions of version {profile.model_version_id} were logged between "
                           f"{since.isoformat()} and {until.isoformat()}", hint="widen --window or --since/--until")
    positions = list(profile.positions)
    window = _Window(total, len(positions))
    _read_binary(session, where, contiguous(positions), positions, window)
    _read_json(session, where, positions, window)
    return window.matrix()


def _block(values: np.ndarray, outputs: np.ndarray, positions: list[int], run: Any) -> np.ndarray:
    """A decoded chunk's columns in the profile's order: watched values (``values`` holds just the run, or whole
    vectors), then the outputs where -1 asks for them."""
    cols = [outputs if p < 0 else values[:, p - run[0] if run else p] for p in positions]
    return np.column_stack(cols) if cols else np.empty((len(values), 0), np.float32)


def window_query(where: Any, run: tuple[int, int] | None) -> Any:
    """The statement that reads a window's float32-logged rows: only the watched run's bytes when there is one."""
    blob = (func.substr(PredictionLog.features_f32, run[0] * 4 + 1, run[1] * 4) if run
            else PredictionLog.features_f32)
    return select(blob, PredictionLog.output).where(where, PredictionLog.features_f32.is_not(None))


def _short(count: int, positions: list[int]) -> InvalidInput:
    return InvalidInput(f"{count} logged predictions have fewer than {max(positions) + 1} features: the log lacks "
                        "columns the reference profile monitors")


def _read_binary(session: Session, where: Any, run: tuple[int, int] | None, positions: list[int],
                 window: _Window) -> None:
    """The float32-logged rows, chunk by chunk, decoded with one frombuffer per chunk."""
    watched = [p for p in positions if p >= 0]
    width = len(watched) if run else max(watched, default=-1) + 1
    streamed = window_query(where, run).execution_options(stream_results=True, yield_per=CHUNK)  # server-side cursor
    row_bytes = width * 4
    for chunk in session.connection().execute(streamed).partitions(CHUNK):
        blobs = [b for b, _ in chunk]
        raw = b"".join(blobs) if run else b"".join(bytes(b[:row_bytes]) for b in blobs)
        if len(raw) != len(chunk) * row_bytes:
            raise _short(sum(len(b) < row_bytes for b in blobs), positions)
        values = np.frombuffer(raw, dtype=LOG_DTYPE).reshape(len(chunk), width)
        window.add(_block(values, np.fromiter((o for _, o in chunk), dtype=np.float32, count=len(chunk)),
                          positions, run))


def _read_json(session: Session, where: Any, positions: list[int], window: _Window) -> None:
    """Rows logged as JSON lists (the first wave's, and callers of ``log_predictions`` with lists): few, read as
    they are."""
    rows = session.execute(select(PredictionLog.features, PredictionLog.output).where(
        where, PredictionLog.features_f32.is_(None))).all()
    if not rows:
        return
    need = max((p for p in positions if p >= 0), default=-1) + 1
    short = sum(len(f or ()) < need for f, _ in rows)
    if short:
        raise _short(short, positions)
    values = np.array([f[:need] for f, _ in rows], dtype=np.float32).reshape(len(rows), need)
    window.add(_block(values, np.array([o for _, o in rows], dtype=np.float32), positions, None))
