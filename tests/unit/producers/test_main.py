"""`python -m producers`'s exit codes: 2 for what the user must fix (settings, files), 1 for a provider or service
that is down (try again later), as the tickflow CLI's."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import producers.__main__ as cli
from streams.errors import ConfigError, SourceError


@pytest.mark.parametrize(("error", "code"), [(SourceError("finnhub: cannot reach the provider", retriable=True), 1),
                                             (ConfigError("replay: no file could be read: a.csv"), 2)])
def test_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception,
                    code: int) -> None:
    async def fails(*args: Any, **kwargs: Any) -> int:
        raise error

    monkeypatch.setattr(cli, "run_all", fails)
    monkeypatch.setattr(cli.logging, "basicConfig", lambda **kw: None)  # main() configures the process's logging
    aiokafka = logging.getLogger("aiokafka")
    monkeypatch.setattr(aiokafka, "level", aiokafka.level)  # ... and quiets aiokafka's: restored after the test
    assert cli.main(["replay"]) == code
    assert str(error) in capsys.readouterr().err
