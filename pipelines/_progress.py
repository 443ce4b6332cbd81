"""What a step's workers are doing right now (epoch, step, loss), for the driver's progress line.

Training runs in Ray Train workers and Ray tasks, which do not stream anything to the driver; each worker
tells a small board (a Ray actor when Ray is up, a plain object otherwise) its latest line, and the
runner's ticker reads the board every interval. Telling never fails the work: a lost line is only a
quieter terminal.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

log = logging.getLogger("convergence.pipelines")


class Board:
    """The latest line each worker (``who``) told about each step."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, str]] = {}

    def tell(self, step: str, who: str, text: str) -> None:
        self.latest.setdefault(step, {})[who] = text

    def read(self, step: str) -> str:
        said = self.latest.get(step, {})
        return "; ".join(f"{who}: {text}" if who else text for who, text in sorted(said.items()))


def open_board() -> Any:
    """A board every worker can reach: a Ray actor (no CPU of its own) when Ray is up, else a plain object."""
    try:
        import ray

        if ray.is_initialized():
            return ray.remote(num_cpus=0)(Board).remote()
    except Exception as exc:  # noqa: BLE001 - progress is a convenience; the run goes on without a shared board
        log.debug("no progress actor: %s", exc)
    return Board()


def tell(board: Any, step: str, text: str, who: str = "") -> None:
    """From a worker or the driver: ``board`` may be None (nobody listens), a Board, or an actor handle."""
    if board is None:
        return
    with contextlib.suppress(Exception):  # never fail training over a progress line
        if isinstance(board, Board):
            board.tell(step, who, text)
        else:
            board.tell.remote(step, who, text)


def per_epoch(board: Any, step: str, *, total: int, who: str = "", unit: str = "epoch") -> Any:
    """A callback ``(index, loss)`` that tells ``"epoch 3/8, loss 0.912"``; None when nobody listens."""
    if board is None:
        return None

    def on_epoch(index: int, loss: float) -> None:
        tell(board, step, f"{unit} {index + 1}/{total}, loss {loss:.4g}", who)

    return on_epoch


def read(board: Any, step: str, timeout_s: float = 2.0) -> str:
    """The board's line for ``step`` ("" when nothing was told or the board cannot be reached in time)."""
    if board is None:
        return ""
    try:
        if isinstance(board, Board):
            return board.read(step)
        import ray

        return str(ray.get(board.read.remote(step), timeout=timeout_s))
    except Exception:  # noqa: BLE001 - an unreachable board means only that there is nothing new to say
        return ""


def close(board: Any) -> None:
    """End the board's actor (before Ray shuts down, or when the run is over)."""
    if board is None or isinstance(board, Board):
        return
    with contextlib.suppress(Exception):
        import ray

        ray.kill(board)
