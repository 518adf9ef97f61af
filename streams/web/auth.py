"""Who may read a worker's web pages: a bearer token for everything but the probes' and Prometheus' pages.

Open to anyone who reaches the port: /health (the orchestrator's probes), /metrics (Prometheus) and the
/dashboard page itself (static HTML: it asks the user for the token and sends it from its own fetch calls).
Every other path, known or not (/pipeline/*, Faust's own pages, a page added later), needs
`Authorization: Bearer <worker.web_token>`, compared in constant time. The check is an aiohttp middleware,
so it runs before any view and before Faust routes a request to another worker (the header travels with
the routed request, and every worker holds the same token).

Without a token (the default): the other pages answer 403, except when the worker binds to loopback only
(worker.web_host 127.0.0.1, the default) and the request comes from loopback with a loopback Host header,
so `make run` and a developer's browser need no setup while a worker bound to 0.0.0.0 (docker, k8s) never
serves data unauthenticated. The Host check refuses DNS-rebinding pages (a web site whose name resolves to
127.0.0.1 sends its own name as Host).

The token is read from a header only: a query string (?token=) is written to access logs and proxies'.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from streams.config import WorkerSettings, is_loopback

logger = logging.getLogger(__name__)

# Exact paths, compared after aiohttp decoded them; anything else (a trailing slash, /health/../x) needs the token.
OPEN_PATHS = frozenset({"/health", "/metrics", "/dashboard"})
TOKEN_ENV = "TICKFLOW_WORKER__WEB_TOKEN"


@dataclass(frozen=True)
class Denial:
    status: int
    error: str


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def host_name(host: str | None) -> str:
    """The name of a Host header without its port: "[::1]:6066" -> "::1", "localhost:80" -> "localhost"."""
    host = (host or "").strip()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def check(path: str, authorization: str | None, *, token: str, loopback_only: bool, peer: str | None,
          host: str | None) -> Denial | None:
    """None when the request may proceed, else why not. Pure, so every branch is unit tested."""
    if path in OPEN_PATHS:
        return None
    if token:
        presented = bearer(authorization)
        if presented is None:
            return Denial(401, "this page needs Authorization: Bearer <token>")
        # Constant time: the answer's timing must not tell how much of a guess was right.
        if not hmac.compare_digest(presented.encode(), token.encode()):
            return Denial(401, "invalid token")
        return None
    if loopback_only and peer is not None and is_loopback(peer) and is_loopback(host_name(host)):
        return None
    return Denial(403, f"no web token configured: set {TOKEN_ENV} on the workers to read this page "
                       "(without one, only loopback clients of a worker bound to 127.0.0.1 may)")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guard(worker: WorkerSettings) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """The aiohttp middleware enforcing `check` with these settings."""
    token = worker.web_token.get_secret_value()
    loopback_only = worker.web_loopback_only()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        denial = check(request.path, request.headers.get("Authorization"), token=token,
                       loopback_only=loopback_only, peer=request.remote, host=request.host)
        if denial is None:
            return await handler(request)
        headers = {"Cache-Control": "no-store"}
        if denial.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="tickflow"'
        return web.json_response({"error": denial.error}, status=denial.status, headers=headers)

    return middleware


def install(web_app: web.Application, worker: WorkerSettings) -> None:
    """Add the guard to a worker's aiohttp application (before the server starts), once."""
    if any(getattr(m, "__tickflow_guard__", False) for m in web_app.middlewares):
        return
    middleware = guard(worker)
    middleware.__tickflow_guard__ = True  # type: ignore[attr-defined]
    web_app.middlewares.append(middleware)
    if not worker.web_token.get_secret_value() and not worker.web_loopback_only():
        logger.warning("the web server binds %s without a token: every page but %s answers 403; set %s",
                       worker.web_host, ", ".join(sorted(OPEN_PATHS)), TOKEN_ENV)
