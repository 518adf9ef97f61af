"""/health's body from the stages' and the supervisor's own `status()`, without Faust's web server."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from streams.rules import SourceBreakers, Validator
from streams.settings import KafkaSettings, SinkSettings, ValidationSettings
from streams.stages.base import consumer_group
from streams.stages.topics import catalog
from streams.stages.validate import Router, ValidateTicks
from streams.stages.write import WriteTicks
from streams.web.health import health_report, lag_groups


async def _nothing(*args: object) -> None:
    return None


class Consumer:
    def __init__(self, *tps: TopicPartition) -> None:
        self.tps = set(tps)

    def assignment(self) -> set[TopicPartition]:
        return self.tps


def stages(clock: list[float]) -> dict[str, object]:
    raw = [t.name for t in catalog.by_role("raw")]
    v = ValidateTicks(router=Router(Validator(ValidationSettings()), catalog),
                      breakers=SourceBreakers(0.5, 10, 60.0, clock=lambda: clock[0]), send=_nothing, emit=_nothing,
                      kafka=KafkaSettings(), app_id="app", topics=raw)
    w = WriteTicks(writer=None, send=_nothing, emit=_nothing, sink=SinkSettings(), rejected_topic="r",  # type: ignore[arg-type]
                   kafka=KafkaSettings(), app_id="app", topics=["ticks.clean"])
    return {"validate": v, "write": w}


def test_groups_come_from_one_function() -> None:
    s = stages([0.0])
    groups = lag_groups(s.values())  # type: ignore[arg-type]
    assert groups == {consumer_group("app", "validate"): list(s["validate"].topics),  # type: ignore[attr-defined]
                      consumer_group("app", "write"): ["ticks.clean"]}


def test_the_lag_read_is_every_stages_whichever_this_worker_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A validate-only worker reported none of ticks.clean's lag (`worker.stages`): queue_size said 7 with 4,785
    clean records not yet written."""
    from streams.stages import base
    from streams.web import health

    monkeypatch.setattr(base, "stages", {})
    monkeypatch.setattr(base, "every_stage", {})
    monkeypatch.setattr(health, "every_stage", base.every_stage)

    class App:
        def service(self, stage: object) -> None:
            raise AssertionError("a stage this worker does not run is not started")

    s = stages([0.0])
    base.stage_service(App(), s["write"], enabled=False)  # type: ignore[arg-type]
    assert base.stages == {} and base.every_stage == {"write": s["write"]}
    assert health.lag_reader.groups() == {consumer_group("app", "write"): ["ticks.clean"]}


def test_the_lag_reader_is_given_the_workers_kafka_settings() -> None:
    """Collaborators passed in: the lag reader's SSL/SASL come from the settings the App was built with, not from
    a look-up of the process-wide settings inside streams/web/lag.py."""
    from streams.app import settings
    from streams.web import health, lag

    assert health.lag_reader.kafka is settings.kafka
    assert not hasattr(lag, "get_settings")


def test_report_is_built_from_the_stages_status() -> None:
    clock = [0.0]
    s = stages(clock)
    v, w = s["validate"], s["write"]
    body = health_report(stages=s, sources=[], lag={}, now=1.0, stuck_after=300.0, recovering=False, leader=True,
                         worker="w")  # type: ignore[arg-type]
    assert body["status"] == "starting" and body["starting_stages"] == ["validate", "write"]

    bad = catalog.raw("replay").name
    v.consumer = Consumer(TopicPartition(bad, 0))  # type: ignore[attr-defined]
    w.consumer = Consumer(TopicPartition("ticks.clean", 1))  # type: ignore[attr-defined]
    for _ in range(10):
        v.breakers.record("replay", True)  # type: ignore[attr-defined]
    v.breakers.trip("replay", {"schema.missing": 10})  # type: ignore[attr-defined]
    w.outage_attempts, w.last_outage = 3, "SinkUnavailable: down"  # type: ignore[attr-defined]
    body = health_report(stages=s, sources=[], lag={"ticks.clean": 5}, now=10_000.0 + w.started_at,  # type: ignore[attr-defined]
                         stuck_after=300.0, recovering=False, leader=False, worker="w", other_assigned=["x[0]"])
    assert body["status"] == "stuck" and body["stuck_stages"] == ["write"]
    assert body["assigned"] == sorted([f"{bad}[0]", "ticks.clean[1]", "x[0]"])
    assert [p["source"] for p in body["paused_sources"]] == ["replay"]
    assert body["stages"]["write"]["database_retries"] == 3
    assert body["stages"]["validate"]["group"] == consumer_group("app", "validate")
    assert "stale_feeds" not in body["stages"]["validate"] and body["stale_feeds"] == []


class _Lag:
    async def lag_by_topic(self) -> dict[str, int]:
        return {}


async def test_recovering_tables_answer_503_recovering_until_recovery_completes(monkeypatch) -> None:
    """The /health page itself: while Faust's table recovery has not completed the worker is "recovering" (ahead
    of starting and stuck) with 503, so a readiness probe keeps traffic away; once it completes, "ok" and 200."""
    import asyncio
    from types import SimpleNamespace

    import orjson

    from streams.app import app
    from streams.web import health

    completed = asyncio.Event()
    fake_app = SimpleNamespace(tables=SimpleNamespace(recovery=SimpleNamespace(completed=completed)),
                               conf=SimpleNamespace(canonical_url="http://w:6066"), is_leader=lambda: False,
                               consumer=SimpleNamespace(assignment=lambda: set()))
    s = stages([0.0])
    s["validate"].consumer = Consumer(TopicPartition(catalog.raw("simulated").name, 0))  # type: ignore[attr-defined]
    s["write"].consumer = Consumer(TopicPartition("ticks.clean", 0))  # type: ignore[attr-defined]
    monkeypatch.setattr(health, "app", fake_app)
    monkeypatch.setattr(health, "stages", s)
    monkeypatch.setattr(health, "lag_reader", _Lag())
    monkeypatch.setattr(health, "supervisor", SimpleNamespace(status=lambda: []))
    view = health.Health.__new__(health.Health)
    view.app, view.web = app, app.web  # the real web driver builds the response

    resp = await view.get(None)  # type: ignore[arg-type]
    body = orjson.loads(resp.body)
    assert (resp.status, body["status"]) == (503, "recovering")
    assert body["starting_stages"] == [] and body["stuck_stages"] == []  # recovering alone made it 503

    completed.set()
    resp = await view.get(None)  # type: ignore[arg-type]
    assert (resp.status, orjson.loads(resp.body)["status"]) == (200, "ok")


async def test_metrics_before_the_table_is_assigned_is_a_503_starting_not_a_traceback(monkeypatch) -> None:
    """A worker's first seconds on a fresh cluster: Faust's router fails inside its assignor (the changelog is
    not in the metadata yet: 'NoneType' object is not iterable) and the page answered 500 with a traceback."""
    from types import SimpleNamespace

    import orjson

    from streams.app import app
    from streams.web import health

    async def no_metadata(*args: object) -> None:
        raise TypeError("'NoneType' object is not iterable")

    monkeypatch.setattr(app.router, "route_req", no_metadata)
    response = await health.PipelineMetrics(app, app.web).get(SimpleNamespace(query={}))  # type: ignore[arg-type]
    assert response.status == 503 and orjson.loads(response.body)["status"] == "starting"

    # A bug in the summary itself is no "starting": it comes out, for a 500 and its traceback.
    from faust.exceptions import SameNode

    async def here(*args: object) -> None:
        raise SameNode()

    def broken(*args: object) -> None:
        raise KeyError("written")

    monkeypatch.setattr(app.router, "route_req", here)
    monkeypatch.setattr(health.metrics, "summary", broken)
    monkeypatch.setattr(health, "queue_size", _nothing)
    with pytest.raises(RuntimeError, match="/pipeline/metrics failed"):
        await health.PipelineMetrics(app, app.web).get(SimpleNamespace(query={}))  # type: ignore[arg-type]
