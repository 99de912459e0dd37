// Follow a BranchKey Gateway's aggregations with EventSource and read each aggregated model's layers.
//
// Node.js 20 has no global EventSource: `npm ci` installs the `eventsource` package (pinned in
// package-lock.json), imported below; in a browser, drop that import and use the built-in one.
// With GATEWAY_TOKEN set, EventSource cannot send `Authorization`, so the script trades the token for
// a short-lived `?access_token=` (POST /access) and asks for a new one when a reconnect is refused.
//
//   GATEWAY_URL    the gateway (default http://127.0.0.1:8000)
//   GATEWAY_TOKEN  the gateway's token, if it has one
//   COUNT          stop after this many aggregations (default: follow until interrupted)

import { EventSource } from "eventsource";
import { readNpz } from "./npz.mjs";

const GATEWAY = (process.env.GATEWAY_URL || "http://127.0.0.1:8000").replace(/\/+$/, "");
const AUTH = process.env.GATEWAY_TOKEN ? { Authorization: `Bearer ${process.env.GATEWAY_TOKEN}` } : {};
const COUNT = Number(process.env.COUNT || Infinity);
let seen = 0;
let lastEventId = null;

async function check(response) {
  if (!response.ok) throw new Error(`${response.url}: ${response.status} ${await response.text()}`);
  return response;
}

/** `?access_token=...&` when the gateway has a token (it then refuses unsigned GETs), else `?`. */
async function signedQuery() {
  if (!AUTH.Authorization) return "?";
  const grant = await (await check(await fetch(`${GATEWAY}/access`, { method: "POST", headers: AUTH }))).json();
  return `?${grant.query}&`;
}

function describe(layers) {
  return Object.entries(layers)
    .map(([name, { dtype, shape, values }]) => `${name} ${dtype} [${shape}] first=${Number(Number(values[0]).toPrecision(6))}`)
    .join(", ");
}

async function onAggregation(event) {
  lastEventId = event.lastEventId;
  const { aggregation_id } = JSON.parse(event.data);
  const response = await check(await fetch(`${GATEWAY}/aggregations/${aggregation_id}`, { headers: AUTH }));
  const layers = await readNpz(new Uint8Array(await response.arrayBuffer()));
  console.log(`aggregation ${aggregation_id} (event ${event.lastEventId}): ${describe(layers)}`);
  seen += 1;
  if (seen >= COUNT) process.exit(0);
}

async function follow() {
  const after = lastEventId === null ? "" : `after=${lastEventId}`;
  const source = new EventSource(`${GATEWAY}/events${await signedQuery()}${after}`);
  source.addEventListener("open", () => console.log(`following ${GATEWAY}/events`));
  source.addEventListener("aggregation", (event) => onAggregation(event).catch((error) => {
    console.error(error.message);
    process.exitCode = 1;
  }));
  source.addEventListener("gap", (event) => console.warn("announcements may have been missed:", event.data));
  // EventSource reconnects by itself (Last-Event-ID); a refused reconnect (an expired access token,
  // a restarted gateway) closes it for good: start again with a fresh token.
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) setTimeout(() => follow().catch(stop), 3000);
  });
}

function stop(error) {
  console.error(error.message);
  process.exit(1);
}

follow().catch(stop);
