// The spindle dashboard: polls api/snapshot and api/timeline once a second and draws them.
// Plain DOM and uPlot; every value from the server is inserted as text, never as HTML.
(function () {
  "use strict";

  const POLL_MS = 1000;
  const MAX_POINTS = 3600;
  const COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  const token = new URLSearchParams(window.location.search).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};

  const series = { t: [], stages: {} }; // stages[name] = {rate, p50, p95, p99, in_flight, queued}
  let stageNames = [];
  let charts = [];
  let lastT = -1;
  let failureKeys = "";
  let lastRate = {};

  // -- formatting ---------------------------------------------------------------------

  function count(n) { return Math.round(n).toLocaleString("en-US"); }
  function rate(n) {
    if (!(n > 0)) return "0";
    if (n >= 1e6) return (n / 1e6).toPrecision(3) + "M";
    if (n >= 100) return count(n);
    return String(Number(n.toPrecision(3)));
  }
  function latency(s) {
    if (!(s > 0)) return "-";
    if (s < 1e-3) return Number((s * 1e6).toPrecision(3)) + " µs";
    if (s < 1) return Number((s * 1e3).toPrecision(3)) + " ms";
    if (s < 60) return Number(s.toPrecision(3)) + " s";
    return duration(s);
  }
  function duration(s) {
    if (!(s >= 0)) return "-";
    if (s < 60) return s.toFixed(1) + " s";
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
    const mm = String(m).padStart(2, "0"), ss = String(sec).padStart(2, "0");
    return h ? h + ":" + mm + ":" + ss : m + ":" + ss;
  }
  function when(t) {
    // Failure times are either seconds since the start of the run or a Unix time.
    if (t > 1e9) return new Date(t * 1000).toLocaleTimeString();
    return "+" + duration(t);
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.append(c);
    return node;
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: headers, cache: "no-store" });
    if (!response.ok) throw new Error(response.status + " " + response.statusText);
    return response.json();
  }

  // -- header ---------------------------------------------------------------------------

  function renderHeader(snap) {
    const status = document.getElementById("status");
    status.textContent = snap.status;
    status.className = "badge " + snap.status;
    document.getElementById("elapsed").textContent = duration(snap.elapsed);
    const last = snap.stages[snap.stages.length - 1];
    const processed = last ? last.done + last.failed : 0;
    const bar = document.getElementById("progress");
    const text = document.getElementById("progress-text");
    if (snap.total) {
      bar.hidden = false;
      const pct = Math.min(100, (100 * processed) / snap.total);
      document.getElementById("progress-bar").style.width = pct.toFixed(1) + "%";
      text.textContent = count(processed) + " / " + count(snap.total) + " items (" + pct.toFixed(0) + "%)";
    } else {
      bar.hidden = true;
      text.textContent = count(processed) + " items";
    }
  }

  // -- stages table -------------------------------------------------------------------

  const FIELDS = ["name", "kind", "done", "failed", "retried", "in_flight", "queued", "workers", "restarts", "rate", "p50", "p95", "p99"];

  function renderStages(snap) {
    const body = document.querySelector("#stages tbody");
    const seen = new Set();
    for (const stage of snap.stages) {
      seen.add(stage.name);
      let row = body.querySelector('tr[data-stage="' + CSS.escape(stage.name) + '"]');
      if (!row) {
        row = el("tr", { "data-stage": stage.name });
        for (const f of FIELDS) row.append(el("td", { "data-field": f, class: f === "kind" ? "text " + f : f }));
        body.append(row);
      }
      const values = {
        name: stage.name,
        kind: stage.kind,
        done: count(stage.done),
        failed: count(stage.failed),
        retried: count(stage.retried),
        in_flight: count(stage.in_flight),
        queued: count(stage.queued),
        workers: count(stage.workers),
        restarts: count(stage.restarts),
        rate: rate(lastRate[stage.name] || 0),
        p50: latency(stage.latency.p50),
        p95: latency(stage.latency.p95),
        p99: latency(stage.latency.p99),
      };
      for (const f of FIELDS) {
        const cell = row.querySelector('td[data-field="' + f + '"]');
        if (cell.textContent !== values[f]) cell.textContent = values[f];
      }
      row.querySelector('td[data-field="failed"]').classList.toggle("nonzero", stage.failed > 0);
    }
    for (const row of Array.from(body.rows)) if (!seen.has(row.dataset.stage)) row.remove();
  }

  // -- workers --------------------------------------------------------------------------

  function renderWorkers(snap) {
    const box = document.getElementById("workers");
    if (!snap.workers.length) {
      box.replaceChildren(el("p", { class: "empty", text: "no workers reported" }));
      return;
    }
    const byStage = new Map();
    for (const w of snap.workers) {
      if (!byStage.has(w.stage)) byStage.set(w.stage, []);
      byStage.get(w.stage).push(w);
    }
    const blocks = [];
    for (const [stage, workers] of byStage) {
      const states = {};
      let restarts = 0;
      for (const w of workers) { states[w.state] = (states[w.state] || 0) + 1; restarts += w.restarts; }
      const summary = Object.entries(states).map(([s, n]) => n + " " + s).join(", ") + " · " + restarts + " restarts";
      const cells = workers
        .slice()
        .sort((a, b) => a.index - b.index)
        .map((w) => el("span", {
          class: "worker " + w.state + (w.restarts ? " restarted" : ""),
          "data-state": w.state,
          title: "#" + w.index + (w.pid ? " pid " + w.pid : "") + " · " + w.state + " · " + count(w.jobs) + " jobs · " + w.restarts + " restarts",
        }));
      blocks.push(el("div", { class: "workers-stage", "data-stage": stage }, [
        el("h3", {}, [stage + " ", el("span", { class: "muted", text: summary })]),
        el("div", { class: "cells" }, cells),
      ]));
    }
    box.replaceChildren(...blocks);
  }

  // -- hosts ----------------------------------------------------------------------------

  function renderHosts(snap) {
    const section = document.getElementById("hosts-section");
    if (!snap.hosts) { section.hidden = true; return; }
    section.hidden = false;
    const rows = snap.hosts
      .slice()
      .sort((a, b) => b.requests - a.requests)
      .map((h) => el("tr", { "data-host": h.host }, [
        el("td", { text: h.host }),
        el("td", { text: count(h.requests) }),
        el("td", { text: count(h.errors), class: h.errors ? "failed nonzero" : "" }),
        el("td", { text: latency(h.latency_mean) }),
        el("td", { text: count(h.limit) }),
      ]));
    document.querySelector("#hosts tbody").replaceChildren(...rows);
  }

  // -- caches ---------------------------------------------------------------------------

  function size(n) {
    // Bytes in SI units, as a cache's size is written: 950 B, 1.58 KB, 16 MB.
    if (!(n > 0)) return "0 B";
    for (const unit of ["B", "KB", "MB", "GB"]) {
      if (n < 999.5) return unit === "B" ? Math.round(n) + " B" : Number(n.toPrecision(3)) + " " + unit;
      n /= 1000;
    }
    return Number(n.toPrecision(3)).toLocaleString("en-US") + " TB";
  }
  function percent(f) { return Number.isFinite(f) ? (100 * f).toFixed(1) + "%" : "-"; }
  function micros(us) { return us == null ? "-" : latency(us / 1e6); }

  function renderCaches(snap) {
    const section = document.getElementById("caches-section");
    const caches = snap.caches || [];
    section.hidden = !caches.length;
    if (!caches.length) return;
    const table = document.getElementById("caches");
    table.classList.toggle("no-ring", !caches.some((c) => c.ring_members !== undefined));
    const rows = caches.map((c) => el("tr", { "data-cache": c.path }, [
      el("td", { text: c.path }),
      el("td", { text: c.stages, class: "text" }),
      el("td", { text: percent(c.hit_rate) }),
      el("td", { text: count(c.hits) }),
      el("td", { text: count(c.misses) }),
      el("td", { text: count(c.sets) }),
      el("td", { text: count(c.evictions) }),
      el("td", { text: count(c.expired) }),
      el("td", { text: count(c.entries) }),
      el("td", { text: size(c.bytes_used) }),
      el("td", { text: size(c.max_bytes) }),
      el("td", { text: micros(c.get_us) }),
      el("td", {
        class: "ring",
        text: c.ring_members === undefined ? "-" : (c.ring_members - c.ring_down) + "/" + c.ring_members + " up",
      }),
      el("td", { class: "ring", text: micros(c.ring_get_us) }),
    ]));
    table.tBodies[0].replaceChildren(...rows);
  }

  // -- connectors -----------------------------------------------------------------------

  function figure(v) {
    if (v == null) return "-";
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (typeof v === "number") return Number.isInteger(v) ? count(v) : String(Number(v.toPrecision(3)));
    return String(v);
  }
  function other(row) {
    return Object.entries(row.extra || {}).map(([k, v]) => k + " " + figure(v)).join(", ");
  }

  function renderConnectors(snap) {
    const section = document.getElementById("connectors-section");
    const connectors = snap.connectors || [];
    section.hidden = !connectors.length;
    if (!connectors.length) return;
    const sources = connectors.filter((c) => c.role === "source").map((s) => el("tr", { "data-source": s.name }, [
      el("td", { text: s.name }),
      el("td", { text: count(s.read) }),
      el("td", { text: count(s.redelivered) }),
      el("td", { text: count(s.acked) }),
      el("td", { text: count(s.unacked) }),
      el("td", { text: count(s.peak_unacked) }),
      el("td", { text: count(s.max_unacked) }),
      el("td", { text: count(s.intake_waits) }),
      el("td", { text: s.lag == null ? "-" : count(s.lag) }),
      el("td", { text: other(s), class: "text" }),
    ]));
    const sinks = connectors.filter((c) => c.role === "sink").map((k) => el("tr", { "data-sink": k.name }, [
      el("td", { text: k.name }),
      el("td", { text: count(k.written) }),
      el("td", { text: count(k.failed), class: k.failed ? "failed nonzero" : "" }),
      el("td", { text: count(k.commits) }),
      el("td", { text: latency(k.commit_latency.p50) }),
      el("td", { text: latency(k.commit_latency.p95) }),
      el("td", { text: latency(k.commit_latency.p99) }),
      el("td", { text: latency(k.commit_latency.max) }),
      el("td", { text: other(k), class: "text" }),
    ]));
    const tables = [["sources", sources], ["sinks", sinks]];
    for (const [id, rows] of tables) {
      const table = document.getElementById(id);
      table.hidden = !rows.length;
      table.tBodies[0].replaceChildren(...rows);
    }
  }

  // -- failures -------------------------------------------------------------------------

  function failureKey(f) { return f.time + "|" + f.stage + "|" + f.item + "|" + f.error; }

  function renderFailures(snap) {
    const failed = snap.stages.reduce((n, s) => n + s.failed, 0);
    document.getElementById("failure-count").textContent =
      failed ? "(" + count(failed) + " failed; the most recent " + snap.failures.length + " below)" : "";
    const failures = snap.failures.slice().sort((a, b) => b.time - a.time);
    const keys = failures.map(failureKey).join("\n");
    if (keys === failureKeys) return;
    failureKeys = keys;
    const box = document.getElementById("failures");
    const open = new Set(Array.from(box.querySelectorAll("details[open]")).map((d) => d.dataset.key));
    if (!failures.length) {
      box.replaceChildren(el("p", { class: "empty", text: "none" }));
      return;
    }
    box.replaceChildren(...failures.map((f) => {
      const key = failureKey(f);
      const details = el("details", { class: "failure", "data-key": key, "data-stage": f.stage }, [
        el("summary", {}, [
          el("span", { class: "muted", text: when(f.time) + " " }),
          el("b", { text: f.stage + " " }),
          el("span", { class: "error", text: f.error }),
          ": " + f.message + " ",
          el("span", { class: "muted", text: "item " + f.item }),
        ]),
        el("pre", { class: "traceback", text: f.traceback || "(no traceback)" }),
      ]);
      if (open.has(key)) details.open = true;
      return details;
    }));
  }

  // -- charts ---------------------------------------------------------------------------

  function addPoints(timeline) {
    for (const name of timeline.stages) {
      if (!series.stages[name]) {
        const pad = series.t.map(() => null);
        series.stages[name] = { rate: pad.slice(), p50: pad.slice(), p95: pad.slice(), p99: pad.slice(), in_flight: pad.slice(), queued: pad.slice() };
      }
    }
    for (const point of timeline.points) {
      if (point.t <= lastT) continue;
      lastT = point.t;
      series.t.push(point.t);
      for (const [name, cols] of Object.entries(series.stages)) {
        const p = point.stages[name];
        cols.rate.push(p ? p.rate : null);
        cols.p50.push(p ? p.p50 * 1e3 : null);
        cols.p95.push(p ? p.p95 * 1e3 : null);
        cols.p99.push(p ? p.p99 * 1e3 : null);
        cols.in_flight.push(p ? p.in_flight : null);
        cols.queued.push(p ? p.queued : null);
        if (p) lastRate[name] = p.rate;
      }
    }
    if (series.t.length > MAX_POINTS) {
      // Keep the newest point and every other one before it, as the server does.
      const keep = (arr) => arr.filter((_, i) => (arr.length - 1 - i) % 2 === 0);
      series.t = keep(series.t);
      for (const cols of Object.values(series.stages)) for (const k of Object.keys(cols)) cols[k] = keep(cols[k]);
    }
  }

  function chartSpecs() {
    const names = Object.keys(series.stages);
    const color = (i) => COLORS[i % COLORS.length];
    const rateSeries = names.map((n, i) => ({ label: n, stroke: color(i), width: 2, key: [n, "rate"] }));
    const latSeries = [];
    const loadSeries = [];
    names.forEach((n, i) => {
      latSeries.push({ label: n + " p50", stroke: color(i), width: 1.5, key: [n, "p50"] });
      latSeries.push({ label: n + " p95", stroke: color(i), width: 1.5, dash: [6, 3], key: [n, "p95"] });
      latSeries.push({ label: n + " p99", stroke: color(i), width: 1.5, dash: [2, 3], key: [n, "p99"] });
      loadSeries.push({ label: n + " in flight", stroke: color(i), width: 2, key: [n, "in_flight"] });
      loadSeries.push({ label: n + " queued", stroke: color(i), width: 1.5, dash: [6, 3], key: [n, "queued"] });
    });
    return [
      { id: "chart-rate", series: rateSeries, fmt: rate },
      { id: "chart-latency", series: latSeries, fmt: (v) => latency(v / 1e3) },
      { id: "chart-load", series: loadSeries, fmt: count },
    ];
  }

  function chartData(spec) {
    return [series.t].concat(spec.series.map((s) => series.stages[s.key[0]][s.key[1]]));
  }

  function chartWidth(node) { return Math.max(300, node.clientWidth || node.parentNode.clientWidth - 20); }

  function buildCharts() {
    for (const c of charts) c.plot.destroy();
    charts = chartSpecs().map((spec) => {
      const node = document.getElementById(spec.id);
      const opts = {
        width: chartWidth(node),
        height: 220,
        scales: { x: { time: false } },
        axes: [
          { label: "seconds", size: 40 },
          { size: 60, values: (u, ticks) => ticks.map((v) => (v == null ? "" : v === 0 ? "0" : spec.fmt(v))) },
        ],
        series: [{ label: "t", value: (u, v) => (v == null ? "-" : duration(v)) }].concat(
          spec.series.map((s) => ({ label: s.label, stroke: s.stroke, width: s.width, dash: s.dash, spanGaps: true, value: (u, v) => (v == null ? "-" : spec.fmt(v)) }))
        ),
        legend: { live: true },
      };
      return { spec: spec, node: node, plot: new uPlot(opts, chartData(spec), node) };
    });
  }

  function renderCharts() {
    const names = Object.keys(series.stages);
    if (names.join("\n") !== stageNames.join("\n")) {
      stageNames = names;
      buildCharts();
      return;
    }
    for (const c of charts) c.plot.setData(chartData(c.spec));
  }

  window.addEventListener("resize", () => {
    for (const c of charts) c.plot.setSize({ width: chartWidth(c.node), height: 220 });
  });

  // -- polling --------------------------------------------------------------------------

  async function poll() {
    const connection = document.getElementById("connection");
    try {
      const [snap, timeline] = await Promise.all([
        getJSON("api/snapshot"),
        getJSON("api/timeline?since=" + encodeURIComponent(lastT)),
      ]);
      addPoints(timeline);
      renderHeader(snap);
      renderStages(snap);
      renderWorkers(snap);
      renderHosts(snap);
      renderCaches(snap);
      renderConnectors(snap);
      renderFailures(snap);
      renderCharts();
      connection.textContent = "";
      document.body.dataset.updated = String(snap.elapsed);
    } catch (err) {
      const status = document.getElementById("status");
      status.textContent = "offline";
      status.className = "badge offline";
      connection.textContent = "cannot reach the run (" + err.message + "); retrying";
    } finally {
      window.setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
