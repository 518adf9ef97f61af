"""GET /dashboard: served as HTML by the worker's web app, self-contained, and its JS finds its elements."""

from __future__ import annotations

import re

from aiohttp.test_utils import TestClient, TestServer

from streams.app import app
from streams.web.dashboard import HTML


async def _get_dashboard() -> tuple[int, str, str, str]:
    async with TestClient(TestServer(app.web.web_app)) as client:
        r = await client.get("/dashboard")
        return r.status, r.headers.get("Content-Type", ""), r.headers.get("Content-Security-Policy", ""), await r.text()


async def test_served_as_html_with_a_strict_csp() -> None:
    status, ctype, csp, body = await _get_dashboard()
    assert status == 200
    assert ctype.startswith("text/html")
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert body == HTML


def test_every_id_the_js_uses_exists() -> None:
    ids = set(re.findall(r'\bid="([^"]+)"', HTML))
    used = set(re.findall(r'(?:\$|setText)\("([^"]+)"', HTML))
    used |= set(re.findall(r'"(line-[a-z0-9]+)"', HTML))
    used |= set(re.findall(r'fill\("([^"]+)"', HTML))
    assert used, "the script should look elements up by id"
    assert used <= ids, f"ids used by the script but missing from the page: {sorted(used - ids)}"
    for required in ("total-processed", "total-valid", "total-rejected", "total-written", "total-duplicates",
                     "total-queue", "line-throughput", "line-p50", "line-p99", "sources-body", "rejects-body",
                     "partitions", "recent-anomalies-body", "anomalies-by-detector-body"):
        assert required in used, required


def test_self_contained_and_never_innerhtml() -> None:
    assert not re.search(r"https?://", HTML), "no URL to another host (CDN, fonts, ...)"
    assert not re.search(r"<(?:script|link|img|iframe)[^>]*\b(?:src|href)=", HTML, re.I)
    assert "@import" not in HTML and "url(" not in HTML
    assert "innerHTML" not in HTML and "outerHTML" not in HTML and "insertAdjacentHTML" not in HTML
    assert "document.write" not in HTML and "eval(" not in HTML
    # it polls the two JSON pages, relative to where it is served
    assert 'getJson("pipeline/metrics")' in HTML and 'getJson("health")' in HTML
