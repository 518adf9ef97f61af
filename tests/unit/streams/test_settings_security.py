"""Kafka SSL/SASL and PostgreSQL TLS settings: parsed from the environment and from YAML, checked across
fields, turned into aiokafka arguments and Faust credentials, and never showing a password."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import SecretStr, ValidationError

from sinks.schema import check_identifier, quote_ident
from streams.errors import ConfigError
from streams.settings import KafkaSettings, PostgresSettings, Settings, load_settings

SECRET = "FAKE-SECRET-abc123"
KEY_PASSWORD = "FAKE-SECRET-keypw-456"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Makefile exports TICKFLOW_* variables; these tests set their own."""
    for name in list(os.environ):
        if name.startswith("TICKFLOW_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throw-away CA certificate and a client certificate whose key is encrypted with KEY_PASSWORD."""
    openssl = shutil.which("openssl")
    assert openssl, "these tests make throw-away certificates with the openssl command (apt-get install openssl)"
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "1"]
    subprocess.run([openssl, "req", "-x509", *ec, "-nodes", "-keyout", d / "ca.key", "-out", d / "ca.pem",
                    "-subj", "/CN=tickflow-test-ca"], check=True, capture_output=True)
    subprocess.run([openssl, "req", "-x509", *ec, "-keyout", d / "client.key", "-out", d / "client.pem",
                    "-subj", "/CN=tickflow-test-client", "-passout", f"pass:{KEY_PASSWORD}"],
                   check=True, capture_output=True)
    return {"ca": d / "ca.pem", "cert": d / "client.pem", "key": d / "client.key"}


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and KEY_PASSWORD not in text, text


def _assert_hidden(s: Settings) -> None:
    _no_secret(repr(s), str(s), s.model_dump_json(), str(s.model_dump(mode="json")), repr(s.kafka),
               repr(s.kafka.faust_credentials()))


# ------------------------------------------------------------------------------------------------- Kafka

MODES = [
    ("PLAINTEXT", None),
    ("SSL", None),
    ("SASL_PLAINTEXT", "PLAIN"),
    ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
    ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
    ("SASL_SSL", "PLAIN"),
    ("SASL_SSL", "SCRAM-SHA-256"),
    ("SASL_SSL", "SCRAM-SHA-512"),
]


def _mode_values(protocol: str, mechanism: str | None, certs: dict[str, Path]) -> dict[str, str]:
    values = {"security_protocol": protocol}
    if mechanism:
        values.update(sasl_mechanism=mechanism, sasl_username="svc-tickflow", sasl_password=SECRET)
    if protocol in ("SSL", "SASL_SSL"):
        values.update(ssl_cafile=str(certs["ca"]))
    return values


def _check_mode(s: Settings, protocol: str, mechanism: str | None, certs: dict[str, Path]) -> None:
    k = s.kafka
    assert k.security_protocol == protocol
    kwargs = k.client_kwargs()
    assert kwargs["security_protocol"] == protocol
    tls = protocol in ("SSL", "SASL_SSL")
    assert ("ssl_context" in kwargs) is tls
    if tls:
        context = kwargs["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "tickflow-test-ca"),),)]
    if mechanism:
        assert (kwargs["sasl_mechanism"], kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == (
            mechanism, "svc-tickflow", SECRET)
    else:
        assert not any(key.startswith("sasl_") for key in kwargs)

    creds = k.faust_credentials()
    if protocol == "PLAINTEXT":
        assert creds is None and kwargs == {"security_protocol": "PLAINTEXT"}
    elif mechanism is None:
        assert isinstance(creds, faust.SSLCredentials)
    else:
        assert isinstance(creds, faust.SASLCredentials)
        assert (creds.mechanism.value, creds.username, creds.password) == (mechanism, "svc-tickflow", SECRET)
    # What Faust hands its own consumer and producers equals what we hand ours (the context aside).
    faust_kwargs = credentials_to_aiokafka_auth(creds)
    assert {k: v for k, v in faust_kwargs.items() if v is not None and k != "ssl_context"} == {
        k: v for k, v in kwargs.items() if k != "ssl_context"}
    assert (faust_kwargs.get("ssl_context") is not None) is tls
    _assert_hidden(s)


@pytest.mark.parametrize(("protocol", "mechanism"), MODES)
def test_kafka_security_from_the_environment(monkeypatch: pytest.MonkeyPatch, certs: dict[str, Path],
                                             protocol: str, mechanism: str | None) -> None:
    for key, value in _mode_values(protocol, mechanism, certs).items():
        monkeypatch.setenv(f"TICKFLOW_KAFKA__{key.upper()}", value)
    _check_mode(load_settings(), protocol, mechanism, certs)


@pytest.mark.parametrize(("protocol", "mechanism"), MODES)
def test_kafka_security_from_yaml_with_the_password_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certs: dict[str, Path], protocol: str,
        mechanism: str | None) -> None:
    values = _mode_values(protocol, mechanism, certs)
    password = values.pop("sasl_password", None)
    cfg = tmp_path / "pipeline_config.yaml"
    cfg.write_text("kafka:\n" + "".join(f"  {k}: {v!r}\n" for k, v in values.items()))
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))
    if password:
        monkeypatch.setenv("TICKFLOW_KAFKA__SASL_PASSWORD", password)
    _check_mode(load_settings(), protocol, mechanism, certs)


def test_mutual_tls_with_an_encrypted_key_and_hostname_check_off(certs: dict[str, Path]) -> None:
    k = KafkaSettings(security_protocol="SSL", ssl_cafile=certs["ca"], ssl_certfile=certs["cert"],
                      ssl_keyfile=certs["key"], ssl_key_password=KEY_PASSWORD, ssl_check_hostname=False)
    context = k.client_kwargs()["ssl_context"]
    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED
    _no_secret(repr(k), k.model_dump_json())
    wrong = k.model_copy(update={"ssl_key_password": SecretStr(SECRET)})
    with pytest.raises(ssl.SSLError) as err:  # the key does not open: an error, and no password in it
        wrong.ssl_context()
    _no_secret(str(err.value), repr(err.value))


@pytest.mark.parametrize(("values", "message"), [
    ({"security_protocol": "SASL_SSL"}, "needs sasl_username and sasl_password"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"}, "needs sasl_username and sasl_password"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_password": SECRET}, "needs sasl_username and sasl_password"),
    ({"sasl_password": SECRET}, "sasl_password set, but security_protocol PLAINTEXT does not use it"),
    ({"security_protocol": "SSL", "sasl_username": "u", "sasl_password": SECRET},
     "sasl_username, sasl_password set, but security_protocol SSL does not use them"),
    ({"sasl_mechanism": "SCRAM-SHA-256"}, "sasl_mechanism set, but security_protocol PLAINTEXT"),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": SECRET, "ssl_cafile": "CA"},
     "ssl_cafile set, but security_protocol SASL_PLAINTEXT does not use it"),
    ({"ssl_check_hostname": "false"}, "ssl_check_hostname set, but security_protocol PLAINTEXT"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"}, "file /nonexistent/ca.pem does not exist"),
    ({"security_protocol": "SSL", "ssl_keyfile": "KEY"}, "ssl_keyfile needs ssl_certfile"),
    ({"security_protocol": "SSL", "ssl_key_password": SECRET}, "ssl_key_password needs ssl_certfile"),
    ({"security_protocol": "SASL_SSL_PLEASE", "sasl_password": SECRET}, "security_protocol: Input should be"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": SECRET},
     "sasl_mechanism: Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"),
])
def test_kafka_security_errors_are_clear_and_show_no_password(
        monkeypatch: pytest.MonkeyPatch, certs: dict[str, Path], values: dict[str, str], message: str) -> None:
    files = {"CA": str(certs["ca"]), "KEY": str(certs["key"])}
    values = {k: files.get(v, v) for k, v in values.items()}
    for key, value in values.items():
        monkeypatch.setenv(f"TICKFLOW_KAFKA__{key.upper()}", value)
    with pytest.raises(ConfigError, match="kafka") as err:
        load_settings()
    assert message in str(err.value)
    _no_secret(str(err.value), repr(err.value))
    # Built directly, pydantic's own error does not echo the input either.
    with pytest.raises(ValidationError) as verr:
        Settings(kafka={k: v for k, v in values.items()})
    _no_secret(str(verr.value), repr(verr.value))


def test_plaintext_default_changes_nothing() -> None:
    k = Settings().kafka
    assert k.security_protocol == "PLAINTEXT"
    assert k.client_kwargs() == {"security_protocol": "PLAINTEXT"}  # aiokafka's own default
    assert k.faust_credentials() is None and k.ssl_context() is None


def test_the_faust_app_gets_the_credentials() -> None:
    from streams.app import create_app

    s = Settings(kafka={"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                        "sasl_username": "svc", "sasl_password": SECRET})
    conf = create_app(s).conf
    auth = credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context)
    assert auth == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256",
                    "sasl_plain_username": "svc", "sasl_plain_password": SECRET, "ssl_context": None}
    assert create_app(Settings()).conf.broker_credentials is None


# ---------------------------------------------------------------------------------------------- PostgreSQL


def test_postgres_sslmode_default_and_connect_kwargs(certs: dict[str, Path]) -> None:
    pg = PostgresSettings(password=SECRET)
    assert pg.sslmode == "prefer"  # works against the local stack (no TLS); see the README's warning
    kwargs = pg.connect_kwargs()
    assert kwargs == {"host": "127.0.0.1", "port": 15432, "user": "tickflow", "password": SECRET,
                      "database": "tickflow", "ssl": "prefer"}
    full = PostgresSettings(sslmode="verify-full", sslrootcert=certs["ca"], sslcert=certs["cert"],
                            sslkey=certs["key"])
    kw = full.connect_kwargs()
    assert kw["ssl"] == "verify-full" and kw["password"] is None
    assert kw["dsn"].startswith("postgresql://?") and f"sslrootcert={certs['ca']}".replace("/", "%2F") in kw["dsn"]
    _no_secret(repr(pg), pg.model_dump_json(), pg.dsn_for_display())


def test_asyncpg_applies_the_files_with_libpq_rules(certs: dict[str, Path]) -> None:
    """The DSN-query route really reaches asyncpg's TLS setup: verify-full checks the host against our CA."""
    from asyncpg import connect_utils

    pg = PostgresSettings(sslmode="verify-full", sslrootcert=certs["ca"])
    kw = pg.connect_kwargs()
    _, params = connect_utils._parse_connect_dsn_and_args(
        dsn=kw["dsn"], host=kw["host"], port=kw["port"], user=kw["user"], password=kw["password"], passfile=None,
        database=kw["database"], ssl=kw["ssl"], service=None, servicefile=None, direct_tls=None,
        server_settings=None, target_session_attrs=None, krbsrvname=None, gsslib=None)
    assert params.ssl.verify_mode == ssl.CERT_REQUIRED and params.ssl.check_hostname
    assert [c["subject"] for c in params.ssl.get_ca_certs()] == [((("commonName", "tickflow-test-ca"),),)]


@pytest.mark.parametrize(("values", "message"), [
    ({"sslmode": "sometimes"}, "postgres.sslmode: Input should be 'disable', 'allow', 'prefer', 'require'"),
    ({"sslmode": "prefer", "sslrootcert": "CA"}, "sslrootcert set, but sslmode prefer does not use it"),
    ({"sslmode": "disable", "sslcert": "CERT", "sslkey": "KEY"}, "sslcert, sslkey set, but sslmode disable"),
    ({"sslmode": "require", "sslkey": "KEY"}, "sslkey needs sslcert"),
    ({"sslmode": "verify-full", "sslrootcert": "/nonexistent/root.crt"}, "file /nonexistent/root.crt does not"),
    ({"db_schema": "Market"}, "db_schema: String should match pattern"),
    ({"db_schema": "pg_data"}, "'pg_data' is reserved by PostgreSQL"),
])
def test_postgres_tls_errors(monkeypatch: pytest.MonkeyPatch, certs: dict[str, Path], values: dict[str, str],
                             message: str) -> None:
    files = {"CA": str(certs["ca"]), "CERT": str(certs["cert"]), "KEY": str(certs["key"])}
    monkeypatch.setenv("TICKFLOW_POSTGRES__PASSWORD", SECRET)
    for key, value in values.items():
        monkeypatch.setenv(f"TICKFLOW_POSTGRES__{key.upper()}", files.get(value, value))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert message in str(err.value)
    _no_secret(str(err.value))


def test_transport_warning_only_for_a_remote_host_without_verified_tls() -> None:
    assert PostgresSettings().transport_warning() is None
    assert PostgresSettings(host="localhost", sslmode="disable").transport_warning() is None
    assert PostgresSettings(host="db.internal", sslmode="verify-full").transport_warning() is None
    assert PostgresSettings(host="db.internal", sslmode="require").transport_warning() is None
    assert "falls back to plaintext" in (PostgresSettings(host="10.0.0.5").transport_warning() or "")
    assert "not encrypted" in (PostgresSettings(host="db.internal", sslmode="disable").transport_warning() or "")


def test_schema_identifiers_are_checked_and_quoted() -> None:
    assert quote_ident("public") == '"public"' and quote_ident("it_0a1b") == '"it_0a1b"'
    assert check_identifier("user") == "user"  # a reserved word works once quoted
    for bad in ('x"; DROP TABLE market_data; --', "Public", "1abc", "a-b", "", "a" * 64, "pg_catalog",
                "information_schema"):
        with pytest.raises(ValueError):
            quote_ident(bad)
    with pytest.raises(ValidationError):
        PostgresSettings(db_schema='public"; DROP SCHEMA public CASCADE; --')


# ------------------------------------------------------------------------------------------ env template


def test_generated_config_has_no_secrets_and_the_env_template_lists_them(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.api import ConfigurationManager

    cm = ConfigurationManager(tmp_path / "pipeline_config.yaml")
    text = cm.path.read_text()
    assert "security_protocol: PLAINTEXT" in text and "sslmode: prefer" in text
    for secret_key in ("sasl_password", "ssl_key_password", "password:"):
        assert f"  {secret_key}" not in text
    assert "*****" not in text
    env = cm.env_path.read_text()
    for name in ("TICKFLOW_POSTGRES__PASSWORD", "TICKFLOW_KAFKA__SASL_PASSWORD", "TICKFLOW_KAFKA__SSL_KEY_PASSWORD",
                 "FRED_API_KEY"):
        assert f"# {name}=\n" in env
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cm.path))
    assert load_settings().kafka.security_protocol == "PLAINTEXT"  # the generated file reads back
