"""The stages' Fetch v11 codec gives the bytes and the response aiokafka's own generic codec gives."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v10, FetchRequest_v11, FetchResponse_v11
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stages.fetch import FastFetcher, FastFetchRequest, FetchRequestV11, FetchResponseV11

i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
names = st.one_of(st.none(), st.text(max_size=12))  # non-ASCII too: the length is the UTF-8 bytes'


def arrays(items: st.SearchStrategy[Any], max_size: int = 4) -> st.SearchStrategy[list[Any] | None]:
    return st.one_of(st.none(), st.lists(items, max_size=max_size))  # -1 (null) is a valid length on the wire


request_args = st.tuples(
    i32, i32, i32, i32, st.integers(0, 1), i32, i32,
    arrays(st.tuples(names, arrays(st.tuples(i32, i32, i64, i64, i32)))),
    arrays(st.tuples(names, arrays(i32))),
    names,
)
response_args = st.tuples(
    i32, i16, i32,
    arrays(st.tuples(names, arrays(st.tuples(
        i32, i16, i64, i64, i64, arrays(st.tuples(i64, i64)), i32, st.one_of(st.none(), st.binary(max_size=40)))))),
)


@settings(max_examples=300)
@given(request_args)
def test_a_request_encodes_to_aiokafkas_bytes(args: tuple[Any, ...]) -> None:
    assert FetchRequestV11(*args).encode() == FetchRequest_v11(*args).encode()


@settings(max_examples=300)
@given(response_args, st.binary(max_size=3))
def test_a_response_decodes_to_aiokafkas_response(args: tuple[Any, ...], header: bytes) -> None:
    wire = header + FetchResponse_v11(*args).encode()  # the frame as the connection hands it: header read
    theirs, ours = BytesIO(wire), BytesIO(wire)
    theirs.seek(len(header))
    ours.seek(len(header))
    expected = FetchResponse_v11.decode(theirs)
    got = FetchResponseV11.decode(ours)
    assert type(got) is FetchResponse_v11
    assert got == expected
    assert got.topics == expected.topics  # Struct's __eq__ compares fields; say it for the nested lists too
    assert ours.tell() == theirs.tell() == len(wire)


def test_a_truncated_response_is_an_error_not_a_short_response() -> None:
    wire = FetchResponse_v11(0, 0, 0, [("t", [(0, 0, 5, 5, 0, None, -1, b"abcdef")])]).encode()
    with pytest.raises(Exception):  # noqa: B017 - aiokafka's codec raises its own kinds; the frame is broken
        FetchResponseV11.decode(BytesIO(wire[:-20]))


def _request() -> FetchRequest:
    return FetchRequest(500, 1, 52428800, 1, [("raw.a", [(0, 10, 1048576), (3, 7, 1048576)])], rack_id="")


def test_v11_builds_the_fast_struct_and_its_response_type() -> None:
    struct = FastFetchRequest(500, 1, 52428800, 1, _request().topics).prepare({1: (4, 17)})
    assert type(struct) is FetchRequestV11
    assert struct.RESPONSE_TYPE is FetchResponseV11
    assert struct.encode() == _request().prepare({1: (4, 17)}).encode()


def test_an_older_broker_gets_aiokafkas_own_struct() -> None:
    struct = FastFetchRequest(500, 1, 52428800, 1, _request().topics).prepare({1: (4, 10)})
    assert type(struct) is FetchRequest_v10


def test_the_fetcher_sends_fast_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_get_actions_per_node` hands the fetch routine FastFetchRequests (aiokafka's class otherwise)."""
    def actions(self: Fetcher, assignment: Any) -> Any:
        return [(1, _request()), (2, _request())], {}, 0.1, False, []

    monkeypatch.setattr(Fetcher, "_get_actions_per_node", actions)
    fetcher = FastFetcher.__new__(FastFetcher)  # no client, no fetch routine: only the method under test
    requests, *rest = fetcher._get_actions_per_node(None)
    assert [type(r) for _, r in requests] == [FastFetchRequest, FastFetchRequest]
    assert rest == [{}, 0.1, False, []]
