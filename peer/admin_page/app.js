// The crpeer status page: polls /api/node, /api/status and /api/peers every
// second, and lists the node's events as /api/events streams them. No
// libraries, no build step: this file is served as it is.
"use strict";

const POLL_MS = 1000;
const CHART_POINTS = 120; // two minutes at one sample a second
const MAX_EVENTS = 200;
const COLORS = ["#0969da", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e"];

const state = {
  labels: {},          // peer id -> label (trust store)
  since: {},           // site id -> connected since (epoch seconds)
  previous: {},        // site id -> {t, rows} for rates
  lag: {},             // peer key -> [lag, ...]
  names: {},           // peer key -> shown name
  events: null,        // the EventSource
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "className") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function groups(id) {
  return id ? id.replace(/(.{7})(?=.)/g, "$1-") : "";
}

function bytes(size) {
  for (const unit of ["B", "kB", "MB", "GB"]) {
    if (size < 1000 || unit === "GB") return unit === "B" ? `${size} B` : `${size.toFixed(1)} ${unit}`;
    size /= 1000;
  }
  return "";
}

function clock(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString();
}

function who(session) {
  if (!session.peer_id) return session.remote_name;
  const label = state.labels[session.peer_id];
  return label || session.remote_name;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (response.status === 401) throw Object.assign(new Error("token needed"), { login: true });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function setConnection(text, kind) {
  const badge = $("connection");
  badge.textContent = text;
  badge.className = `badge ${kind}`;
}

function showNode(node, status) {
  $("node-name").textContent = node.name;
  $("node-peer-id").textContent = node.peer_id ? groups(node.peer_id) : "(insecure: no peer id)";
  $("node-site-id").textContent = node.site_id;
  $("node-database").textContent = node.database;
  $("node-size").textContent = `${bytes(node.database_bytes)} (WAL ${bytes(node.wal_bytes)})`;
  $("node-listen").textContent = node.listen.join(", ") || "–";
  $("node-lan").textContent = node.lan ? "on (finding peers on the LAN)" : "off";
  $("node-versions").textContent =
    `db_version ${status.db_version}, schema ${status.schema_version}, ${status.held_rows} held`;
  document.title = `crpeer ${node.name}`;
}

const SYNC_CLASS = { in_sync: "ok", local_ahead: "warn", remote_ahead: "warn", diverged: "bad" };

function showPeers(status, peers, now) {
  const body = $("peers").querySelector("tbody");
  const rows = [];
  const live = new Set();
  for (const session of status.sessions) {
    const key = session.peer_id || session.site_id;
    live.add(session.peer_id);
    const rowsNow = session.rows_sent + session.rows_received;
    const before = state.previous[session.site_id];
    const rate = before && now > before.t ? (rowsNow - before.rows) / (now - before.t) : 0;
    state.previous[session.site_id] = { t: now, rows: rowsNow };
    const since = state.since[session.site_id];
    rows.push(
      el(
        "tr",
        {
          dataset: {
            peerId: session.peer_id || "",
            siteId: session.site_id,
            connected: "true",
            state: session.state,
            classification: session.classification,
          },
        },
        el("td", {}, who(session), el("span", { className: "id" }, groups(session.peer_id) || session.site_id)),
        el("td", {}, `${session.transport} ${session.inbound ? "in" : "out"}`, el("span", { className: "id" }, session.address)),
        el("td", {}, since ? clock(since) : "–"),
        el("td", { className: session.state === "live" ? "ok" : "warn" }, session.state === "live" ? "connected, live" : "connected, catching up"),
        el("td", { className: `sync ${SYNC_CLASS[session.classification]}` }, session.classification),
        el("td", {}, `${session.lag.to_send} / ${session.lag.to_receive}`),
        el("td", {}, `${Math.max(0, rate).toFixed(0)} changes/s`),
        el("td", { className: session.last_error ? "bad" : "muted" }, session.last_error || "–"),
      ),
    );
    state.names[key] = who(session);
    (state.lag[key] ||= []).push(session.lag.to_send + session.lag.to_receive);
  }
  for (const peer of peers.peers) {
    if (live.has(peer.peer_id)) continue;
    rows.push(
      el(
        "tr",
        { dataset: { peerId: peer.peer_id, connected: "false" } },
        el("td", {}, peer.label || "(no label)", el("span", { className: "id" }, groups(peer.peer_id))),
        el("td", {}, "–"), el("td", {}, "–"),
        el("td", { className: "muted" }, "offline"),
        el("td", {}, "–"), el("td", {}, "–"), el("td", {}, "–"), el("td", {}, "–"),
      ),
    );
  }
  body.replaceChildren(...rows);
  $("no-peers").hidden = rows.length > 0;
  for (const series of Object.values(state.lag)) {
    if (series.length > CHART_POINTS) series.splice(0, series.length - CHART_POINTS);
  }
}

function drawChart() {
  const svg = $("lag-chart");
  const keys = Object.keys(state.lag);
  const top = Math.max(1, ...keys.flatMap((key) => state.lag[key]));
  const lines = keys.map((key, index) => {
    const series = state.lag[key];
    const offset = CHART_POINTS - series.length;
    const points = series
      .map((value, i) => `${((offset + i) / (CHART_POINTS - 1)) * 600},${115 - (value / top) * 105}`)
      .join(" ");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points);
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[index % COLORS.length]);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("vector-effect", "non-scaling-stroke");
    return line;
  });
  svg.replaceChildren(...lines);
  $("lag-legend").replaceChildren(
    ...keys.map((key, index) => {
      const swatch = el("i");
      swatch.style.background = COLORS[index % COLORS.length]; // CSSOM: allowed by the CSP
      return el("span", {}, swatch, state.names[key] || key);
    }),
    `max ${top} version${top === 1 ? "" : "s"} behind`,
  );
}

function describe(event) {
  const remote = event.remote;
  const name = remote ? (remote.peer_id && state.labels[remote.peer_id]) || remote.name : event.address || "";
  switch (event.event) {
    case "changed":
      return `${event.table_rows || event.rows} row${(event.table_rows || event.rows) === 1 ? "" : "s"} from ${name} (${event.tables.join(", ")})`;
    case "connected":
      return `${remote.inbound ? "from" : "to"} ${name} (${remote.address})`;
    case "disconnected":
      return `${name}${event.error ? `: ${event.error}` : ""}`;
    case "progress":
      return `${name}: ${event.rows_received}/${event.rows_expected} changes`;
    case "session_failed":
      return `${name}: ${event.error}`;
    case "dial_state":
      return `${event.address} ${event.state}${event.error ? `: ${event.error}` : ""}`;
    default:
      return name;
  }
}

function addEvent(event) {
  const list = $("events");
  const item = el(
    "li",
    { dataset: { event: event.event } },
    el("time", {}, clock(event.time)),
    el("span", { className: "kind" }, event.event.replace("_", " ")),
    describe(event),
  );
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function openEvents() {
  if (state.events) state.events.close();
  state.events = new EventSource("/api/events");
  state.events.onmessage = (message) => addEvent(JSON.parse(message.data));
  state.events.onopen = () => setConnection("live", "ok");
  state.events.onerror = () => setConnection("reconnecting…", "warn");
}

async function poll() {
  try {
    const [node, status, peers] = await Promise.all([api("/api/node"), api("/api/status"), api("/api/peers")]);
    state.labels = node.labels;
    state.since = node.connected_since;
    showNode(node, status);
    showPeers(status, peers, node.time);
    drawChart();
    if (!state.events) openEvents();
  } catch (error) {
    if (error.login) {
      $("login").hidden = false;
      $("main").hidden = true;
      setConnection("locked", "warn");
      return; // the form starts polling again
    }
    setConnection(`unreachable (${error.message})`, "bad");
  }
  setTimeout(poll, POLL_MS);
}

$("login").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const response = await fetch("/api/login", {
    method: "POST",
    headers: { Authorization: `Bearer ${$("token").value.trim()}` },
    credentials: "same-origin",
  });
  if (!response.ok) {
    $("login-error").textContent = "wrong token";
    return;
  }
  $("login").hidden = true;
  $("main").hidden = false;
  poll();
});

poll();
