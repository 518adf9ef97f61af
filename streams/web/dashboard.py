"""GET /dashboard: a live page served by every worker, with nothing to build or fetch from elsewhere.

One self-contained HTML document (inline CSS and vanilla JS, no CDN, no external fonts), so it works
offline and behind a firewall. The browser polls /pipeline/metrics (cluster-wide, routed to the metrics
table's owner) and /health (this worker) every second and keeps the last 5 minutes of throughput and
latency itself, so the worker stores no history for it. Every value from the API reaches the DOM through
textContent or an SVG attribute, never innerHTML, so a symbol, rule or error message cannot inject markup;
the Content-Security-Policy header also forbids loading anything from another origin.

The page itself is open (streams/web/auth.py); its data endpoints (/pipeline/*) need the worker's bearer
token. The page takes it from the URL fragment (`/dashboard#token=...`: a fragment never reaches a server
or its access log, and the page removes it from the address bar) or from the token field, keeps it in this
browser's localStorage, and sends it only in the Authorization header of its own same-origin fetch calls.
"""

from __future__ import annotations

from faust.web import Request, Response, View

from streams.app import app

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tickflow dashboard</title>
<style>
  :root { --bg: #0f1419; --panel: #182029; --line: #2a3542; --fg: #e6e9ee; --dim: #8b97a5;
          --thr: #4fb3ff; --p50: #6ad48a; --p99: #f2a541; --bad: #ff6b6b; --ok: #6ad48a; }
  * { box-sizing: border-box; }
  body { margin: 0; padding: 16px; background: var(--bg); color: var(--fg);
         font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  header { display: flex; flex-wrap: wrap; gap: 16px; align-items: baseline; margin-bottom: 12px; }
  h1 { font-size: 20px; margin: 0; }
  h2 { font-size: 14px; margin: 0 0 8px; color: var(--dim); font-weight: 600; text-transform: uppercase;
       letter-spacing: .04em; }
  .dim { color: var(--dim); }
  .ok { color: var(--ok); } .bad { color: var(--bad); }
  .grid { display: grid; gap: 12px; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); }
  .panel { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 12px;
           overflow-x: auto; }
  .totals { display: grid; gap: 8px; grid-template-columns: repeat(auto-fit, minmax(120px, 1fr)); margin-bottom: 12px; }
  .stat { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; }
  .stat .v { font-size: 22px; font-variant-numeric: tabular-nums; }
  .stat .k { color: var(--dim); font-size: 12px; }
  .chart { position: relative; height: 160px; border-left: 1px solid var(--line);
           border-bottom: 1px solid var(--line); }
  .chart svg { position: absolute; inset: 0; width: 100%; height: 100%; }
  .chart polyline { fill: none; stroke-width: 2; vector-effect: non-scaling-stroke; stroke-linejoin: round; }
  .chart .grid-line { stroke: var(--line); stroke-width: 1; vector-effect: non-scaling-stroke; }
  .ylab { position: absolute; left: 4px; font-size: 11px; color: var(--dim); }
  .xlab { display: flex; justify-content: space-between; font-size: 11px; color: var(--dim); }
  .legend span { margin-right: 12px; font-size: 12px; }
  .sw { display: inline-block; width: 10px; height: 3px; vertical-align: middle; margin-right: 4px; }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
  th { color: var(--dim); font-weight: 600; font-size: 12px; }
  td.num, th.num { text-align: right; }
  td.empty { color: var(--dim); font-style: italic; }
  td code { font-size: 12px; white-space: pre-wrap; word-break: break-all; }
  ul.parts { margin: 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 6px; }
  ul.parts li { background: var(--bg); border: 1px solid var(--line); border-radius: 4px; padding: 2px 6px;
                font-size: 12px; }
  #auth { display: flex; gap: 6px; align-items: center; margin-bottom: 12px; }
  #auth input { background: var(--panel); color: var(--fg); border: 1px solid var(--line); border-radius: 4px;
                padding: 4px 8px; width: 24em; }
  #auth button { background: var(--panel); color: var(--fg); border: 1px solid var(--line); border-radius: 4px;
                 padding: 4px 10px; cursor: pointer; }
</style>
</head>
<body>
<header>
  <h1>tickflow</h1>
  <span id="status" class="dim">connecting…</span>
  <span class="dim">worker <span id="worker">&ndash;</span> · <span id="role">&ndash;</span>
    · health <span id="health">&ndash;</span></span>
  <button id="forget-token" type="button" hidden>forget token</button>
</header>

<div id="auth" hidden>
  <label for="token-input">Web token (TICKFLOW_WORKER__WEB_TOKEN):</label>
  <input id="token-input" type="password" autocomplete="off" spellcheck="false">
  <button id="token-save" type="button">use</button>
</div>

<section class="totals">
  <div class="stat"><div class="v" id="total-processed">&ndash;</div><div class="k">processed</div></div>
  <div class="stat"><div class="v" id="total-valid">&ndash;</div><div class="k">valid</div></div>
  <div class="stat"><div class="v" id="total-rejected">&ndash;</div><div class="k">rejected</div></div>
  <div class="stat"><div class="v" id="total-written">&ndash;</div><div class="k">written</div></div>
  <div class="stat"><div class="v" id="total-duplicates">&ndash;</div><div class="k">duplicates</div></div>
  <div class="stat"><div class="v" id="total-queue">&ndash;</div><div class="k">queue size (lag)</div></div>
  <div class="stat"><div class="v" id="total-throughput">&ndash;</div><div class="k">rows/s</div></div>
  <div class="stat"><div class="v" id="total-p50">&ndash;</div><div class="k">p50 latency</div></div>
  <div class="stat"><div class="v" id="total-p99">&ndash;</div><div class="k">p99 latency</div></div>
</section>

<section class="grid">
  <div class="panel">
    <h2>Throughput (rows written/s, last 5 min)</h2>
    <div class="chart">
      <svg id="chart-throughput" viewBox="0 0 300 100" preserveAspectRatio="none" aria-hidden="true">
        <line class="grid-line" x1="0" y1="50" x2="300" y2="50"></line>
        <polyline id="line-throughput" points="" style="stroke: var(--thr)"></polyline>
      </svg>
      <span class="ylab" style="top:2px" id="throughput-ymax"></span>
      <span class="ylab" style="top:calc(50% - 8px)" id="throughput-ymid"></span>
    </div>
    <div class="xlab"><span>&minus;5 min</span><span>now</span></div>
  </div>
  <div class="panel">
    <h2>End-to-end latency (ms, last 5 min)</h2>
    <div class="chart">
      <svg id="chart-latency" viewBox="0 0 300 100" preserveAspectRatio="none" aria-hidden="true">
        <line class="grid-line" x1="0" y1="50" x2="300" y2="50"></line>
        <polyline id="line-p50" points="" style="stroke: var(--p50)"></polyline>
        <polyline id="line-p99" points="" style="stroke: var(--p99)"></polyline>
      </svg>
      <span class="ylab" style="top:2px" id="latency-ymax"></span>
      <span class="ylab" style="top:calc(50% - 8px)" id="latency-ymid"></span>
    </div>
    <div class="xlab"><span>&minus;5 min</span>
      <span class="legend"><span><i class="sw" style="background:var(--p50)"></i>p50</span><span><i class="sw"
        style="background:var(--p99)"></i>p99</span></span><span>now</span></div>
  </div>

  <div class="panel">
    <h2>Sources (this worker's supervisor)</h2>
    <table>
      <thead><tr><th>source</th><th>kind</th><th>state</th><th class="num">sent</th><th class="num">failures</th>
        <th>last sent</th><th>last error</th></tr></thead>
      <tbody id="sources-body"></tbody>
    </table>
  </div>
  <div class="panel">
    <h2>Per source</h2>
    <table>
      <thead><tr><th>source</th><th class="num">processed</th><th class="num">rejected</th>
        <th class="num">written</th><th class="num">rows/s</th><th class="num">p50 ms</th>
        <th class="num">p99 ms</th></tr></thead>
      <tbody id="per-source-body"></tbody>
    </table>
  </div>
  <div class="panel">
    <h2>Rejects by rule</h2>
    <table>
      <thead><tr><th>source</th><th>rule</th><th class="num">rejected</th></tr></thead>
      <tbody id="rejects-body"></tbody>
    </table>
  </div>
  <div class="panel">
    <h2>Partitions assigned to this worker</h2>
    <ul class="parts" id="partitions"></ul>
  </div>

  <div class="panel" id="anomalies-panel" hidden>
    <h2>Anomalies by detector</h2>
    <table>
      <thead><tr><th>source</th><th>detector</th><th class="num">anomalies</th></tr></thead>
      <tbody id="anomalies-by-detector-body"></tbody>
    </table>
  </div>
  <div class="panel" id="recent-anomalies-panel" hidden>
    <h2>Recent anomalies</h2>
    <table>
      <thead><tr><th>time</th><th>detector</th><th>symbol</th><th class="num">score</th><th class="num">threshold</th>
        <th>message</th><th>record</th></tr></thead>
      <tbody id="recent-anomalies-body"></tbody>
    </table>
  </div>
</section>

<script>
"use strict";
(function () {
  const WINDOW_MS = 5 * 60 * 1000;
  const POLL_MS = 1000;
  const history = [];  // {t, thr, p50, p99}, the last WINDOW_MS, kept only in this page
  const TOKEN_KEY = "tickflow.webToken";

  // The token: from the fragment (#token=...), which never reaches a server, then kept in localStorage.
  function storage() { try { return window.localStorage; } catch (e) { return null; } }
  let token = "";
  (function takeToken() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash || "");
    if (m) {
      try { token = decodeURIComponent(m[1]); } catch (e) { token = m[1]; }
      if (storage()) storage().setItem(TOKEN_KEY, token);
      window.history.replaceState(null, "", location.pathname + location.search);
    } else if (storage()) {
      token = storage().getItem(TOKEN_KEY) || "";
    }
  })();

  const $ = (id) => document.getElementById(id);
  const setText = (id, v) => { $(id).textContent = v; };
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const fmtInt = (v) => isNum(v) ? Math.round(v).toLocaleString() : "\u2013";
  const fmtNum = (v, d) => isNum(v) ? v.toLocaleString(undefined, {maximumFractionDigits: d}) : "\u2013";
  const fmtMs = (v) => isNum(v) ? fmtNum(v, 1) + " ms" : "\u2013";

  function row(cells, numeric) {
    const tr = document.createElement("tr");
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (numeric && numeric.includes(i)) td.className = "num";
      if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "" : String(c);
      tr.appendChild(td);
    });
    return tr;
  }

  function fill(bodyId, rows, ncols, emptyText, numeric) {
    const body = $(bodyId);
    if (!rows.length) {
      const td = document.createElement("td");
      td.colSpan = ncols; td.className = "empty"; td.textContent = emptyText;
      const tr = document.createElement("tr"); tr.appendChild(td);
      body.replaceChildren(tr);
      return;
    }
    body.replaceChildren(...rows.map((r) => row(r, numeric)));
  }

  function ago(ts) {
    if (!isNum(ts)) return "never";
    const s = Math.max(0, Date.now() / 1000 - ts);
    return s < 60 ? s.toFixed(0) + " s ago" : (s / 60).toFixed(1) + " min ago";
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function drawChart(lines, ymaxId, ymidId, unit) {
    const now = Date.now(), x0 = now - WINDOW_MS;
    let max = 0;
    for (const key of Object.values(lines)) for (const h of history) if (isNum(h[key])) max = Math.max(max, h[key]);
    max = niceMax(max);
    for (const [lineId, key] of Object.entries(lines)) {
      const pts = history.filter((h) => isNum(h[key]))
        .map((h) => ((h.t - x0) / WINDOW_MS * 300).toFixed(2) + "," + (100 - h[key] / max * 100).toFixed(2));
      $(lineId).setAttribute("points", pts.join(" "));
    }
    setText(ymaxId, fmtNum(max, 2) + unit);
    setText(ymidId, fmtNum(max / 2, 2) + unit);
  }

  function renderMetrics(m) {
    setText("total-processed", fmtInt(m.total_processed));
    setText("total-valid", fmtInt(m.valid_points));
    setText("total-rejected", fmtInt(m.rejected_points));
    setText("total-written", fmtInt(m.written_points));
    setText("total-duplicates", fmtInt(m.duplicate_points));
    setText("total-queue", fmtInt(m.queue_size));
    setText("total-throughput", fmtNum(m.throughput_per_sec, 1));
    setText("total-p50", fmtMs(m.p50_latency_ms));
    setText("total-p99", fmtMs(m.p99_latency_ms));

    const now = Date.now();
    history.push({t: now, thr: m.throughput_per_sec, p50: m.p50_latency_ms, p99: m.p99_latency_ms});
    while (history.length && history[0].t < now - WINDOW_MS) history.shift();
    drawChart({"line-throughput": "thr"}, "throughput-ymax", "throughput-ymid", "/s");
    drawChart({"line-p50": "p50", "line-p99": "p99"}, "latency-ymax", "latency-ymid", " ms");

    const sources = Object.entries(m.sources || {});
    fill("per-source-body", sources.map(([src, s]) => [src, fmtInt(s.processed), fmtInt(s.rejected),
      fmtInt(s.written), fmtNum(s.throughput_per_sec, 1), fmtNum(s.p50_latency_ms, 1), fmtNum(s.p99_latency_ms, 1)]),
      7, "no data yet", [1, 2, 3, 4, 5, 6]);

    const rejects = [];
    for (const [src, s] of sources) {
      for (const [rule, n] of Object.entries(s.rejected_by_rule || {})) rejects.push([src, rule, n]);
    }
    rejects.sort((a, b) => b[2] - a[2]);
    fill("rejects-body", rejects.map(([src, rule, n]) => [src, rule, fmtInt(n)]), 3, "no rejects", [2]);

    const byDetector = m.anomalies_by_detector;
    $("anomalies-panel").hidden = !(byDetector && typeof byDetector === "object");
    if (!$("anomalies-panel").hidden) {
      const rows = [];
      for (const [src, dets] of Object.entries(byDetector)) {
        for (const [det, n] of Object.entries(dets || {})) rows.push([src, det, n]);
      }
      rows.sort((a, b) => b[2] - a[2]);
      fill("anomalies-by-detector-body", rows.map(([s, d, n]) => [s, d, fmtInt(n)]), 3, "no anomalies", [2]);
    }

    const recent = m.recent_anomalies;
    $("recent-anomalies-panel").hidden = !Array.isArray(recent);
    if (Array.isArray(recent)) {
      fill("recent-anomalies-body", recent.slice().reverse().map((a) => {
        const code = document.createElement("code");
        const rec = a.record === undefined || a.record === null ? "" : JSON.stringify(a.record);
        code.textContent = rec.length > 300 ? rec.slice(0, 300) + "…" : rec;
        code.title = rec;
        const when = isNum(a.detected_at) ? new Date(a.detected_at * 1000).toLocaleTimeString() : "";
        return [when, a.detector, a.symbol, fmtNum(a.score, 3), fmtNum(a.threshold, 3), a.message, code];
      }), 7, "no anomalies", [3, 4]);
    }
  }

  function renderHealth(h) {
    setText("worker", h.worker || "\u2013");
    setText("role", h.leader ? "leader" : "follower");
    setText("health", h.status || "\u2013");
    $("health").className = h.status === "ok" ? "ok" : "bad";
    fill("sources-body", (h.sources || []).map((s) => {
      const state = document.createElement("span");
      state.textContent = s.state;
      const good = s.state === "running" || s.state === "finished", bad = s.state === "failing" || s.state === "failed";
      state.className = good ? "ok" : bad ? "bad" : "dim";
      return [s.source, s.kind, state, fmtInt(s.sent), fmtInt(s.failures), ago(s.last_sent_at), s.last_error || ""];
    }), 7, "no sources run on this worker (they run on the leader)", [3, 4]);
    const parts = $("partitions");
    const items = (h.assigned || []).map((p) => {
      const li = document.createElement("li"); li.textContent = p; return li;
    });
    if (!items.length) {
      const li = document.createElement("li"); li.className = "dim"; li.textContent = "none"; items.push(li);
    }
    parts.replaceChildren(...items);
  }

  function setToken(value) {
    token = value || "";
    if (storage()) { if (token) storage().setItem(TOKEN_KEY, token); else storage().removeItem(TOKEN_KEY); }
    $("forget-token").hidden = !token;
  }
  $("forget-token").hidden = !token;
  $("forget-token").addEventListener("click", () => { setToken(""); $("auth").hidden = false; });
  const save = () => { setToken($("token-input").value.trim()); $("token-input").value = ""; $("auth").hidden = true; };
  $("token-save").addEventListener("click", save);
  $("token-input").addEventListener("keydown", (e) => { if (e.key === "Enter") save(); });

  async function getJson(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 5000);
    const headers = {"Accept": "application/json"};
    // Only to this page's own data endpoints (relative, so same origin); never in the URL.
    if (token && url.startsWith("pipeline/")) headers["Authorization"] = "Bearer " + token;
    try {
      const r = await fetch(url, {cache: "no-store", signal: ctl.signal, headers: headers, credentials: "omit"});
      if (r.status === 401 || r.status === 403) {
        $("auth").hidden = false;
        throw new Error(token ? "the token was refused" : "a web token is needed");
      }
      return await r.json();  // /health answers JSON with 503 while recovering: still worth showing
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    const [m, h] = await Promise.allSettled([getJson("pipeline/metrics"), getJson("health")]);
    const errors = [];
    if (m.status === "fulfilled") { try { renderMetrics(m.value); } catch (e) { errors.push("metrics: " + e); } }
    else errors.push("metrics: " + m.reason);
    if (h.status === "fulfilled") { try { renderHealth(h.value); } catch (e) { errors.push("health: " + e); } }
    else errors.push("health: " + h.reason);
    const st = $("status");
    st.textContent = errors.length ? errors.join("; ") : "live · " + new Date().toLocaleTimeString();
    st.className = errors.length ? "bad" : "dim";
    setTimeout(poll, POLL_MS);  // after the answer, so a slow worker never piles up requests
  }

  poll();
})();
</script>
</body>
</html>
"""


@app.page("/dashboard")
class Dashboard(View):
    async def get(self, request: Request) -> Response:
        return self.html(HTML, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})
