"use strict";
const COLORS = {negative:"#d9534f", neutral:"#9aa3b2", positive:"#3a9d5d"};
const PALETTE = ["#4e79a7","#f28e2b","#76b7b2","#edc948","#b07aa1","#ff9da7","#9c755f"];
function color(label) {
  if (COLORS[label]) return COLORS[label];
  let h = 0; for (const ch of label) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[h % PALETTE.length];
}
function setNum(id, value, text) {
  const el = document.getElementById(id);
  el.dataset.value = value === null || value === undefined ? "" : String(value);
  el.textContent = text;
}
function fmtCount(v) { return Math.round(v).toLocaleString("en-US"); }
function fmtLatency(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
  return s.toFixed(2) + " s";
}
function drawSpark(series) {
  const c = document.getElementById("spark"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const max = Math.max(1, ...series), w = c.width / Math.max(1, series.length);
  g.fillStyle = "#4e79a7";
  series.forEach((v, i) => { const h = (v / max) * (c.height - 4); g.fillRect(i * w + 1, c.height - h, w - 2, h); });
}
function renderBrands(mix) {
  const tbody = document.querySelector("#brands tbody");
  const labels = new Set();
  const rows = Object.entries(mix).map(([brand, counts]) => {
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    Object.keys(counts).forEach(l => labels.add(l));
    return {brand, counts, total};
  }).sort((a, b) => b.total - a.total || a.brand.localeCompare(b.brand));
  tbody.replaceChildren(...rows.map(({brand, counts, total}) => {
    const tr = document.createElement("tr");
    tr.dataset.brand = brand;
    const name = document.createElement("td"); name.textContent = brand;
    const n = document.createElement("td"); n.textContent = fmtCount(total); n.className = "brand-total";
    const bar = document.createElement("td"); const div = document.createElement("div"); div.className = "bar";
    const detail = document.createElement("td"); detail.className = "muted";
    const parts = [];
    for (const [label, c] of Object.entries(counts).sort()) {
      const s = document.createElement("span");
      s.style.width = (100 * c / total) + "%"; s.style.background = color(label); s.title = label + ": " + c;
      div.appendChild(s); parts.push(label + " " + c);
    }
    bar.appendChild(div); detail.textContent = parts.join(", ");
    tr.append(name, n, bar, detail);
    return tr;
  }));
  document.getElementById("legend").replaceChildren(...[...labels].sort().map(l => {
    const s = document.createElement("span"); const i = document.createElement("i");
    i.style.background = color(l); s.append(i, l); return s;
  }));
}
function renderLanguages(mix, models) {
  // Each language's model; one no model declares (every language served) goes to the last.
  const serving = {};
  models.forEach((m) => (m.languages || "").split(",").forEach((l) => { serving[l] = m.name; }));
  const last = models.length ? models[models.length - 1].name : "-";
  const rows = Object.entries(mix).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const total = rows.reduce((sum, [, n]) => sum + n, 0);
  document.querySelector("#languages tbody").replaceChildren(...rows.map(([language, n]) => {
    const tr = document.createElement("tr"); tr.dataset.language = language;
    const name = document.createElement("td"); name.textContent = language;
    const count = document.createElement("td"); count.textContent = fmtCount(n); count.className = "language-posts";
    const share = document.createElement("td"); share.textContent = (100 * n / total).toFixed(1) + " %";
    const model = document.createElement("td"); model.textContent = serving[language] || last;
    model.className = "language-model";
    tr.append(name, count, share, model);
    return tr;
  }));
}
function renderTimeline(series) {
  const c = document.getElementById("timeline"), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const brands = Object.keys(series).filter(b => series[b].some(p => p.negativity !== null));
  document.getElementById("timeline-empty").hidden = brands.length > 0;
  const points = brands.flatMap(b => series[b]);
  if (!points.length) { document.getElementById("timeline-legend").replaceChildren(); return; }
  const t0 = Math.min(...points.map(p => p.end)), t1 = Math.max(...points.map(p => p.end));
  const x = t => 30 + (c.width - 40) * (t1 > t0 ? (t - t0) / (t1 - t0) : 1);
  const y = v => c.height - 10 - (c.height - 20) * v;
  g.strokeStyle = "#e3e6eb"; g.fillStyle = "#6b7384"; g.font = "12px sans-serif";
  for (const v of [0, 0.5, 1]) { g.beginPath(); g.moveTo(30, y(v)); g.lineTo(c.width, y(v)); g.stroke(); g.fillText(v * 100 + "%", 0, y(v) + 4); }
  for (const b of brands) {
    g.strokeStyle = color(b); g.lineWidth = 2; g.beginPath();
    series[b].filter(p => p.negativity !== null).forEach((p, i) => i ? g.lineTo(x(p.end), y(p.negativity)) : g.moveTo(x(p.end), y(p.negativity)));
    g.stroke();
  }
  c.dataset.brands = brands.join(",");
  document.getElementById("timeline-legend").replaceChildren(...brands.map(b => {
    const s = document.createElement("span"); const i = document.createElement("i");
    i.style.background = color(b); s.append(i, b); return s;
  }));
}
function fmtTime(ms) { return new Date(ms).toLocaleTimeString("en-GB"); }
function renderAlerts(alerts) {
  document.getElementById("alerts-empty").hidden = alerts.length > 0;
  document.getElementById("alerts").replaceChildren(...alerts.map(a => {
    const li = document.createElement("li");
    li.className = a.status; li.dataset.alertId = a.alert_id; li.dataset.status = a.status; li.dataset.brand = a.brand;
    const status = document.createElement("span"); status.className = "status"; status.textContent = a.status;
    const head = document.createElement("span");
    head.textContent = `${a.kind.replace("_", " ")}: ${a.brand} (${a.severity}), ${a.metric} ${a.observed.toFixed(2)}`
      + ` vs ${a.baseline_mean.toFixed(2)} ± ${a.baseline_std.toFixed(2)}, z ${a.z.toFixed(1)};`
      + ` window ${fmtTime(a.window.start)}-${fmtTime(a.window.end)}`;
    li.append(status, head);
    for (const story of (a.stories || []).slice(0, 2)) {
      const t = document.createElement("div"); t.className = "story";
      t.textContent = `story: '${story.label}', ${story.posts} posts, ${Math.round(100 * story.negative_share)} % negative`;
      li.appendChild(t);
    }
    const terms = (a.top_terms || []).map(t => t.term);
    if (terms.length) {
      const t = document.createElement("div"); t.className = "muted"; t.textContent = "terms: " + terms.join(", ");
      li.appendChild(t);
    }
    for (const e of (a.examples || []).slice(0, 2)) {
      const q = document.createElement("blockquote"); q.textContent = `${e.sentiment}: ${e.text}`; li.appendChild(q);
    }
    return li;
  }));
}
function render(d) {
  setNum("throughput", d.throughput_posts_per_s, d.throughput_posts_per_s.toFixed(1));
  document.getElementById("throughput-window").textContent = d.throughput_window_s;
  drawSpark(d.throughput_series);
  setNum("posts-total", d.posts_consumed_total, fmtCount(d.posts_consumed_total));
  setNum("events-total", d.events_produced_total, fmtCount(d.events_produced_total));
  setNum("dlq-total", d.dlq_records_total, fmtCount(d.dlq_records_total));
  document.getElementById("dlq-reasons").textContent = Object.entries(d.dlq_by_reason)
    .filter(([, v]) => v > 0).map(([r, v]) => r + ": " + fmtCount(v)).join(", ");
  const lat = d.latency_seconds.created;
  document.getElementById("latency-window").textContent = Math.round(d.latency_window_s);
  for (const p of ["p50", "p95", "p99"]) {
    setNum(p, lat.window[p], fmtLatency(lat.window[p]));
    setNum(p + "-total", lat.since_start[p], fmtLatency(lat.since_start[p]));
  }
  const ingest = d.latency_seconds.ingest.since_start.p99;
  setNum("p99-ingest", ingest, fmtLatency(ingest));
  document.getElementById("sentiment-window").textContent = d.sentiment_window_s;
  renderBrands(d.sentiment_by_brand);
  renderAlerts(d.alerts || []);
  document.getElementById("language-window").textContent = d.sentiment_window_s;
  renderLanguages(d.language_mix || {}, d.models || []);
  renderTimeline(d.brand_timeline || {});
  const models = (d.models || []).map((m) => Object.values(m).filter(Boolean).join(" / "));
  document.getElementById("model").textContent = "model: " + (models.length ? models.join("; ") : "-");
  const st = document.getElementById("status");
  st.textContent = (d.worker_up >= 1 ? "worker up" : "worker not processing") + " - updated "
    + new Date(d.time * 1000).toLocaleTimeString("en-GB");
  st.className = d.worker_up >= 1 ? "meta" : "meta down";
  document.body.dataset.updated = String(d.time);
}
async function poll() {
  try {
    const r = await fetch("api/summary", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    const st = document.getElementById("status"); st.textContent = "no data: " + e.message; st.className = "meta down";
  }
  setTimeout(poll, 1000);
}
poll();
