"""examples/multiple_sources.py without a broker (stand-ins for the pipeline and the connector manager): running it
leaves the folder it runs in as it was. It wrote its own simulated rate (200 points/s) into ./pipeline_config.yaml,
which every later `make run` from that folder then read."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.unit.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    return load_script(ROOT / "examples" / "multiple_sources.py", "multiple_sources_example")


class Pipeline:
    made: list[Any] = []

    def __init__(self, config: Any) -> None:
        Pipeline.made.append(config)
        self.local_counts = {"ingested": 7}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Connectors:
    def __init__(self, pipeline: Pipeline) -> None:
        self.sources: list[Any] = []

    async def start_data_collection(self) -> None: ...

    async def stop(self) -> None: ...


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    module = _load()
    monkeypatch.setattr(module, "DataIngestionPipeline", Pipeline)
    monkeypatch.setattr(module, "DataConnectorManager", Connectors)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TICKFLOW_CONFIG", raising=False)
    for var in module.KEYS.values():
        monkeypatch.delenv(var, raising=False)
    Pipeline.made.clear()
    return module


def test_without_keys_it_writes_no_configuration(example: ModuleType, tmp_path: Path) -> None:
    asyncio.run(example.main(seconds=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert Pipeline.made == [{"sources": {"simulated": {"rate_per_second": 200}}}]  # this run's own rate


def test_with_a_key_it_enables_that_source_in_the_file_and_nothing_else(example: ModuleType, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINNHUB_API_KEY", "k" * 20)
    asyncio.run(example.main(seconds=0))
    text = (tmp_path / "pipeline_config.yaml").read_text()
    assert "rate_per_second: 200" not in text
    from streams.api import ConfigurationManager

    sources = ConfigurationManager(tmp_path / "pipeline_config.yaml").settings().sources
    assert sources.finnhub.enabled is True and sources.simulated.rate_per_second == 1000
