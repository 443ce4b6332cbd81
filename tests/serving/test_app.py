"""Request parsing and validation, without a server: every bad body is named precisely."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from convergence.platform.errors import InvalidInput
from convergence.serving._app import BINARY, MalformedBody, PayloadTooLarge, parse_rows


def test_json_and_binary_bodies_parse_to_the_same_rows() -> None:
    X = np.arange(6, dtype=np.float32).reshape(2, 3)
    from_json = parse_rows(json.dumps({"rows": X.tolist()}).encode(), "application/json", 3, 10)
    from_binary = parse_rows(struct.pack("<II", 2, 3) + X.astype("<f4").tobytes(), BINARY, 3, 10)
    np.testing.assert_array_equal(from_json, X)
    np.testing.assert_array_equal(from_binary, X)


@pytest.mark.parametrize("raw,error,fragment", [
    (b"{", MalformedBody, "not valid JSON"),
    (b"\xff\xfe", MalformedBody, "not valid JSON"),
    (b'{"rows": 5}', InvalidInput, "must be a list of feature rows"),
    (b'{"rows": [5]}', InvalidInput, "row 0 is not a list"),
    (b'{"rows": [[null, 1, 2]]}', InvalidInput, "feature 0 is NoneType"),
    (b'{"rows": [[1, 2, 3]], "id": 1}', InvalidInput, "unknown field(s) id"),
    (b'{"rows": [[1, 2, 3], [1, 2, 3], [1, 2, 3]]}', PayloadTooLarge, "3 rows is over the limit of 2"),
    (b'{"rows": [[]]}', InvalidInput, "rows have 0 features"),
    (b'{"rows": [[1e39, 1, 2]]}', InvalidInput, "feature 0 is inf"),
])
def test_bad_json_bodies(raw: bytes, error: type, fragment: str) -> None:
    with pytest.raises(error) as info:
        parse_rows(raw, "application/json", 3, 2)
    assert fragment in info.value.message
    assert info.value.http_status in (400, 413, 422)


def test_bad_binary_bodies() -> None:
    with pytest.raises(InvalidInput, match="rows have 2 features; this model takes 3"):
        parse_rows(struct.pack("<II", 1, 2) + b"\0" * 8, BINARY, 3, 10)
    with pytest.raises(InvalidInput, match="empty batch"):
        parse_rows(struct.pack("<II", 0, 3), BINARY, 3, 10)
    nan = struct.pack("<II", 1, 3) + np.array([1, np.nan, 2], dtype="<f4").tobytes()
    with pytest.raises(InvalidInput, match="row 0, feature 1 is nan"):
        parse_rows(nan, BINARY, 3, 10)
