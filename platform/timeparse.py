"""Parse the times people type: ISO 8601 dates and instants, ``now``, and ages like ``2h`` or ``7d``.

Naive times are taken as UTC (the audit trail's zone); anything else is one clear ``InvalidInput``.
"""

from __future__ import annotations

import datetime as dt
import re

from convergence.platform.errors import InvalidInput

__all__ = ["parse_future", "parse_time"]

_AGE = re.compile(r"^-?(\d+(?:\.\d+)?)\s*(s|m|h|d|w)(?:\s+ago)?$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, *, now: dt.datetime | None = None, option: str = "time") -> dt.datetime:
    """``2026-11-24``, ``2026-11-24T08:00:00+01:00``, ``now``, ``90m`` / ``2h ago`` / ``-7d`` (that long ago)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    text = (value or "").strip().lower()
    if text == "now":
        return now
    if match := _AGE.match(text):
        try:
            return now - dt.timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2)])
        except (OverflowError, ValueError):
            raise InvalidInput(f"{option} {value!r} reaches before year 1") from None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        return parsed.replace(tzinfo=dt.timezone.utc) if parsed.tzinfo is None else parsed.astimezone(dt.timezone.utc)
    except ValueError:
        raise InvalidInput(
            f"{option} {value!r} is not a time: use ISO 8601 (2026-11-24 or 2026-11-24T08:00:00Z), "
            "'now', or an age such as 90m, 2h, 7d") from None
    except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
        raise InvalidInput(f"{option} {value!r} falls outside the years 1 to 9999 in UTC") from None


def parse_future(value: str, *, now: dt.datetime | None = None, option: str = "time") -> dt.datetime:
    """An instant ahead: ``30d`` / ``12h`` from now, or an ISO 8601 date or instant (for expiries)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    text = (value or "").strip().lower()
    if text.startswith("-") or text.endswith("ago"):  # an age reaches back: an expiry must lie ahead
        raise InvalidInput(f"{option} {value!r} is in the past: give a duration ahead (30d, 12h) or a future date")
    if match := _AGE.match(text.lstrip("+")):
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
        if seconds > 100 * 366 * 86400:
            raise InvalidInput(f"{option} {value!r} is more than a century away")
        return now + dt.timedelta(seconds=seconds)
    when = parse_time(value, now=now, option=option)
    if when <= now:
        raise InvalidInput(f"{option} {value!r} is not in the future")
    return when
