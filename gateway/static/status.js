// The gateway's status page: same origin, so no CORS; with GATEWAY_TOKEN set it asks for the token
// once per tab and trades it for a short-lived ?access_token= for the event stream and the links.
import {
  AuthError, COLOURS, Token, askForToken, badge, bytes, facts, fill, h, lineChart, notice, request,
  short, table, time,
} from "/static/page.js";

const token = new Token("branchkey-gateway-token");
const REFRESH_MS = 5000;
const FEED_LENGTH = 50;
const state = { aggregations: [], access: null, source: null, lastEventId: null, timer: null, renew: null };

const get = (path) => request(token, path);

/** `path` with the current ?access_token= when a token is in use (EventSource and links). */
function signed(path) {
  if (!state.access) return path;
  return `${path}${path.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(state.access.access_token)}`;
}

async function refreshAccess() {
  if (!token.value) { state.access = null; return; }
  state.access = await request(token, "/access", { method: "POST" });
  // Renew a minute before expiry, so that links on the page keep working.
  clearTimeout(state.renew);
  state.renew = setTimeout(() => refreshAccess().then(renderAggregations).catch(failed), Math.max(10, state.access.expires_in - 60) * 1000);
}

function runBadge(status) {
  const kind = { start: "good", pause: "warn", stop: "bad" }[status] || "";
  return badge(status || "unknown", kind);
}

function channelBadge(status) {
  const kind = { connected: "good", connecting: "warn", starting: "warn", down: "bad" }[status] || "";
  return badge(status, kind);
}

async function renderSession() {
  const [session, channel] = await Promise.all([get("/session"), get("/channel")]);
  document.getElementById("where").textContent = `${session.dialect} → ${session.upstream_host}`;
  fill("session", facts([
    ["State", badge(session.state, session.state === "authenticated" ? "good" : "bad")],
    ["Leaf", session.leaf_name ? `${session.leaf_name} (${session.leaf_id})` : session.leaf_id],
    ["Tree", session.tree_id],
    ["Branch", session.branch_id],
    ["Dialect", session.dialect],
    ["Upstream", [session.upstream_host, session.offline ? [" ", badge("embedded, offline", "warn")] : null]],
  ]));
  fill("run", facts([
    ["Run status", runBadge(session.run_status)],
    ["Run number", session.run_number],
    ["Channel", [channelBadge(channel.state), ` ${session.dialect === "v1" ? "RabbitMQ" : "WebSocket"}`]],
    ["Reconnects", channel.reconnects],
    ["Last message", time(channel.last_message_at)],
    ["Last error", channel.last_error],
  ]));
}

async function loadAggregations() {
  let newest = 0;
  try {
    newest = (await get("/aggregations/latest")).id;
  } catch (error) {
    if (error instanceof AuthError) throw error; // 404: none yet
  }
  state.aggregations = newest ? await get(`/aggregations?after=${Math.max(0, newest - 200)}`) : [];
  state.lastEventId = newest ? Math.max(0, newest - 20) : null; // none yet: live events only
}

function renderAggregations() {
  const rows = [...state.aggregations].reverse().slice(0, 25);
  fill("aggregations", table([
    ["Event", (a) => a.id],
    ["Aggregation", (a) => short(a.aggregation_id)],
    ["Run", (a) => a.run_number ?? "—"],
    ["Received", (a) => time(a.received_at)],
    ["Download", (a) => [
      h("a", { href: signed(`/aggregations/${a.aggregation_id}`), download: `${a.aggregation_id}.npz` }, "npz"), " · ",
      h("a", { href: signed(`/aggregations/${a.aggregation_id}?format=npy`), download: `${a.aggregation_id}.npy` }, "npy"),
    ]],
  ], rows, "No aggregation yet: upload weights (curl -F file=@w.npz localhost:8000/upload)."));
}

async function renderUploads() {
  const uploads = await get("/uploads?limit=20");
  fill("uploads", table([
    ["Time", (u) => time(u.at)],
    ["Outcome", (u) => u.outcome === "forwarded" ? badge("forwarded", "good") : badge("refused", "bad")],
    ["Size", (u) => bytes(u.size ?? u.request_bytes)],
    ["Layers", (u) => u.layers ?? "—"],
    ["Weighting", (u) => u.weighting === null ? "—" : [String(u.weighting), u.weighting_source ? h("span", { class: "empty" }, ` (${u.weighting_source})`) : null]],
    ["File id / problem", (u) => u.outcome === "forwarded" ? short(u.file_id) : h("span", { title: u.detail || "" }, h("code", {}, u.problem_type))],
  ], uploads, "No upload since the gateway started."));
}

/** One chart per numeric metric: a line per mode, x = the aggregation's place in the list. */
async function renderMetrics() {
  const reports = await get("/performance");
  const order = new Map(state.aggregations.map((a, i) => [a.aggregation_id, i + 1]));
  const labels = new Map();
  const charts = new Map(); // metric -> mode -> [[x, y]]
  for (const report of reports) {
    if (typeof report.data !== "object") continue;
    if (!order.has(report.aggregation_id)) order.set(report.aggregation_id, order.size + 1);
    const x = order.get(report.aggregation_id);
    labels.set(x, report.aggregation_id.slice(0, 4));
    for (const [metric, value] of Object.entries(report.data)) {
      if (typeof value !== "number" || !Number.isFinite(value)) continue;
      if (!charts.has(metric)) charts.set(metric, new Map());
      const modes = charts.get(metric);
      if (!modes.has(report.mode)) modes.set(report.mode, []);
      modes.get(report.mode).push([x, value]);
    }
  }
  if (!charts.size) {
    fill("metrics", h("p", { class: "empty" },
      'No numeric metrics yet: POST /performance {"aggregation_id": ..., "mode": "test", "data": {"acc": 0.91}}.'));
    return;
  }
  fill("metrics", [...charts].map(([metric, modes]) => lineChart(metric,
    [...modes].map(([mode, points], i) => ({ name: mode, colour: COLOURS[i % COLOURS.length], points })),
    (x) => `#${x}`)));
}

function addToFeed(type, data, id) {
  const feed = document.getElementById("feed");
  feed.querySelector(".empty")?.remove();
  const text = type === "aggregation" ? `aggregation ${data.aggregation_id}`
    : type === "run_status" ? `run ${data.run_status} (run ${data.run_number ?? "?"})`
    : `gap: ${data.reason || "announcements may have been missed"}`;
  feed.prepend(h("li", { "data-type": type }, h("time", {}, time(data.received_at || Date.now() / 1000)),
    h("span", {}, badge(type, type === "gap" ? "warn" : "")), h("span", {}, `#${id} ${text}`)));
  while (feed.children.length > FEED_LENGTH) feed.lastChild.remove();
}

function follow() {
  state.source?.close();
  const after = state.lastEventId === null ? "" : `?after=${state.lastEventId}`;
  const source = new EventSource(signed(`/events${after}`));
  state.source = source;
  source.addEventListener("aggregation", (event) => {
    const data = JSON.parse(event.data);
    state.lastEventId = Number(event.lastEventId);
    addToFeed("aggregation", data, event.lastEventId);
    if (!state.aggregations.some((a) => a.aggregation_id === data.aggregation_id)) {
      state.aggregations.push({ id: Number(event.lastEventId), ...data });
    }
    renderAggregations();
    Promise.all([renderUploads(), renderMetrics()]).catch(failed);
  });
  source.addEventListener("run_status", (event) => {
    state.lastEventId = Number(event.lastEventId);
    addToFeed("run_status", JSON.parse(event.data), event.lastEventId);
    renderSession().catch(failed);
  });
  source.addEventListener("gap", (event) => addToFeed("gap", JSON.parse(event.data), "—"));
  // The browser reconnects by itself; a refused reconnect (a restarted gateway, an expired
  // access token) closes the stream: start again with a fresh token after a pause.
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) setTimeout(() => refreshAccess().then(follow).catch(failed), 3000);
  });
}

function failed(error) {
  if (error instanceof AuthError) {
    clearInterval(state.timer);
    state.source?.close();
    askForToken(token, "the gateway's token (GATEWAY_TOKEN)", start);
    return;
  }
  notice(h("span", {}, `Could not load the status: ${error.message}`));
}

async function refresh() {
  await Promise.all([renderSession(), renderUploads(), renderMetrics()]);
  notice(); // a failure shown earlier is over
}

async function start() {
  try {
    await refreshAccess();
    await loadAggregations();
    renderAggregations();
    await refresh();
    document.getElementById("metrics-link").href = signed("/metrics");
    follow();
    clearInterval(state.timer);
    state.timer = setInterval(() => refresh().catch(failed), REFRESH_MS);
  } catch (error) {
    failed(error);
  }
}

start();
