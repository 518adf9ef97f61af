"""The web surface's guard (streams/web/auth.py) and where its token may come from (settings, not the file)."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest
import yaml
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from streams.api import ConfigurationManager
from streams.config import WorkerSettings
from streams.errors import ConfigError
from streams.settings import load_settings
from streams.web import auth

TOKEN = "FAKE-SECRET-web-token-0123456789"
LOCAL = {"peer": "127.0.0.1", "host": "127.0.0.1:6066"}


def check(path: str, authorization: str | None = None, *, token: str = TOKEN, loopback_only: bool = False,
          peer: str | None = "10.1.2.3", host: str | None = "worker:6066") -> auth.Denial | None:
    return auth.check(path, authorization, token=token, loopback_only=loopback_only, peer=peer, host=host)


# ---------------------------------------------------------------------------------------------- check()


@pytest.mark.parametrize("path", ["/health", "/metrics", "/dashboard"])
@pytest.mark.parametrize("token", [TOKEN, ""])
def test_probe_prometheus_and_the_dashboard_page_are_open(path: str, token: str) -> None:
    assert check(path, token=token) is None


@pytest.mark.parametrize("path", ["/pipeline/data/AAPL", "/pipeline/metrics", "/table/", "/router/", "/",
                                  "/health/", "/health/../pipeline/data/AAPL", "/dashboard/x", "/new-page"])
def test_every_other_path_needs_the_token(path: str) -> None:
    assert check(path) == auth.Denial(401, "this page needs Authorization: Bearer <token>")
    assert check(path, f"Bearer {TOKEN}") is None


@pytest.mark.parametrize("header", [f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer ", f"Basic {TOKEN}",
                                    TOKEN, f"Bearer{TOKEN}", "Bearer x"])
def test_a_wrong_or_malformed_token_is_refused(header: str) -> None:
    denial = check("/pipeline/data/AAPL", header)
    assert denial is not None and denial.status == 401


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "])
def test_the_scheme_is_case_insensitive(header: str) -> None:
    assert check("/pipeline/metrics", header) is None


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert check("/pipeline/metrics", "Bearer nope") is not None
    assert check("/pipeline/metrics", f"Bearer {TOKEN}") is None
    assert calls == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_without_a_token_only_loopback_clients_of_a_loopback_worker_get_in() -> None:
    assert check("/pipeline/metrics", token="", loopback_only=True, **LOCAL) is None
    assert check("/pipeline/metrics", token="", loopback_only=True, peer="::1", host="[::1]:6066") is None
    assert check("/pipeline/metrics", token="", loopback_only=True, peer="127.0.0.1", host="localhost") is None
    refused = [
        check("/pipeline/metrics", token="", loopback_only=False, **LOCAL),  # bound to 0.0.0.0
        check("/pipeline/metrics", token="", loopback_only=True, peer="10.0.0.5", host="127.0.0.1:6066"),
        # DNS rebinding: a web site whose name resolves to 127.0.0.1 sends its own name as Host
        check("/pipeline/metrics", token="", loopback_only=True, peer="127.0.0.1", host="evil.example:6066"),
        check("/pipeline/metrics", token="", loopback_only=True, peer=None, host="127.0.0.1"),
    ]
    for denial in refused:
        assert denial is not None and denial.status == 403 and auth.TOKEN_ENV in denial.error


def test_with_a_token_loopback_is_no_exception() -> None:
    assert check("/pipeline/metrics", token=TOKEN, loopback_only=True, **LOCAL) is not None


@pytest.mark.parametrize(("host", "name"), [("127.0.0.1:6066", "127.0.0.1"), ("[::1]:6066", "::1"),
                                            ("localhost", "localhost"), ("::1", "::1"), (None, "")])
def test_host_name(host: str | None, name: str) -> None:
    assert auth.host_name(host) == name


@pytest.mark.parametrize(("bind", "loopback"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                                ("127.0.0.2", True), ("0.0.0.0", False), ("::", False),
                                                ("10.0.0.5", False), ("worker.internal", False)])
def test_loopback_binding(bind: str, loopback: bool) -> None:
    assert WorkerSettings(web_host=bind).web_loopback_only() is loopback


# ---------------------------------------------------------------------------------------------- middleware


async def _statuses(worker: WorkerSettings, requests: list[tuple[str, dict[str, str]]]) -> list[tuple[int, str]]:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    auth.install(app, worker)
    auth.install(app, worker)  # once only
    assert len(app.middlewares) == 1
    for path in ("/health", "/metrics", "/dashboard", "/pipeline/data/{symbol}", "/pipeline/metrics"):
        app.router.add_get(path, ok)
    out = []
    async with TestServer(app, host="127.0.0.1") as server, ClientSession() as session:
        for path, headers in requests:
            async with session.get(server.make_url(path), headers=headers) as r:
                out.append((r.status, r.headers.get("WWW-Authenticate", "")))
    return out


async def test_the_middleware_guards_a_real_server() -> None:
    got = await _statuses(WorkerSettings(web_token=TOKEN), [
        ("/health", {}), ("/metrics", {}), ("/dashboard", {}),
        ("/pipeline/data/AAPL", {}), ("/pipeline/data/AAPL", {"Authorization": "Bearer wrong-token"}),
        ("/pipeline/data/AAPL", {"Authorization": f"Bearer {TOKEN}"}),
        ("/pipeline/metrics", {"Authorization": f"Bearer {TOKEN}"}),
        ("/table/", {}), ("/table/", {"Authorization": f"Bearer {TOKEN}"}),
    ])
    bearer = 'Bearer realm="tickflow"'
    assert got == [(200, ""), (200, ""), (200, ""), (401, bearer), (401, bearer), (200, ""), (200, ""),
                   (401, bearer), (404, "")]


async def test_without_a_token_a_worker_bound_to_all_interfaces_refuses(caplog: pytest.LogCaptureFixture) -> None:
    got = await _statuses(WorkerSettings(web_host="0.0.0.0"), [("/health", {}), ("/pipeline/metrics", {})])
    assert got == [(200, ""), (403, "")]
    assert auth.TOKEN_ENV in caplog.text  # said once, at start


async def test_without_a_token_a_loopback_worker_answers_loopback_clients() -> None:
    got = await _statuses(WorkerSettings(), [("/pipeline/metrics", {}),
                                             ("/pipeline/metrics", {"Host": "rebound.example"})])
    assert got == [(200, ""), (403, "")]


def test_the_worker_app_has_the_guard_and_no_table_or_router_pages() -> None:
    import streams.web.health  # noqa: F401  (installs the guard)
    from streams.app import app

    assert any(getattr(m, "__tickflow_guard__", False) for m in app.web.web_app.middlewares)
    assert app.conf.web_tables_enabled is False and app.conf.web_router_enabled is False
    prefixes = [prefix for prefix, _ in app.web.blueprints._enabled]
    assert "/table" not in prefixes and "/router" not in prefixes


def test_the_dashboard_sends_the_token_in_a_header_never_in_a_query() -> None:
    from streams.web.dashboard import HTML

    assert 'headers["Authorization"] = "Bearer " + token' in HTML
    assert "?token=" not in HTML and "token=" not in HTML.replace("#token=", "").replace("(?:^#|&)token=", "")


# ---------------------------------------------------------------------------------------------- settings


def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("TICKFLOW_") or n.startswith("POSTGRES_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TICKFLOW_ENV_FILES", "")
    monkeypatch.chdir(tmp_path)


def test_the_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("TICKFLOW_WORKER__WEB_TOKEN", TOKEN)
    s = load_settings()
    assert s.worker.web_token.get_secret_value() == TOKEN and TOKEN not in repr(s)
    assert s.worker.web_headers() == {"Authorization": f"Bearer {TOKEN}"}
    assert WorkerSettings().web_headers() == {}


@pytest.mark.parametrize("weak", ["short", " " + TOKEN])
def test_a_weak_token_is_refused_without_showing_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    weak: str) -> None:
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv("TICKFLOW_WORKER__WEB_TOKEN", weak)
    with pytest.raises(ConfigError, match="at least 16 characters") as err:
        load_settings()
    assert weak.strip() not in str(err.value)


@pytest.mark.parametrize(("doc", "env"), [
    ({"postgresql": {"password": "FAKE-SECRET-pg"}}, "TICKFLOW_POSTGRES__PASSWORD"),
    ({"postgres": {"password": "FAKE-SECRET-pg"}}, "TICKFLOW_POSTGRES__PASSWORD"),
    ({"kafka": {"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "FAKE-SECRET-sasl"}},
     "TICKFLOW_KAFKA__SASL_PASSWORD"),
    ({"kafka": {"ssl_key_password": "FAKE-SECRET-key"}}, "TICKFLOW_KAFKA__SSL_KEY_PASSWORD"),
    ({"worker": {"web_token": TOKEN}}, "TICKFLOW_WORKER__WEB_TOKEN"),
])
def test_secrets_are_refused_from_the_settings_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    doc: dict[str, dict[str, str]], env: str) -> None:
    _clean_env(monkeypatch, tmp_path)
    path = tmp_path / "pipeline_config.yaml"
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("TICKFLOW_CONFIG", str(path))
    with pytest.raises(ConfigError, match=env) as err:
        load_settings()
    assert str(path) in str(err.value) and "FAKE-SECRET" not in str(err.value)
    # the configuration manager reads the same file: refused there too
    with pytest.raises(ConfigError, match=env):
        ConfigurationManager(path)


def test_the_python_api_may_still_pass_secrets_in_its_dict(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_env(monkeypatch, tmp_path)
    s = load_settings(postgresql={"password": "FAKE-SECRET-pg"}, worker={"web_token": TOKEN})
    assert s.postgres.password.get_secret_value() == "FAKE-SECRET-pg"
    assert s.worker.web_token.get_secret_value() == TOKEN


def test_an_empty_secret_in_the_file_is_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_env(monkeypatch, tmp_path)
    path = tmp_path / "pipeline_config.yaml"
    path.write_text(yaml.safe_dump({"postgresql": {"password": ""}, "worker": {"web_token": ""}}))
    monkeypatch.setenv("TICKFLOW_CONFIG", str(path))
    monkeypatch.setenv("TICKFLOW_POSTGRES__PASSWORD", "FAKE-SECRET-env")
    assert load_settings().postgres.password.get_secret_value() == "FAKE-SECRET-env"


def test_update_config_refuses_to_write_a_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_env(monkeypatch, tmp_path)
    cm = ConfigurationManager(tmp_path / "pipeline_config.yaml")
    with pytest.raises(ConfigError, match="TICKFLOW_POSTGRES__PASSWORD"):
        cm.update_config("postgresql", "password", "FAKE-SECRET-pg")
    assert "FAKE-SECRET" not in (tmp_path / "pipeline_config.yaml").read_text()


def test_k8s_probes_need_no_token_and_the_token_comes_from_the_secret() -> None:
    k8s = Path(__file__).resolve().parents[4] / "deploy" / "k8s"
    docs = [d for p in sorted(k8s.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    secret = next(d for d in docs if d["kind"] == "Secret")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert check(get["path"], None) is None and "httpHeaders" not in get
    assert auth.TOKEN_ENV in secret["stringData"]
    assert [e["secretRef"]["name"] for e in container["envFrom"]] == [secret["metadata"]["name"]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert auth.TOKEN_ENV not in env  # never a plain value in the manifest
    assert not WorkerSettings(web_host=env["TICKFLOW_WORKER__WEB_HOST"]).web_loopback_only()
