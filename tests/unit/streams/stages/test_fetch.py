"""The stages' Fetch v11 codec gives the bytes and the response aiokafka's own generic codec gives."""

from __future__ import annotations

import collections
import struct
from io import BytesIO
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.cluster import ClusterMetadata
from aiokafka.consumer.fetcher import Fetcher, FetchResult, PartitionRecords
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v10, FetchRequest_v11, FetchResponse_v11
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c_py
from aiokafka.structs import PartitionMetadata
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stages.fetch import (
    BUSY_FETCH_MAX_WAIT_MS,
    FastFetcher,
    FastFetchRequest,
    FetchRequestV11,
    FetchResponseV11,
    LeanPartitionRecords,
)

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


class _Client:
    """What the fetchers use of a client here: its cluster metadata, and a send answered by a given response."""

    def __init__(self, cluster: ClusterMetadata, response: Any = None) -> None:
        self.cluster = cluster
        self.response = response
        self.metadata_updates = 0

    async def send(self, node_id: int, request: Any) -> Any:
        return self.response

    def force_metadata_update(self) -> None:
        self.metadata_updates += 1


def _bare(cls: type[Fetcher], client: _Client, **settings: Any) -> Any:
    """A fetcher as Fetcher.__init__ sets it up, without its fetch routine (the test drives its methods)."""
    f = cls.__new__(cls)
    f.__dict__.update(
        _client=client, _key_deserializer=None, _value_deserializer=None, _fetch_min_bytes=1,
        _fetch_max_bytes=52428800, _fetch_max_wait_ms=500, _max_partition_fetch_bytes=1048576, _check_crcs=True,
        _fetcher_timeout=0.2, _prefetch_backoff=0.1, _retry_backoff=0.0, _default_reset_strategy=-1,
        _client_rack=None, _preferred_read_replica={}, _preferred_replica_ttl=300.0, _rack_warning_logged=False,
        _isolation_level=1, _records=collections.OrderedDict(), _in_flight=set(), _pending_tasks=set())
    f.__dict__.update(settings)
    return f


TOPICS = ("raw.a", "raw.b", "raw.c")
partition_plans = st.fixed_dictionaries({
    "leader": st.sampled_from([1, 1, 1, 2, -1, None]),  # None: the partition is not in the metadata
    "state": st.sampled_from(["position", "position", "position", "reset", "paused"]),
    "position": st.integers(0, 1000),
    "buffered": st.sampled_from([None, None, "waiting", "backed off"]),  # records not handed out yet
    "answer": st.sampled_from(["nothing", "nothing", "records", "partial", 1, 3, 6, 29, 7, "stale", "absent"]),
})
plans = st.dictionaries(st.tuples(st.sampled_from(TOPICS), st.integers(0, 5)), partition_plans, min_size=1,
                        max_size=12)


def _records_bytes(first: int, count: int) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    for i in range(count):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=b"k", value=f"v{first + i}".encode(), headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, first)  # the batch's base offset
    return bytes(data)


def _world(plan: dict[tuple[str, int], dict[str, Any]], in_flight: set[int]) -> tuple[Any, Any, Any]:
    """The same assignment, metadata and buffered records, twice over: one for aiokafka's methods, one for ours."""
    cluster = ClusterMetadata()
    cluster._partitions = {}
    for (topic, p), spec in plan.items():
        if spec["leader"] is not None:
            cluster._partitions.setdefault(topic, {})[p] = PartitionMetadata(topic, p, spec["leader"], [], [], None)
    worlds = []
    for cls in (Fetcher, FastFetcher):
        subscription = SubscriptionState()
        subscription.assign_from_user({TopicPartition(t, p) for t, p in plan})
        assignment = subscription.subscription.assignment
        fetcher = _bare(cls, _Client(cluster), _in_flight=set(in_flight))
        for (topic, p), spec in plan.items():
            tp = TopicPartition(topic, p)
            state = assignment.state_value(tp)
            if spec["state"] != "reset":
                state.reset_to(spec["position"])
            if spec["state"] == "paused":
                state.pause()
            if spec["buffered"] is not None and state.has_valid_position:
                result = FetchResult(tp, assignment=assignment, partition_records=None,
                                     backoff=0.0 if spec["buffered"] == "waiting" else 60.0)
                fetcher._records[tp] = result
        worlds.append((fetcher, assignment))
    return worlds[0], worlds[1], cluster


def _actions(result: Any) -> Any:
    requests, resets, _backoff, invalid, resumes = result  # the backoff: compared with a tolerance
    sent = {node: sorted((t, sorted(ps)) for t, ps in r.topics) for node, r in requests}
    return sent, {n: sorted(tps) for n, tps in resets.items()}, invalid, len(resumes)


@settings(max_examples=300, deadline=None)
@given(plans, st.sets(st.sampled_from([1, 2]), max_size=1))
async def test_the_partitions_to_fetch_are_aiokafkas(plan: dict[tuple[str, int], dict[str, Any]],
                                                     in_flight: set[int]) -> None:
    (theirs, their_assignment), (ours, our_assignment), _ = _world(plan, in_flight)
    expected = Fetcher._get_actions_per_node(theirs, their_assignment)
    got = ours._get_actions_per_node(our_assignment)
    assert _actions(got) == _actions(expected)
    assert got[2] == pytest.approx(expected[2], abs=0.05)  # the time to wait: a backoff that runs meanwhile
    assert all(type(r) is FastFetchRequest for _, r in got[0])
    # The wait at the broker: aiokafka's (500 ms here), but short where a partition of that node has records
    # buffered, whose next fetch must not wait behind this one for new records of the others.
    buffered_nodes = {spec["leader"] for (topic, p), spec in plan.items()
                      if TopicPartition(topic, p) in ours._records}
    for node, request in got[0]:
        assert request._max_wait_ms == (BUSY_FETCH_MAX_WAIT_MS if node in buffered_nodes else 500)
    assert all(r._max_wait_ms == 500 for _, r in expected[0])


async def test_a_backlog_does_not_wait_behind_a_long_poll() -> None:
    """A partition with records buffered and one without, on one node: the fetch for the other waits at most
    BUSY_FETCH_MAX_WAIT_MS at the broker, so the first one's next fetch goes out soon after its records are
    handed out (aiokafka's would hold the node for the whole fetch_max_wait_ms). With nothing buffered the fetch
    waits the consumer's own fetch_max_wait_ms, as aiokafka's."""
    plan = {("raw.a", 0): {"leader": 1, "state": "position", "position": 5, "buffered": "waiting", "answer": 1},
            ("raw.a", 1): {"leader": 1, "state": "position", "position": 7, "buffered": None, "answer": 1}}
    (theirs, their_assignment), (ours, our_assignment), _ = _world(plan, set())
    ((_, their_request),) = Fetcher._get_actions_per_node(theirs, their_assignment)[0]
    ((node, request),) = ours._get_actions_per_node(our_assignment)[0]
    assert node == 1 and [(t, [p for p, *_ in ps]) for t, ps in request.topics] == [("raw.a", [1])]
    assert their_request._max_wait_ms == 500 and request._max_wait_ms == BUSY_FETCH_MAX_WAIT_MS
    ours._records.clear()
    requests = ours._get_actions_per_node(our_assignment)[0]
    assert [r._max_wait_ms for _, r in requests] == [500]
    assert sorted(p for _, r in requests for _, ps in r.topics for p, *_ in ps) == [0, 1]


def _response(plan: dict[tuple[str, int], dict[str, Any]], request: Any) -> Any:
    """The broker's answer to `request`, each partition's as its plan says."""
    topics = []
    for topic, parts in request.topics:
        answered = []
        for p, offset, _ in parts:
            how = plan[(topic, p)]["answer"]
            if how == "absent":
                continue
            error, records = (how, b"") if isinstance(how, int) else (0, b"")
            if how == "records":
                records = _records_bytes(offset, 3)
            elif how == "partial":
                records = _records_bytes(offset, 1)[:30]  # a record cut by the fetch size
            answered.append((p, error, offset + 10, offset + 8, 0, [], -1, records))
        topics.append((topic, answered))
    return FetchResponse_v11(0, 0, 0, topics)


def _outcome(fetcher: Any, assignment: Any, woke: bool) -> Any:
    states = {}
    for tp in sorted(assignment.tps):
        s = assignment.state_value(tp)
        states[tp] = (s.has_valid_position and s.position, s.highwater, s.lso, s.awaiting_reset)
    buffered = {}
    for tp, result in fetcher._records.items():
        if isinstance(result, FetchResult):
            records = result._partition_records
            buffered[tp] = None if records is None else [(r.offset, r.value) for r in records]
        else:
            buffered[tp] = repr(result._error)
    return woke, states, buffered, fetcher._client.metadata_updates


@settings(max_examples=300, deadline=None)
@given(plans, st.sampled_from([-1, -2, 0]))  # auto_offset_reset latest, earliest, none
async def test_a_fetch_response_is_handled_as_aiokafka_handles_it(plan: dict[tuple[str, int], dict[str, Any]],
                                                                   reset: int) -> None:
    for spec in plan.values():  # every partition fetchable, so one request names them all
        spec.update(leader=1, state="position", buffered=None)
    (theirs, their_assignment), (ours, our_assignment), _ = _world(plan, set())
    theirs._default_reset_strategy = ours._default_reset_strategy = reset
    [(node, request)] = Fetcher._get_actions_per_node(theirs, their_assignment)[0]
    theirs._client.response = ours._client.response = _response(plan, request)
    for (topic, p), spec in plan.items():  # a seek while the fetch was out: its answer for the partition is stale
        if spec["answer"] == "stale":
            for assignment in (their_assignment, our_assignment):
                assignment.state_value(TopicPartition(topic, p)).seek(spec["position"] + 1)
    expected = _outcome(theirs, their_assignment, await Fetcher._proc_fetch_request(
        theirs, their_assignment, node, request))
    got = _outcome(ours, our_assignment, await ours._proc_fetch_request(our_assignment, node, request))
    assert got == expected


# ---------------------------------------------------------------------------------- records handed out

_CONTROL = 0x20  # the batch attribute bit of a transaction marker


def _batch(base: int, spec: dict[str, Any]) -> bytes:
    """One record batch at offset `base`: plain, transactional (of a producer), or a transaction marker."""
    kind, pid = spec["kind"], spec["pid"]
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=int(kind != "plain"),
                                        producer_id=pid if kind != "plain" else -1, producer_epoch=0,
                                        base_sequence=0, batch_size=1 << 20)
    if kind in ("abort", "commit"):
        builder.append(0, timestamp=1_700_000_000_000, key=struct.pack(">hh", 0, kind == "commit"), value=b"",
                       headers=[])
    else:
        for i, (key, value, headers) in enumerate(spec["records"]):
            builder.append(i, timestamp=1_700_000_000_000 + i, key=key, value=value, headers=headers)
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)
    if kind in ("abort", "commit"):
        data[22] |= _CONTROL  # attributes (int16, big-endian) end at byte 23; then the CRC over bytes 21..
        struct.pack_into(">I", data, 17, calc_crc32c_py(memoryview(data)[21:]))
    return bytes(data)


record_specs = st.tuples(st.one_of(st.none(), st.binary(max_size=6)), st.one_of(st.none(), st.binary(max_size=12)),
                         st.lists(st.tuples(st.text(max_size=4), st.binary(max_size=4)), max_size=2))
batch_specs = st.fixed_dictionaries({
    "kind": st.sampled_from(["plain", "plain", "txn", "txn", "abort", "commit"]),
    "pid": st.integers(1, 3),
    "records": st.lists(record_specs, min_size=1, max_size=5),
})


@settings(max_examples=300, deadline=None)
@given(st.lists(batch_specs, min_size=1, max_size=6), st.integers(0, 4), st.sampled_from([0, 1]),
       st.lists(st.tuples(st.integers(1, 3), st.integers(0, 30)), max_size=3),
       st.lists(st.one_of(st.none(), st.integers(1, 7)), min_size=1, max_size=8), st.integers(-1, 40))
async def test_records_are_handed_out_as_aiokafka_hands_them_out(
        specs: list[dict[str, Any]], skip: int, isolation: int, aborted: list[tuple[int, int]],
        takes: list[int | None], corrupt_at: int) -> None:
    """FetchResult.getall over aiokafka's PartitionRecords and over ours, on the same batches (a fetch offset
    inside the first one, aborted transactions, markers, a corrupted byte), `takes` records at a time: the same
    records, positions and leftovers after each call, and the same error."""
    data, base = b"", 0
    for spec in specs:
        data += _batch(base, spec)
        base += 1 if spec["kind"] in ("abort", "commit") else len(spec["records"])
    if 0 <= corrupt_at < len(data) - 61:  # a byte of some record (past the first header): the CRC no longer holds
        data = data[:61 + corrupt_at] + bytes([data[61 + corrupt_at] ^ 0xFF]) + data[62 + corrupt_at:]
    tp = TopicPartition("raw.a", 0)
    outcomes = []
    for cls in (PartitionRecords, LeanPartitionRecords):
        subscription = SubscriptionState()
        subscription.assign_from_user({tp})
        assignment = subscription.subscription.assignment
        assignment.state_value(tp).reset_to(skip)
        extra = {"message_set": data} if cls is LeanPartitionRecords else {}  # its CRCs checked from the bytes
        result = FetchResult(tp, assignment=assignment, backoff=0.0, partition_records=cls(
            tp, MemoryRecords(data), list(aborted), skip, None, None, True, isolation, **extra))
        seen: list[Any] = []
        for take in takes:
            try:
                seen.append(result.getall(take))
            except Exception as exc:
                seen.append(repr(exc))
                break
            seen.append((assignment.state_value(tp).position, result.has_more()))
        outcomes.append(seen)
    assert outcomes[1] == outcomes[0]
