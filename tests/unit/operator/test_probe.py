"""An agent's /status body is untrusted: NaN, Infinity, deep nesting and non-objects are refused, never raised."""

from __future__ import annotations

import pytest

from observatory_operator.kube.probe import ProbeFailed, parse_body


@pytest.mark.parametrize(
    "raw",
    [
        b'{"last_successful_write": NaN}',
        b'{"buffered_points": Infinity}',
        b'{"buffered_points": -Infinity}',
        b"[" * 100_000 + b"]" * 100_000,
        b'"a string"',
        b"\xff\xfe not utf-8",
        b'{"x": 1' + b"0" * 5000 + b"}",
    ],
)
def test_hostile_bodies_are_refused_as_invalid_json(raw: bytes) -> None:
    with pytest.raises(ProbeFailed) as refused:
        parse_body(raw)
    assert refused.value.reason == "invalid_json"


def test_an_ordinary_answer_parses() -> None:
    assert parse_body(b'{"last_successful_write": 1700000000.5, "buffered_points": 3}')["buffered_points"] == 3
