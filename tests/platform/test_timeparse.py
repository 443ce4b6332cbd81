"""Times people type."""

from __future__ import annotations

import datetime as dt

import pytest

from convergence.platform.errors import InvalidInput
from convergence.platform.timeparse import parse_future, parse_time

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("text,expected", [
    ("now", NOW),
    ("2h", NOW - dt.timedelta(hours=2)),
    ("90m ago", NOW - dt.timedelta(minutes=90)),
    ("-7d", NOW - dt.timedelta(days=7)),
    ("2026-11-01", dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)),
    ("2026-11-01T10:00:00Z", dt.datetime(2026, 11, 1, 10, tzinfo=dt.timezone.utc)),
    ("2026-11-01T10:00:00+02:00", dt.datetime(2026, 11, 1, 8, tzinfo=dt.timezone.utc)),
])
def test_accepted_forms(text: str, expected: dt.datetime) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "", "5 parsecs"])
def test_malformed_times_are_one_clear_error(text: str) -> None:
    with pytest.raises(InvalidInput, match="is not a time"):
        parse_time(text, now=NOW, option="--since")


@pytest.mark.parametrize("text", ["-30d", "30d ago", "2026-11-01", "now"])
def test_an_expiry_never_lies_in_the_past(text: str) -> None:
    with pytest.raises(InvalidInput, match="past|not in the future"):
        parse_future(text, now=NOW, option="--expires")
    assert parse_future("30d", now=NOW) == NOW + dt.timedelta(days=30)
