"""The client half of a fetch session: what each request sends and forgets, and what each answer does to it."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import TopicPartition
from aiokafka.protocol.fetch import FetchRequest, FetchRequest_v4, FetchRequest_v11

from streams.stages.fetch_session import FetchSession, SessionFetchRequest

A0, A1, B0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)
MB = 1 << 20


def _request(session: FetchSession, assignment: object, wanted: dict[TopicPartition, int]) -> SessionFetchRequest:
    by_topic: dict[str, list[tuple[int, int, int]]] = {}
    for tp, offset in wanted.items():
        by_topic.setdefault(tp.topic, []).append((tp.partition, offset, MB))
    return SessionFetchRequest(FetchRequest(100, 1, 50 * MB, 1, list(by_topic.items())), session, assignment)


def _answer(session_id: int, error_code: int = 0) -> SimpleNamespace:
    return SimpleNamespace(error_code=error_code, session_id=session_id, topics=[])


def _sent(struct: object) -> tuple[dict[tuple[str, int], int], dict[str, list[int]], int, int]:
    d = struct.__dict__
    sent = {(t, p[0]): p[2] for t, parts in d["topics"] for p in parts}  # v11: partition, leader epoch, offset
    return sent, dict(d["forgotten_topics_data"]), d["session_id"], d["session_epoch"]


def test_a_session_starts_full_then_sends_only_what_changed() -> None:
    s, assignment = FetchSession(), object()
    first = _request(s, assignment, {A0: 5, A1: 7, B0: 0})
    sent, forgotten, sid, epoch = _sent(first.build(FetchRequest_v11))
    assert (sid, epoch, forgotten) == (0, 0, {}) and sent == {("a", 0): 5, ("a", 1): 7, ("b", 0): 0}
    first.version = 11
    s.answered(first, _answer(4242))
    assert (s.id, s.epoch, s.full_requests) == (4242, 1, 1)

    # A0 got records and was consumed (offset 5 -> 9); nothing else moved
    second = _request(s, assignment, {A0: 9, A1: 7, B0: 0})
    sent, forgotten, sid, epoch = _sent(second.build(FetchRequest_v11))
    assert (sid, epoch, sent, forgotten) == (4242, 1, {("a", 0): 9}, {})
    assert {tp.partition for tp in second.wanted} == {0, 1} and len(second.topics) == 2  # offsets of every one
    s.answered(second, _answer(4242))
    assert (s.epoch, s.incremental_requests, s.partitions[A0]) == (2, 1, (9, MB))

    # nothing moved: an empty incremental request (the broker long-polls the session's partitions)
    third = _request(s, assignment, {A0: 9, A1: 7, B0: 0})
    assert _sent(third.build(FetchRequest_v11))[:2] == ({}, {})

    # A1 paused (not wanted): forgotten; later wanted again: sent again
    fourth = _request(s, assignment, {A0: 9, B0: 0})
    assert _sent(fourth.build(FetchRequest_v11))[:2] == ({}, {"a": [1]})
    s.answered(fourth, _answer(4242))
    assert A1 not in s.partitions and s.epoch == 3
    fifth = _request(s, assignment, {A0: 9, A1: 7, B0: 0})
    assert _sent(fifth.build(FetchRequest_v11))[:2] == ({("a", 1): 7}, {})


def test_errors_a_new_assignment_and_a_refused_session_start_over() -> None:
    s, assignment = FetchSession(), object()
    r = _request(s, assignment, {A0: 1})
    r.build(FetchRequest_v11)
    s.answered(r, _answer(0))  # the broker keeps no session for us: full requests go on
    assert (s.id, s.epoch, s.partitions) == (0, 0, {})
    r = _request(s, assignment, {A0: 1})
    assert _sent(r.build(FetchRequest_v11))[2:] == (0, 0)
    s.answered(r, _answer(77))
    r = _request(s, assignment, {A0: 2})
    r.build(FetchRequest_v11)
    s.answered(r, _answer(0, error_code=70))  # FETCH_SESSION_ID_NOT_FOUND
    assert (s.id, s.epoch, s.partitions) == (0, 0, {})
    r = _request(s, assignment, {A0: 2})
    assert _sent(r.build(FetchRequest_v11))[:4] == ({("a", 0): 2}, {}, 0, 0)
    s.answered(r, _answer(78))
    assert s.id == 78
    r = _request(s, assignment, {A0: 3})
    r.build(FetchRequest_v11)
    s.answered(r, _answer(78, error_code=71))  # INVALID_FETCH_SESSION_EPOCH, the session's id in the answer
    assert (s.id, s.epoch, s.partitions) == (0, 0, {})
    r = _request(s, assignment, {A0: 3})
    r.build(FetchRequest_v11)
    s.answered(r, _answer(78))
    # a new assignment: the old session means nothing, whatever it holds
    r = _request(s, object(), {A0: 2})
    assert _sent(r.build(FetchRequest_v11))[2:] == (0, 0)


def test_the_epoch_wraps_to_one_and_a_broker_without_sessions_gets_full_requests() -> None:
    s, assignment = FetchSession(), object()
    s.id, s.epoch, s.assignment, s.partitions = 5, 2**31 - 1, assignment, {A0: (1, MB)}
    r = _request(s, assignment, {A0: 1})
    assert _sent(r.build(FetchRequest_v11))[3] == 2**31 - 1
    s.answered(r, _answer(5))
    assert s.epoch == 1
    old = _request(s, assignment, {A0: 3, B0: 0})
    struct = old.build(FetchRequest_v4)  # v4 has no session fields: every partition, as aiokafka sends it
    assert {(t, p[0]) for t, parts in struct.topics for p in parts} == {("a", 0), ("b", 0)}
    s.answered(old, _answer(5))
    assert (s.id, s.partitions) == (0, {})
