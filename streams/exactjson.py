"""JSON that never changes a number: orjson's speed, with the stdlib's exact integers where orjson has none.

A clean record may carry an integer of any size in `metadata` (the validate stage's parser, like Python's,
takes up to 4,300 digits), and PostgreSQL's jsonb stores any JSON number exactly. orjson reads integers from
-2**63 to 2**64 - 1 only: it makes a float of a larger one (precision lost, silently), refuses one beyond a
double's range, and refuses to write one. So a document holding one is decoded again by the stdlib (`loads`),
and such an integer is written as its own digits, still a JSON number (`dumps`). Used wherever a record is
decoded or re-encoded after validation: the write stage, the anomaly events (their `record` is the flagged
point), the archive stage. A leaf: imports nothing of ours.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
# A JSON number of 19 digits or more in value position: where an integer orjson refused can be (every integer
# outside [-2**63, 2**64 - 1] has at least 19 digits). Searched only when orjson refused the text.
_LONG_NUMBER = re.compile(rb"[:,\[]\s*-?\d{19}")
_WIDE = float(2**63)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # as orjson (and PostgreSQL's jsonb) says


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range for a double")  # orjson refuses it too
    return value


def _exact_loads(raw: bytes) -> Any:
    """The stdlib's decode (exact ints), refusing what orjson refuses besides (NaN, Infinity, a float beyond a
    double's range), so which decoder read a document never decides whether it is accepted."""
    return json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)


def _holds_wide_float(value: Any) -> bool:
    """A float of magnitude 2**63 or more at any depth: what orjson makes of an integer beyond 64 bits."""
    if type(value) is float:
        return not -_WIDE < value < _WIDE
    if type(value) is dict:
        return any(_holds_wide_float(v) for v in value.values())
    if type(value) is list:
        return any(_holds_wide_float(v) for v in value)
    return False


def _at(doc: Any, path: Sequence[str]) -> Any:
    for key in path:
        if type(doc) is not dict:
            return None
        doc = doc.get(key)
    return doc


def loads(raw: bytes, free: Sequence[str] = ("metadata",)) -> Any:
    """Decode without changing a value: orjson (fast), and the stdlib again (exact ints) for the rare document
    whose free-form part (`free`: the path to it; a record's `metadata`) came out holding a float of 2**63 or
    more (an integer beyond 64 bits, or a float that large: decoded the same either way), or that orjson
    refused for a number of 19+ digits. Only the free-form part is checked: every other field of a record is
    typed (streams/models.py), so no other field can hold such an integer."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        if _LONG_NUMBER.search(raw) is None:
            raise
        return _exact_loads(raw)
    # One key (a record's metadata, the usual call) read directly: this runs for every record the write stage
    # and the archive decode.
    part = (doc.get(free[0]) if type(doc) is dict else None) if len(free) == 1 else _at(doc, free)
    if part and _holds_wide_float(part):
        return _exact_loads(raw)
    return doc


def bigints_verbatim(value: Any) -> Any:
    """`value` with every integer orjson cannot write replaced by its own digits (an orjson.Fragment)."""
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        return orjson.Fragment(str(value))
    if isinstance(value, dict):
        return {k: bigints_verbatim(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [bigints_verbatim(v) for v in value]
    return value


def dumps(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """orjson.dumps, writing an integer beyond 64 bits as its exact digits instead of raising."""
    try:
        return orjson.dumps(value, default=default)
    except TypeError as exc:
        if "Integer exceeds 64-bit range" not in str(exc):
            raise
        return orjson.dumps(bigints_verbatim(value), default=default)
