"""Reading a drift window out of the prediction log in bulk, as the model contract logged it.

The window is read in chunks of ``CHUNK`` rows, straight from the driver (a server-side cursor on
PostgreSQL, SQLite's own cursor), and only the bytes of the monitored columns: when the watched positions
are one run of the logged float32 vector (the trading signature's newest bar, the language signature's
head), the database cuts them out (``substr``), so a 208-feature trading row ships 52 bytes, not 832. Each
chunk is decoded with one ``numpy.frombuffer`` into a float32 block; no per-row Python object outlives its
chunk. ``ix_prediction_log_version_ts`` makes a one-hour window of a day read only that hour.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator
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
    """The profile's columns (watched inputs, then the output when watched) for every logged answer of
    ``versions`` (default: the profile's own) in [since, until), as float32 rows × columns. One pass over the
    hour, no count first: a count is one more pass, and on PostgreSQL rows committed between it and the read
    would not fit; the chunks are joined at the end (one more copy of the monitored columns, not of the log)."""
    if since.tzinfo is None or until.tzinfo is None:
        raise InvalidInput("the window's instants need a timezone (UTC is what the log stores)")
    versions = versions or [profile.model_version_id]
    positions = list(profile.positions)
    blocks = _read(session, window_where(versions, since, until), contiguous(positions), positions)
    if not blocks:
        raise InvalidInput(f"no predictions of version {profile.model_version_id} were logged between "
                           f"{since.isoformat()} and {until.isoformat()}", hint="widen --window or --since/--until")
    return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]


def _block(values: np.ndarray, outputs: np.ndarray, positions: list[int], run: Any) -> np.ndarray:
    """A decoded chunk's columns in the profile's order: watched values (``values`` holds just the run, or whole
    vectors), then the outputs where -1 asks for them."""
    cols = [outputs if p < 0 else values[:, p - run[0] if run else p] for p in positions]
    return np.column_stack(cols) if cols else np.empty((len(values), 0), np.float32)


def window_query(where: Any, run: tuple[int, int] | None) -> Any:
    """The statement that reads a window: only the watched run's bytes of a float32 vector when there is one, the
    output, and the JSON list of a row logged that way (NULL, and cheap, for every float32 row)."""
    blob = (func.substr(PredictionLog.features_f32, run[0] * 4 + 1, run[1] * 4) if run
            else PredictionLog.features_f32)
    return select(blob, PredictionLog.output, PredictionLog.features).where(where)


def _short(count: int, positions: list[int]) -> InvalidInput:
    return InvalidInput(f"{count} logged predictions have fewer than {max(positions) + 1} features: the log lacks "
                        "columns the reference profile monitors")


def _chunks(session: Session, stmt: Any) -> Iterator[list[tuple[Any, ...]]]:
    """``stmt``'s rows, CHUNK at a time, from the driver's own cursor in the session's transaction: a server-side
    (named) cursor on PostgreSQL, SQLite's lazy cursor; no per-row SQLAlchemy object. The statement is rendered
    with its values inline (version ids and two instants, escaped by SQLAlchemy's literal rendering)."""
    from sqlalchemy.exc import DBAPIError

    conn = session.connection()
    sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    driver = conn.connection.driver_connection
    cursor = driver.cursor(name=f"cvg_drift_{uuid.uuid4().hex}") if conn.dialect.name == "postgresql" else driver.cursor()
    try:
        cursor.execute(sql)
        while chunk := cursor.fetchmany(CHUNK):
            yield chunk
    except conn.dialect.loaded_dbapi.Error as exc:  # the driver's own error, as SQLAlchemy would have raised it
        raise DBAPIError.instance(sql, None, exc, conn.dialect.loaded_dbapi.Error, dialect=conn.dialect) from exc
    finally:
        cursor.close()


def _read(session: Session, where: Any, run: tuple[int, int] | None, positions: list[int]) -> list[np.ndarray]:
    """The window's rows, chunk by chunk: float32 rows decoded with one frombuffer per chunk; rows logged as JSON
    lists (the first wave's, and callers of ``log_predictions`` with lists) after them, one by one: they are few."""
    watched = [p for p in positions if p >= 0]
    width = len(watched) if run else max(watched, default=-1) + 1
    with contextlib.closing(_chunks(session, window_query(where, run))) as chunks:  # closed on a refusal too
        return _decoded(chunks, width, positions, run)


def _decoded(chunks: Iterator[list[tuple[Any, ...]]], width: int, positions: list[int],
             run: tuple[int, int] | None) -> list[np.ndarray]:
    """The chunks as float32 blocks: a chunk's float32-logged rows, then its JSON-logged ones."""
    blocks: list[np.ndarray] = []
    for chunk in chunks:
        listed: list[tuple[Any, ...]] = []
        if None in [r[0] for r in chunk]:
            listed = [r for r in chunk if r[0] is None]
            chunk = [r for r in chunk if r[0] is not None]
        if chunk:
            blocks.append(_from_bytes(chunk, width, positions, run))
        if listed:
            blocks.append(_from_json(listed, positions))
    return blocks


def _from_bytes(chunk: list[tuple[Any, ...]], width: int, positions: list[int], run: tuple[int, int] | None
                ) -> np.ndarray:
    """Float32-logged rows as a block, decoded with one frombuffer."""
    row_bytes, blobs = width * 4, [r[0] for r in chunk]
    raw = b"".join(blobs) if run else b"".join(bytes(b[:row_bytes]) for b in blobs)
    if len(raw) != len(chunk) * row_bytes:
        raise _short(sum(len(b) < row_bytes for b in blobs), positions)
    values = np.frombuffer(raw, dtype=LOG_DTYPE).reshape(len(chunk), width)
    return _block(values, np.array([r[1] for r in chunk], dtype=np.float32), positions, run)


def _from_json(rows: list[tuple[Any, ...]], positions: list[int]) -> np.ndarray:
    """JSON-logged rows (features as a list, or its JSON text where the driver hands text) as a block."""
    import json

    need = max((p for p in positions if p >= 0), default=-1) + 1
    lists = [json.loads(f) if isinstance(f, (str, bytes)) else (f or []) for _, _, f in rows]
    short = sum(len(f) < need for f in lists)
    if short:
        raise _short(short, positions)
    values = np.array([f[:need] for f in lists], dtype=np.float32).reshape(len(rows), need)
    return _block(values, np.array([o for _, o, _ in rows], dtype=np.float32), positions, None)
