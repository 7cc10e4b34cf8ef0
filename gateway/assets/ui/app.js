// The dashboard: one EventSource on /ui/stats (a frame a second), a bounded history of frames,
// and what it draws from them. A token (token mode) stays in this page's memory only.
"use strict";

const HISTORY = 300; // frames kept: five minutes
const SPARK = 120; // frames in a sparkline
const WINDOW_S = 60; // the traffic charts' x-axis: the last minute, from the first frame on
const TAIL = 50; // events kept in the topic tail

const state = { token: null, frames: [], stats: null, tail: null, charts: null };
const $ = (id) => document.getElementById(id);

function withToken(url) {
  if (!state.token) return url;
  return url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(state.token);
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = "pill " + (kind || "");
}

async function start() {
  const config = await (await fetch("/ui/config")).json();
  if (config.token_mode && !state.token) {
    $("token-form").hidden = false;
    setStatus("token needed", "lost");
    return;
  }
  connect();
}

function connect() {
  if (state.stats) state.stats.close();
  const source = new EventSource(withToken("/ui/stats"));
  state.stats = source;
  source.addEventListener("open", () => setStatus("live", "live"));
  source.addEventListener("error", (e) => {
    // The server's last frame when the token expired (a MessageEvent with data): ask for a
    // fresh token rather than reconnecting with the old one.
    if (e.data) {
      source.close();
      state.token = null;
      $("token-form").hidden = false;
      setStatus("token expired", "lost");
      return;
    }
    setStatus("reconnecting…", "lost");
  });
  source.addEventListener("stats", (e) => {
    state.frames.push(JSON.parse(e.data));
    if (state.frames.length > HISTORY) state.frames.shift();
    draw();
  });
}

function fmt(n, digits) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return n.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

// Calls per second of `backend` over the last `n` frames, summed.
function recentCalls(backend, n) {
  let sum = 0;
  for (const frame of state.frames.slice(-n)) {
    const b = (frame.backends || []).find((x) => x.backend === backend);
    if (b) sum += b.calls_per_s;
  }
  return sum;
}

function sparkline(backend) {
  const values = state.frames.slice(-SPARK).map((f) => {
    const b = (f.backends || []).find((x) => x.backend === backend);
    return b ? b.calls_per_s : 0;
  });
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? 100 / (values.length - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(2)},${(30 - (v / max) * 28).toFixed(2)}`);
  return `<svg class="spark" viewBox="0 0 100 30" preserveAspectRatio="none" aria-label="calls per second">` +
    `<polyline points="${points.join(" ")}"/></svg>`;
}

function drawBackends(frame) {
  const section = $("backends-section");
  if (!frame.backends) {
    section.hidden = true;
    return;
  }
  section.hidden = false;
  const container = $("backends");
  const recentTotal = frame.backends.reduce((s, b) => s + recentCalls(b.backend, 10), 0);
  const callsTotal = frame.backends.reduce((s, b) => s + b.calls, 0);
  const seen = new Set();
  for (const b of frame.backends) {
    seen.add(b.backend);
    let card = container.querySelector(`[data-backend="${CSS.escape(b.backend)}"]`);
    if (!card) {
      card = document.createElement("article");
      card.className = "backend";
      card.dataset.backend = b.backend;
      container.appendChild(card);
    }
    const share10 = recentTotal > 0 ? (100 * recentCalls(b.backend, 10)) / recentTotal : 0;
    const shareAll = callsTotal > 0 ? (100 * b.calls) / callsTotal : 0;
    card.dataset.healthy = String(b.healthy);
    card.dataset.share10 = share10.toFixed(2);
    card.innerHTML =
      `<h3><span>${b.backend}</span><span class="state">${b.healthy ? "up" : "down: " + (b.down || "?")}</span></h3>` +
      `<dl>` +
      `<dt>share, last 10 s</dt><dd class="share10">${fmt(share10, 1)} %</dd>` +
      `<dt>share since start</dt><dd>${fmt(shareAll, 1)} %</dd>` +
      `<dt>calls / s</dt><dd>${fmt(b.calls_per_s, 1)}</dd>` +
      `<dt>in flight</dt><dd>${b.in_flight}</dd>` +
      `<dt>open streams</dt><dd>${b.streams}</dd>` +
      `<dt>balancer cost</dt><dd>${fmt(b.cost / 1e6, 2)} ms</dd>` +
      `</dl>` + sparkline(b.backend);
  }
  for (const card of [...container.children]) {
    if (!seen.has(card.dataset.backend)) card.remove();
  }
  const healthy = frame.backends.filter((b) => b.healthy).length;
  $("backends-summary").textContent = `${healthy} of ${frame.backends.length} healthy`;
}

function makeCharts() {
  const width = (id) => Math.max(200, $(id).clientWidth || 320);
  const axes = [{ stroke: "#888" }, { stroke: "#888" }];
  // A fixed window ending at the newest frame: uPlot would stretch one sample over years.
  const scales = { x: { time: true, range: (u, min, max) => [max - WINDOW_S, max] } };
  const rps = new uPlot({
    width: width("chart-rps"), height: 170, axes, scales,
    series: [{}, { label: "requests/s", stroke: "#2563eb", width: 1.5 }],
  }, [[], []], $("chart-rps"));
  const latency = new uPlot({
    width: width("chart-latency"), height: 170, axes, scales,
    series: [{}, { label: "p50", stroke: "#16a34a", width: 1.5 }, { label: "p99", stroke: "#dc2626", width: 1.5 }],
  }, [[], [], []], $("chart-latency"));
  return { rps, latency };
}

function drawTraffic(frame) {
  const section = $("traffic-section");
  if (!frame.traffic) {
    section.hidden = true;
    return;
  }
  section.hidden = false;
  if (!state.charts) state.charts = makeCharts();
  const since = frame.time_ms - WINDOW_S * 1000;
  const frames = state.frames.filter((f) => f.traffic && f.time_ms >= since);
  const times = frames.map((f) => f.time_ms / 1000);
  state.charts.rps.setData([times, frames.map((f) => f.traffic.requests_per_s)]);
  state.charts.latency.setData([
    times,
    frames.map((f) => f.traffic.p50_ms),
    frames.map((f) => f.traffic.p99_ms),
  ]);
  const errors = Object.entries(frame.traffic.errors_per_s);
  $("errors").textContent = errors.length
    ? errors.map(([status, rate]) => `${status}: ${fmt(rate, 1)}`).join(", ")
    : "none";
}

function drawTopics(frame) {
  const body = $("topics").querySelector("tbody");
  body.replaceChildren(...frame.topics.map((t) => {
    const row = document.createElement("tr");
    const everywhere = t.present === null || t.present === undefined ? "–" : String(t.present);
    const named = (t.subjects || []).join(", ") || "–";
    for (const text of [t.topic, String(t.subscribers), everywhere, named, t.backend || "–"]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.appendChild(cell);
    }
    return row;
  }));
}

function draw() {
  const frame = state.frames[state.frames.length - 1];
  drawBackends(frame);
  drawTraffic(frame);
  drawTopics(frame);
}

// The topic tail: an EventSource, which resumes with Last-Event-ID by itself.
function tail(topic) {
  if (state.tail) state.tail.close();
  $("tail-events").replaceChildren();
  const source = new EventSource(withToken(`/subscribe/${encodeURIComponent(topic)}`));
  state.tail = source;
  state.tailTopic = topic;
  source.addEventListener("open", () => { $("tail-status").textContent = `tailing ${topic}`; });
  source.addEventListener("error", () => { $("tail-status").textContent = "reconnecting…"; });
  source.addEventListener("gap", (e) => addLine(`gap: ${e.data}`));
  source.addEventListener("message", (e) => {
    const event = JSON.parse(e.data);
    addLine(`#${event.seq} ${event.title} (${event.userId || "–"})`);
  });
}

// A user's change feed in the same list: every create, update and delete of their events.
function followChanges(user) {
  if (state.tail) state.tail.close();
  $("tail-events").replaceChildren();
  const query = user ? `?userId=${encodeURIComponent(user)}` : "";
  const source = new EventSource(withToken(`/changes${query}`));
  const who = user || "your";
  state.tail = source;
  state.tailTopic = null;
  source.addEventListener("open", () => { $("tail-status").textContent = `following ${who} changes`; });
  source.addEventListener("error", () => { $("tail-status").textContent = "reconnecting…"; });
  source.addEventListener("gap", (e) => addLine(`gap: ${e.data}`));
  for (const kind of ["created", "updated", "deleted"]) {
    source.addEventListener(kind, (e) => {
      const event = JSON.parse(e.data);
      const title = kind === "deleted" ? event.id : event.title;
      addLine(`#${e.lastEventId} ${kind} ${title} (revision ${event.revision})`);
    });
  }
}

function addLine(text) {
  const list = $("tail-events");
  const item = document.createElement("li");
  item.textContent = text;
  list.prepend(item);
  while (list.children.length > TAIL) list.lastChild.remove();
}

async function publish(topic, title) {
  const headers = { "content-type": "application/json" };
  if (state.token) headers.authorization = "Bearer " + state.token;
  const response = await fetch("/publish", {
    method: "POST", headers, body: JSON.stringify({ topic, title }),
  });
  const body = await response.json();
  $("publish-status").textContent = response.ok ? `published #${body.seq}` : body.message;
}

// Charts follow the page's width (a phone turned, a window resized).
window.addEventListener("resize", () => {
  if (!state.charts) return;
  for (const [id, chart] of [["chart-rps", state.charts.rps], ["chart-latency", state.charts.latency]]) {
    chart.setSize({ width: Math.max(200, $(id).clientWidth), height: 170 });
  }
});

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value.trim();
  $("token").value = "";
  $("token-form").hidden = true;
  connect();
});
$("tail-form").addEventListener("submit", (e) => {
  e.preventDefault();
  tail($("tail-topic").value.trim());
});
$("changes-form").addEventListener("submit", (e) => {
  e.preventDefault();
  followChanges($("changes-user").value.trim());
});
$("publish-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const topic = state.tailTopic || $("tail-topic").value.trim();
  // Following changes: the form publishes to the topic typed above, if any.
  if (!topic) {
    $("publish-status").textContent = "choose a topic above first";
    return;
  }
  publish(topic, $("publish-title").value.trim());
});

start().catch((err) => setStatus("error: " + err.message, "lost"));
