import sys

import pytest

from producers.registry import BUILDERS, enabled_sources
from streams.catalog import load_catalog
from streams.config import key_env_by_source
from streams.errors import ConfigError
from streams.settings import SourcesSettings


def test_every_source_has_its_raw_topic() -> None:
    catalog = load_catalog()
    for name in BUILDERS:
        assert catalog.raw(name).name == f"raw.{name}"
    assert set(catalog.sources) == set(BUILDERS)


def test_only_enabled_sources_are_built_and_missing_keys_do_not_stop_others(monkeypatch) -> None:
    for var in ("FINNHUB_API_KEY", "TWITTER_BEARER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    s = SourcesSettings()
    assert [src.name for src in enabled_sources(s)] == ["simulated"]
    s.finnhub.enabled = True  # no key in the environment: logged and skipped
    s.social.enabled = True
    # and no made-up feed instead: the simulated one runs by default only while no other source is enabled
    assert [src.name for src in enabled_sources(s)] == []
    monkeypatch.setenv("FINNHUB_API_KEY", "k-123")
    s.finnhub.websocket = True
    names = [(src.name, type(src).__name__) for src in enabled_sources(s)]
    assert names == [("finnhub", "FinnhubSource"), ("finnhub", "FinnhubTradeStream")]
    s.simulated.enabled = True
    assert [src.name for src in enabled_sources(s)] == ["simulated", "finnhub", "finnhub"]


@pytest.mark.parametrize("name", [n for n, names in key_env_by_source().items() if n != "stocktwits"])
def test_a_missing_key_names_every_variable_the_section_reads(name: str, monkeypatch) -> None:
    """The error says where the key comes from in the section's own words (`key_env`), not a second copy."""
    cfg = getattr(SourcesSettings(), name)
    for var in cfg.key_env:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError) as caught:
        BUILDERS[name](cfg)
    assert all(var in str(caught.value) for var in cfg.key_env)
    assert name in str(caught.value)


def test_stocktwits_key_is_optional(monkeypatch) -> None:
    monkeypatch.delenv("STOCKTWITS_ACCESS_TOKEN", raising=False)
    assert [s.name for s in BUILDERS["stocktwits"](SourcesSettings().stocktwits)] == ["stocktwits"]


def test_each_providers_module_docstring_names_the_raw_topic_its_sources_write(monkeypatch) -> None:
    """A provider module's docstring says which topic it writes (DESIGN.md): the news source, which lives in
    producers/finnhub.py, writes raw.news, not raw.finnhub."""
    sections = SourcesSettings()
    for names in key_env_by_source().values():
        for var in names:
            monkeypatch.setenv(var, "k-123")
    sections.finnhub.websocket = True
    for name, build in BUILDERS.items():
        for source in build(getattr(sections, name)):
            doc = sys.modules[type(source).__module__].__doc__ or ""
            assert f"raw.{source.name}" in doc, (type(source).__name__, source.name)
