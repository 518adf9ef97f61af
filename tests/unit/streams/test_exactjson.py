"""exactjson: integers of any size survive a decode and an encode; everything else is orjson's."""

from __future__ import annotations

import json

import orjson
import pytest

from streams import exactjson


@pytest.mark.parametrize("n", [2**64, -(2**63) - 1, 10**40 + 1, -int("9" * 400)])
def test_a_big_integer_survives_a_round_trip(n: int) -> None:
    text = exactjson.dumps({"metadata": {"n": n, "list": [n]}})
    assert json.loads(text) == {"metadata": {"n": n, "list": [n]}}
    assert exactjson.loads(text) == {"metadata": {"n": n, "list": [n]}}


def test_the_free_form_part_is_found_by_its_path() -> None:
    """An anomaly event holds the record (and its metadata) one level down: orjson would make a float of it."""
    raw = b'{"detector": "x", "record": {"metadata": {"n": 18446744073709551617}}}'
    assert isinstance(orjson.loads(raw)["record"]["metadata"]["n"], float)
    assert exactjson.loads(raw, free=("record", "metadata"))["record"]["metadata"]["n"] == 2**64 + 1
    assert exactjson.loads(raw, free=())["record"]["metadata"]["n"] == 2**64 + 1


def test_an_ordinary_document_is_orjsons() -> None:
    doc = {"metadata": {"a": 1.5, "b": [1, 2**63 - 1]}, "price": 1.0}
    assert exactjson.dumps(doc) == orjson.dumps(doc)
    assert exactjson.loads(orjson.dumps(doc)) == doc


def test_what_orjson_refuses_is_still_refused() -> None:
    with pytest.raises(TypeError):
        exactjson.dumps({"x": object()})
    with pytest.raises(ValueError):
        exactjson.loads(b'{"metadata": {"n": 1' + b"0" * 30 + b'}, "x": NaN}')
