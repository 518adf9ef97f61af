import os
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Makefile exports TICKFLOW_* variables; these tests set their own."""
    import os

    for name in list(os.environ):
        if name.startswith("TICKFLOW_"):
            monkeypatch.delenv(name)


def test_yaml_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "pipeline_config.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: yaml:1\nsink:\n  batch_size: 123\n")
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))
    monkeypatch.setenv("TICKFLOW_SINK__BATCH_SIZE", "456")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "yaml:1"
    assert s.sink.batch_size == 456


def test_unknown_key_is_an_error_naming_key_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "conf.yaml"
    cfg.write_text("sink:\n  batch_sise: 10\n")
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=r"conf.yaml.*sink.batch_sise"):
        load_settings()


def test_wrong_type_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_POSTGRES__PORT", "five")
    with pytest.raises(ConfigError, match=r"postgres.port"):
        load_settings()


def test_password_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_POSTGRES__PASSWORD", "hunter2")
    s = load_settings()
    assert s.postgres.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert "hunter2" not in s.postgres.dsn_for_display()


def test_configuration_manager_leaves_the_environment_as_it_was(tmp_path, monkeypatch) -> None:
    from streams.api import ConfigurationManager

    monkeypatch.delenv("TICKFLOW_CONFIG", raising=False)
    cfg = tmp_path / "pipeline_config.yaml"
    cfg.write_text("sink:\n  batch_size: 123\n")
    assert ConfigurationManager(cfg).get_section("sink")["batch_size"] == 123
    assert "TICKFLOW_CONFIG" not in os.environ  # it leaked into every later load_settings() before


def test_a_worker_runs_every_stage_unless_told_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().worker.stages == ["validate", "write", "archive"]
    monkeypatch.setenv("TICKFLOW_WORKER__STAGES", '["write", "archive"]')
    assert load_settings().worker.stages == ["write", "archive"]
    cfg = tmp_path / "pipeline_config.yaml"
    cfg.write_text("worker:\n  stages: [validate]\n")
    monkeypatch.delenv("TICKFLOW_WORKER__STAGES")
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))
    assert load_settings().worker.stages == ["validate"]
    for bad in ('["validate", "publish"]', "[]", '["write", "write"]'):
        monkeypatch.setenv("TICKFLOW_WORKER__STAGES", bad)
        with pytest.raises(ConfigError, match=r"worker.stages"):
            load_settings()
