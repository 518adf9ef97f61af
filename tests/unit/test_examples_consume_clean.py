"""examples/consume_clean.py without a broker: its dedupe on an iterable of records, and its consume loop on a
stand-in consumer (the topic and brokers from the settings, --max exact, a missing topic a one-line error)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from streams.models import MarketDataPoint
from tests.unit.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)


def _load() -> ModuleType:
    return load_script(ROOT / "examples" / "consume_clean.py", "consume_clean_example")


example = _load()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No settings of this machine's: no TICKFLOW_* variables, no pipeline_config.yaml or .env (cwd: tmp)."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("TICKFLOW_", "POSTGRES_", "KAFKA_", "PIPELINE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    os.environ.clear()
    os.environ.update(saved)


def record(offset: int, symbol: str = "AAPL", *, seconds: int = 0, data_type: str = "trade",
           ingested: int = 0, partition: int = 0) -> SimpleNamespace:
    """A consumer record of ticks.clean, as aiokafka hands it over (the fields the example reads)."""
    p = MarketDataPoint(symbol=symbol, timestamp=T0 + timedelta(seconds=seconds), source="simulated",
                        data_type=data_type, price=100.0 + offset, close=100.0 + offset if data_type == "bar" else None,
                        ingested_at=T0 + timedelta(seconds=60 + ingested))
    return SimpleNamespace(topic="ticks.clean", partition=partition, offset=offset, key=symbol.encode(),
                           value=p.to_json(), timestamp=1_709_303_400_000 + offset,
                           headers=[("tickflow.schema", b"ticks.clean/v1")])


# ---------------------------------------------------------------------------------------- Dedupe on records


def test_max_stops_at_exactly_that_many_records_within_one_batch() -> None:
    records = iter([record(i, seconds=i) for i in range(10)])
    dedupe = example.Dedupe(limit=3)
    lines = list(dedupe.feed(records))
    assert len(lines) == 3 and dedupe.kept == 3 and dedupe.done and dedupe.remaining == 0
    assert [line.split()[2] for line in lines] == ["p0@0", "p0@1", "p0@2"]
    assert next(records).offset == 3  # the rest of the batch is left unread
    assert list(dedupe.feed([record(20, seconds=20)])) == []  # and nothing more once done


def test_max_counts_records_kept_not_records_read() -> None:
    resend = record(0)
    bar, older_bar, newer_bar = (record(o, "MSFT", data_type="bar", ingested=i) for o, i in ((1, 5), (2, 1), (3, 9)))
    dedupe = example.Dedupe(limit=3)
    lines = list(dedupe.feed([resend, resend, bar, older_bar, newer_bar, record(4, seconds=4)]))
    assert [line.split()[0] for line in lines] == ["new", "new", "revised"]
    assert dedupe.kept == 3 and len(dedupe.latest) == 2


def test_without_max_every_record_is_kept() -> None:
    dedupe = example.Dedupe()
    assert len(list(dedupe.feed(record(i, seconds=i) for i in range(50)))) == 50 and not dedupe.done


# ---------------------------------------------------------------------------------------- consume() on a stand-in


class FakeConsumer:
    """What consume() uses of AIOKafkaConsumer; `existing` topics, records handed out by getmany."""

    def __init__(self, existing: set[str], pending: list[Any]) -> None:
        self.existing, self.pending = existing, pending
        self.kwargs: dict[str, Any] = {}
        self.subscribed: list[str] | None = None
        self.asked: list[int | None] = []
        self.stopped = False

    def __call__(self, *topics: str, **kwargs: Any) -> FakeConsumer:
        assert not topics  # subscribed only once the topic is known to exist
        self.kwargs = kwargs
        return self

    async def start(self) -> None:
        pass

    async def topics(self) -> set[str]:
        return self.existing

    def subscribe(self, topics: list[str]) -> None:
        self.subscribed = topics

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[str, list[Any]]:
        self.asked.append(max_records)
        n = len(self.pending) if max_records is None else max_records
        batch, self.pending = self.pending[:n], self.pending[n:]
        return {"tp": batch} if batch else {}

    async def stop(self) -> None:
        self.stopped = True


def run(monkeypatch: pytest.MonkeyPatch, consumer: FakeConsumer, *argv: str) -> int:
    monkeypatch.setattr(example, "AIOKafkaConsumer", consumer)
    return example.main(list(argv))


def test_topic_and_brokers_come_from_the_settings(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TICKFLOW_KAFKA__TOPIC_SUFFIX", ".t1")
    monkeypatch.setenv("TICKFLOW_KAFKA__BOOTSTRAP_SERVERS", "kafka-a:9092,kafka-b:9092")
    consumer = FakeConsumer({"ticks.clean.t1"}, [record(i, seconds=i) for i in range(7499)])
    assert run(monkeypatch, consumer, "--from-beginning", "--max", "3") == 0
    assert consumer.subscribed == ["ticks.clean.t1"]
    assert consumer.kwargs["bootstrap_servers"] == "kafka-a:9092,kafka-b:9092"
    assert consumer.kwargs["security_protocol"] == "PLAINTEXT" and consumer.stopped
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[-1] == "3 records kept, 3 natural keys"
    assert consumer.asked == [3]  # no more records fetched than wanted
    assert len(consumer.pending) == 7496


def test_options_win_over_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_KAFKA__TOPIC_SUFFIX", ".t1")
    consumer = FakeConsumer({"mine"}, [record(0)])
    assert run(monkeypatch, consumer, "--from-beginning", "--topic", "mine", "--bootstrap", "b:1") == 0
    assert consumer.subscribed == ["mine"] and consumer.kwargs["bootstrap_servers"] == "b:1"


def test_re_sends_are_read_past_until_max_records_are_kept(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    consumer = FakeConsumer({"ticks.clean"}, [record(0), record(0), record(0), record(1, seconds=1),
                                              record(2, seconds=2), record(3, seconds=3)])
    assert run(monkeypatch, consumer, "--from-beginning", "--max", "2") == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 records kept, 2 natural keys"
    assert consumer.asked == [2, 1, 1] and len(consumer.pending) == 2


def test_a_missing_topic_is_one_line_and_exit_code_2(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TICKFLOW_KAFKA__TOPIC_SUFFIX", ".gone")
    consumer = FakeConsumer({"ticks.clean"}, [])
    assert run(monkeypatch, consumer, "--max", "3") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("consume_clean: topic ticks.clean.gone does not exist on 127.0.0.1:19092")
    assert consumer.subscribed is None and consumer.stopped


def test_max_must_be_at_least_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        example.parser().parse_args(["--max", "0"])
    assert info.value.code == 2 and "must be at least 1" in capsys.readouterr().err
