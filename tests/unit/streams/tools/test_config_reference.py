"""docs/configuration.md is the generator's output for today's settings models: a new or changed setting
without a regenerated reference fails here."""

from __future__ import annotations

from pathlib import Path

from streams.config import key_env_by_source
from streams.settings import Settings
from streams.tools.config_reference import generate, rows

ROOT = Path(__file__).resolve().parents[4]


def test_committed_reference_is_a_fresh_generation() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == generate(), "regenerate: python -m streams.tools.config_reference > docs/configuration.md"


def test_every_leaf_setting_has_a_row_with_its_environment_name_and_default() -> None:
    table = {key: (tp, default, env, meaning) for key, tp, default, env, meaning in rows(Settings)}
    assert table["kafka.bootstrap_servers"][2] == "TICKFLOW_KAFKA__BOOTSTRAP_SERVERS"
    assert table["kafka.producer_linger_ms"][:2] == ("int", "`0`")
    assert "linger" not in table["kafka.bootstrap_servers"][3]  # a comment belongs to the field right below it
    assert "send as soon as the previous request is done" in table["kafka.producer_linger_ms"][3]
    assert table["kafka.sasl_password"][1] == "(secret, empty)"  # never a secret's value
    assert table["sources.yahoo.enabled"][2] == "TICKFLOW_SOURCES__YAHOO__ENABLED"
    # a section built with other values than its class's defaults shows the values it is built with
    assert table["anomalies.bar_daily.outlier_sigma"][1] == "`6.0`"
    assert table["anomalies.bar_intraday.outlier_sigma"][1] == "`8.0`"
    leaves = sum(1 for section in Settings.model_fields for _ in rows(Settings.model_fields[section].annotation,
                                                                     (section,)))  # type: ignore[arg-type]
    assert len(table) == leaves > 100


def test_every_provider_key_variable_is_documented_in_the_sources_section() -> None:
    sources = generate().split("\n## `sources`", 1)[1].split("\n## ", 1)[0]
    assert key_env_by_source()["nasdaq_data_link"] == ("NASDAQ_DATA_LINK_API_KEY", "QUANDL_API_KEY")
    for source, names in key_env_by_source().items():
        assert f"| `{source}` | {', '.join(f'`{n}`' for n in names)} |" in sources


def test_readme_links_the_generated_reference() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "[docs/configuration.md](docs/configuration.md)" in readme.split("## Configuration", 1)[1].split("\n## ")[0]
