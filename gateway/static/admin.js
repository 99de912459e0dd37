// The local aggregator's admin page: everything comes from /admin/overview with the admin token
// (asked once per tab, or given as #token=... in the link); the buttons call /admin/run and
// /admin/aggregate.
import {
  AuthError, Token, askForToken, badge, bytes, fill, h, notice, request, short, table, time,
} from "/static/page.js";

const token = new Token("branchkey-aggregator-admin-token");
const REFRESH_MS = 3000;
let timer = null;

const RUN_KINDS = { start: "good", pause: "warn", stop: "bad" };
const AGGREGATION_KINDS = { done: "good", pending: "warn", failed: "bad" };

async function act(path, body, what) {
  try {
    await request(token, path, { method: "POST", body });
    notice(h("span", {}, `${what}: done.`));
  } catch (error) {
    failed(error);
  }
  await refresh().catch(failed);
}

function runButtons(branch) {
  return ["start", "pause", "stop"].filter((status) => status !== branch.run_status).map((status) =>
    h("button", { type: "button", "data-action": status, onclick: () =>
      act("/admin/run", { status, branch_id: branch.branch_id }, `Run ${status}`) }, status));
}

function render(overview) {
  document.getElementById("where").textContent =
    `${overview.leaves.length} leaves, ${overview.branches.length} branch(es)`;
  fill("branches", table([
    ["Branch", (b) => short(b.branch_id)],
    ["Tree", (b) => short(b.tree_id)],
    ["Run", (b) => [badge(b.run_status, RUN_KINDS[b.run_status]), ` #${b.run_number}`]],
    ["Open round", (b) => `${b.round}: ${b.round_leaves.length} of ${b.min_leaves} leaves uploaded`],
    ["Control", (b) => [...runButtons(b), " ",
      h("button", { type: "button", class: "primary", "data-action": "aggregate", disabled: !b.round_leaves.length,
        onclick: () => act("/admin/aggregate?wait=true", { branch_id: b.branch_id }, "Aggregation") }, "Aggregate now")]],
  ], overview.branches));
  fill("leaves", table([
    ["Leaf", (l) => l.name],
    ["Id", (l) => short(l.id)],
    ["Branch", (l) => short(l.branch_id)],
    ["WebSocket", (l) => l.websocket ? badge("connected", "good") : badge("not connected")],
    ["Last upload", (l) => l.last_upload ? `${time(l.last_upload.created_at)} (run ${l.last_upload.run_number}, round ${l.last_upload.round})` : "—"],
    ["Size", (l) => bytes(l.last_upload?.size)],
    ["Weighting", (l) => l.last_upload?.weighting ?? "—"],
  ], overview.leaves));
  fill("aggregations", table([
    ["Created", (a) => time(a.created_at)],
    ["Aggregation", (a) => short(a.aggregation_id)],
    ["Branch", (a) => short(a.branch_id)],
    ["Run / round", (a) => `${a.run_number} / ${a.round}`],
    ["Status", (a) => [badge(a.status, AGGREGATION_KINDS[a.status]), a.error ? ` ${a.error}` : null]],
    ["Leaves", (a) => JSON.parse(a.contributors).length],
    ["Size", (a) => bytes(a.size)],
  ], overview.aggregations, "No aggregation yet."));
}

async function refresh() {
  render(await request(token, "/admin/overview"));
}

function failed(error) {
  clearInterval(timer);
  if (error instanceof AuthError) {
    askForToken(token, "the admin token (<data-dir>/admin-token)", start);
    return;
  }
  notice(h("span", {}, error.message));
  timer = setInterval(() => refresh().catch(failed), REFRESH_MS);
}

async function start() {
  try {
    await refresh();
    clearInterval(timer);
    timer = setInterval(() => refresh().catch(failed), REFRESH_MS);
  } catch (error) {
    failed(error);
  }
}

document.getElementById("forget").addEventListener("click", (event) => {
  event.preventDefault();
  token.set(null);
  failed(new AuthError("forgotten"));
});
start();
