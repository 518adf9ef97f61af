"""GET /dashboard: a live page served by every worker, with nothing to build or fetch from elsewhere.

One self-contained HTML document, streams/web/dashboard.html (shipped as package data; inline CSS and vanilla
JS, no CDN, no external fonts), so it works offline and behind a firewall. The browser polls /pipeline/metrics
(cluster-wide, routed to the metrics table's owner) and /health (this worker) every second and keeps the last
5 minutes of throughput and latency itself, so the worker stores no history for it. Every value from the API
reaches the DOM through textContent or an SVG attribute, never innerHTML, so a symbol, rule or error message
cannot inject markup; the Content-Security-Policy header also forbids loading anything from another origin.

The page itself is open (streams/web/auth.py); its data endpoints (/pipeline/*) need the worker's bearer
token. The page takes it from the URL fragment (`/dashboard#token=...`: a fragment never reaches a server
or its access log, and the page removes it from the address bar) or from the token field, keeps it in this
browser's localStorage, and sends it only in the Authorization header of its own same-origin fetch calls.
"""

from __future__ import annotations

from importlib import resources

from faust.web import Request, Response, View

from streams.app import app

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

# The page (streams/web/dashboard.html, package data), read once at import: every request serves the same bytes.
HTML = resources.files("streams.web").joinpath("dashboard.html").read_text(encoding="utf-8")


@app.page("/dashboard")
class Dashboard(View):
    async def get(self, request: Request) -> Response:
        return self.html(HTML, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})
