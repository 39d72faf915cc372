// The dashboard: figures for a window from /api/dashboard, added to live from /api/stream
// (Server-Sent Events), the pipeline's health from the stream's "live" events.
"use strict";

const state = { window: "24h", currency: "USD", summary: null, users: null, chart: null,
                series: null, opened: false, recent: [] };
const $ = (id) => document.getElementById(id);

const money = () => new Intl.NumberFormat("en-US", { style: "currency", currency: state.currency });
const compactMoney = () => new Intl.NumberFormat("en-US", { style: "currency",
  currency: state.currency, notation: "compact" });
const count = new Intl.NumberFormat("en-US");
const percent = new Intl.NumberFormat("en-US", { style: "percent", maximumFractionDigits: 1 });
const cents = (x) => Math.round(x * 100) / 100;

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) { location.assign("/login"); throw new Error("signed out"); }
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function show(id, value, text) {
  const el = $(id);
  el.dataset.value = String(value);
  el.textContent = text;
}

function renderFigures() {
  const s = state.summary, u = state.users;
  const aov = s.orders ? cents(s.revenue / s.orders) : 0;
  show("fig-revenue", cents(s.revenue), money().format(s.revenue));
  show("fig-orders", s.orders, count.format(s.orders));
  show("fig-aov", aov, money().format(aov));
  show("fig-cancel-rate", s.orders ? s.cancelled / s.orders : 0,
       percent.format(s.orders ? s.cancelled / s.orders : 0));
  show("fig-return-rate", s.orders ? s.returned / s.orders : 0,
       percent.format(s.orders ? s.returned / s.orders : 0));
  show("fig-new-customers", u.newCustomers, count.format(u.newCustomers));
  show("fig-returning-customers", u.returningCustomers, count.format(u.returningCustomers));
  show("fig-active-users", u.activeUsers, count.format(u.activeUsers));
}

function bars(list, rows, label, value, format) {
  const top = Math.max(1, ...rows.map(value));
  list.replaceChildren(...rows.map((row) => {
    const item = document.createElement("li");
    item.innerHTML = '<span class="label"></span><span class="value"></span><span class="bar"></span>';
    item.querySelector(".label").textContent = label(row);
    item.querySelector(".value").textContent = format(row);
    item.querySelector(".bar").style.width = `${(100 * value(row)) / top}%`;
    return item;
  }));
}

function rows(tbody, data) {
  tbody.replaceChildren(...data.map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.append(td);
    }
    return tr;
  }));
}

function renderChart(series) {
  const box = $("series-chart");
  const times = series.revenue.map((p) => Date.parse(p.start) / 1000);
  const data = [times, series.revenue.map((p) => p.value), series.orders.map((p) => p.value)];
  const width = Math.max(280, box.clientWidth);
  if (state.chart) state.chart.destroy();
  state.chart = new uPlot({
    width, height: 220,
    series: [{}, { label: "revenue", stroke: "#2563eb", fill: "rgba(37,99,235,0.12)", scale: "money",
                   value: (u, v) => (v == null ? "–" : money().format(v)) },
             { label: "orders", stroke: "#f97316", scale: "orders" }],
    axes: [{}, { scale: "money", values: (u, vals) => vals.map((v) => compactMoney().format(v)),
                 size: 60 },
           { scale: "orders", side: 1, grid: { show: false } }],
  }, data, box);
}

function render(d) {
  const main = $("dashboard");
  main.dataset.window = d.window.name;
  main.dataset.from = d.window.from;
  main.dataset.to = d.window.to;
  state.summary = { orders: d.summary.orders, revenue: d.summary.revenue,
                    cancelled: d.summary.cancelled, returned: d.summary.returned };
  state.users = d.users;
  state.series = d.series;
  renderFigures();
  renderChart(d.series);
  const name = (p) => p.name || p.productId;
  bars($("top-products"), d.topProducts, name, (p) => p.revenue,
       (p) => `${money().format(p.revenue)} · ${count.format(p.units)} units`);
  for (const [key, id] of [["shoppers", "funnel-shoppers"], ["orders", "funnel-orders"]]) {
    bars($(id), d.funnel[key], (s) => s.step.replaceAll("_", " "), (s) => s.count,
         (s) => `${count.format(s.count)} (${percent.format(s.conversion)})`);
  }
  rows($("low-stock").tBodies[0], d.lowStock.map((p) => [name(p), count.format(p.available ?? 0)]));
  for (const button of document.querySelectorAll("#windows button")) {
    button.setAttribute("aria-pressed", String(button.dataset.window === d.window.name));
  }
}

function renderLive(live) {
  $("live-at").textContent = new Date(live.at).toLocaleTimeString("en-GB");
  const o = live.orders;
  rows($("live-statuses").tBodies[0],
       o ? Object.entries(o.byStatus).map(([status, n]) => [status, count.format(n)])
         : [["orders", "unavailable"]]);
  $("live-past-deadline").textContent = o ? count.format(o.pastDeadline) : "–";
  $("live-dead-letters").textContent =
    o ? count.format(o.deadLetters.reduce((sum, d) => sum + d.count, 0)) : "–";
  const ingest = live.ingest;
  $("live-ingest-lag").textContent =
    ingest && ingest.lagSeconds != null ? `${ingest.lagSeconds.toFixed(2)} s` : "–";
  $("live-ingest-pending").textContent =
    ingest && ingest.pending != null ? count.format(ingest.pending) : "–";
  rows($("live-consumers").tBodies[0],
       live.consumers.map((c) => [c.name, count.format(c.pending), count.format(c.ackPending)]));
  rows($("live-services").tBodies[0],
       live.services.map((s) => [s.name, count.format(s.requests), count.format(s.errors)]));
}

function onTick(tick) {
  if (state.summary) {
    state.summary.orders += tick.orders;
    state.summary.revenue = cents(state.summary.revenue + tick.revenue);
    state.summary.cancelled += tick.cancelled;
    state.summary.returned += tick.returned;
    renderFigures();
  }
  state.recent = [...tick.recent.reverse(), ...state.recent].slice(0, 12);
  $("live-recent").replaceChildren(...state.recent.map((e) => {
    const item = document.createElement("li");
    const amount = e.totalPrice != null ? ` ${money().format(e.totalPrice)}` : "";
    item.textContent = `${e.event}${amount}`;
    return item;
  }));
}

function setConnection(name, text) {
  const el = $("connection");
  el.dataset.state = name;
  el.textContent = text;
}

function connect() {
  const stream = new EventSource("/api/stream");
  stream.onopen = () => {
    setConnection("live", "live");
    // Orders placed while the stream was down are counted by analytics: catch up.
    if (state.opened) load(state.window).catch(() => {});
    state.opened = true;
  };
  stream.addEventListener("tick", (e) => onTick(JSON.parse(e.data)));
  stream.addEventListener("live", (e) => renderLive(JSON.parse(e.data)));
  stream.addEventListener("signed-out", () => location.assign("/login"));
  stream.onerror = () => {
    setConnection("reconnecting", "reconnecting…");
    if (stream.readyState === EventSource.CLOSED) {
      // A refusal (not a drop) ends EventSource's own retries: ask again a little later.
      setTimeout(() => getJson("/api/me").then(connect, () => setTimeout(connect, 2000)), 1000);
    }
  };
}

async function load(window) {
  state.window = window;
  history.replaceState(null, "", `#${window}`);
  try {
    render(await getJson(`/api/dashboard?window=${encodeURIComponent(window)}`));
    $("problem").hidden = true;
  } catch (error) {
    $("problem").textContent = "The figures could not be loaded just now; retrying shortly.";
    $("problem").hidden = false;
    throw error;
  }
}

async function start() {
  const me = await getJson("/api/me");
  state.currency = me.currency;
  const wanted = location.hash.slice(1);
  connect();  // while the figures load (a tick before them is dropped: analytics counts it)
  await load(me.windows.includes(wanted) ? wanted : "24h").catch(() => {});
  for (const button of document.querySelectorAll("#windows button")) {
    button.addEventListener("click", () => load(button.dataset.window).catch(() => {}));
  }
  new ResizeObserver(() => state.series && renderChart(state.series)).observe($("series-chart"));
  // Analytics stays the authority: the live additions are replaced by its figures now and then.
  setInterval(() => load(state.window).catch(() => {}), 60000);
}

start();
