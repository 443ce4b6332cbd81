"""Market data: the real E-mini S&P 500 trade prints shipped in PyPI's ``mlfinpy``, or a user's CSV.

The file is read by path (importing mlfinpy would pull numba). Cleaning is explicit: NaNs,
non-positive prices or volumes and out-of-order rows are counted and reported; duplicate
timestamps are normal for trade prints and only counted.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

from convergence.platform.errors import InvalidInput, NotFound, Unavailable

REQUIRED = ("DateTime", "Price", "Volume")


def es_ticks_path() -> Path:
    spec = importlib.util.find_spec("mlfinpy")
    if spec is None or spec.origin is None:
        raise Unavailable("the E-mini tick data ships in the PyPI package mlfinpy, which is not installed",
                          hint="pip install --no-deps mlfinpy==0.1.2 (bash .ci/bootstrap does this)")
    path = Path(spec.origin).parent / "dataset" / "data" / "tick_data.csv"
    if not path.is_file():
        raise NotFound(f"mlfinpy is installed but {path} is missing", hint="reinstall mlfinpy==0.1.2")
    return path


@dataclasses.dataclass
class Ticks:
    """Cleaned trade prints (a pandas frame) with what cleaning did to them."""

    frame: Any
    path: Path | None
    report: dict[str, int]

    def describe(self) -> dict[str, Any]:
        f = self.frame
        return {"format": "csv", "columns": list(REQUIRED), "dtypes": {c: str(f[c].dtype) for c in REQUIRED},
                "span": [str(f["DateTime"].iloc[0]), str(f["DateTime"].iloc[-1])], "cleaning": self.report}


def clean_ticks(frame: Any, path: Path | None = None) -> Ticks:
    """Validate and clean a frame of ticks; raise InvalidInput for what cannot be repaired."""
    import pandas as pd

    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise InvalidInput(f"tick data lacks column(s) {', '.join(missing)}; need {', '.join(REQUIRED)}")
    if frame.empty:
        raise InvalidInput("tick data is empty")
    frame = frame[list(REQUIRED)].copy()
    report = {"rows_in": len(frame)}
    if not pd.api.types.is_datetime64_any_dtype(frame["DateTime"]):
        frame["DateTime"] = pd.to_datetime(frame["DateTime"], errors="coerce")
    frame["Price"] = pd.to_numeric(frame["Price"], errors="coerce")
    frame["Volume"] = pd.to_numeric(frame["Volume"], errors="coerce")
    bad = frame.isna().any(axis=1)
    report["dropped_nan_or_unparsable"] = int(bad.sum())
    frame = frame[~bad]
    nonpos = (frame["Price"] <= 0) | (frame["Volume"] <= 0)
    report["dropped_nonpositive"] = int(nonpos.sum())
    frame = frame[~nonpos]
    if frame.empty:
        raise InvalidInput("no valid ticks left after dropping NaN and non-positive rows")
    out_of_order = int((frame["DateTime"].diff().dt.total_seconds() < 0).sum())
    report["reordered_out_of_order"] = out_of_order
    if out_of_order:
        frame = frame.sort_values("DateTime", kind="stable")
    report["duplicate_timestamps"] = int(frame["DateTime"].duplicated().sum())
    report["rows_out"] = len(frame)
    return Ticks(frame.reset_index(drop=True), path, report)


def load_ticks(*, source: str = "mlfinpy-es-ticks", path: str | None = None, max_ticks: int | None = None) -> Ticks:
    import pandas as pd

    if source == "mlfinpy-es-ticks":
        file = es_ticks_path()
    else:
        if not path:
            raise InvalidInput("data.source = 'csv' needs data.path")
        file = Path(path)
        if not file.is_file():
            raise NotFound(f"no tick file {file}")
    try:
        frame = pd.read_csv(file, nrows=max_ticks)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InvalidInput(f"{file} is not a readable CSV: {exc}") from None
    if "DateTime" in frame.columns:
        frame["DateTime"] = pd.to_datetime(frame["DateTime"], format="mixed", errors="coerce")
    return clean_ticks(frame, file)
