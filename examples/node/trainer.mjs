// A Node.js 20 trainer that takes part in a federation through BranchKey Gateway.
//
// Each round it writes its weights as a safetensors file itself (a JSON header and raw float32 bytes: no
// dependency), uploads it with fetch + FormData and its weighting, waits for the round's aggregation on
// the gateway's Server-Sent Events stream (resuming with Last-Event-ID after a dropped connection), and
// downloads the aggregate as safetensors in its own tensor names (?format=safetensors), reading the
// tensors back by name. The "training" is a random step away from the last aggregate: the point is the
// protocol, not the model.
//
//   GATEWAY_URL     the gateway (default http://127.0.0.1:8000)
//   ROUNDS          rounds to take part in (default 3)
//   SAMPLES         this trainer's weighting, the number of samples it trained on (default 128)
//   WORK_DIR        where weights.safetensors and aggregated.safetensors are kept (default: a new temp folder)
//   WAIT_TIMEOUT_S  longest wait for one round's aggregation (default 600)

import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

const GATEWAY_URL = (process.env.GATEWAY_URL || "http://127.0.0.1:8000").replace(/\/+$/, "");
// With GATEWAY_TOKEN set (always, for a gateway in a container), every request carries it.
const AUTH = process.env.GATEWAY_TOKEN ? { Authorization: `Bearer ${process.env.GATEWAY_TOKEN}` } : {};
const ROUNDS = positive("ROUNDS", 3);
const SAMPLES = positive("SAMPLES", 128);
const WAIT_TIMEOUT_S = positive("WAIT_TIMEOUT_S", 600);
const WORK_DIR = process.env.WORK_DIR || (await mkdtemp(join(tmpdir(), "bk-node-trainer-")));

function positive(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) {
    throw new Error(`${name} must be a positive number, not ${JSON.stringify(raw)}`);
  }
  return value;
}

// --- safetensors: an 8-byte header length, a JSON header, then each tensor's little-endian bytes --------

// The model's tensors, in the order they become layer_0, layer_1 on the wire (the file's own order): the
// other examples send layer_0 (16 x 8) and layer_1 (8), so the weight comes first.
const TENSORS = [
  { name: "dense.weight", shape: [16, 8] },
  { name: "dense.bias", shape: [8] },
];

/** A safetensors file holding `tensors` ({ name, shape, values }) as F32, in the order given. */
function writeSafetensors(tensors) {
  const header = {};
  let offset = 0;
  for (const { name, shape, values } of tensors) {
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + values.length * 4] };
    offset += values.length * 4;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8); // the data starts 8-byte aligned, as the official writer does
  const text = new TextEncoder().encode(json);
  const bytes = new Uint8Array(8 + text.length + offset);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(text.length), true);
  bytes.set(text, 8);
  let at = 8 + text.length;
  for (const { values } of tensors) {
    for (const value of values) {
      view.setFloat32(at, value, true);
      at += 4;
    }
  }
  return bytes;
}

/** { name: { shape, values } } of a safetensors file of F32 tensors (what the gateway gives back here). */
function readSafetensors(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const length = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length)));
  const tensors = {};
  for (const [name, { dtype, shape, data_offsets: [begin, end] }] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (dtype !== "F32") throw new Error(`${name}: expected F32, got ${dtype}`);
    const values = new Float32Array((end - begin) / 4);
    for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(8 + length + begin + i * 4, true);
    tensors[name] = { shape, values };
  }
  return tensors;
}

// --- the gateway ---------------------------------------------------------------------------------

async function problem(response) {
  return `${response.status} ${response.statusText}: ${await response.text()}`;
}

async function upload(file) {
  const form = new FormData();
  form.append("file", new Blob([file], { type: "application/octet-stream" }), "weights.safetensors");
  form.append("weighting", String(SAMPLES)); // a safetensors file carries no weighting of its own
  const response = await fetch(`${GATEWAY_URL}/upload`, { method: "POST", body: form, headers: AUTH });
  if (!response.ok) throw new Error(`upload refused: ${await problem(response)}`);
  return response.json();
}

/** The id of the newest aggregation event the gateway already has (0 if none): wait for later ones. */
async function latestEventId() {
  const response = await fetch(`${GATEWAY_URL}/aggregations/latest`, { headers: AUTH });
  if (response.status === 404) return 0;
  if (!response.ok) throw new Error(`GET /aggregations/latest: ${await problem(response)}`);
  return (await response.json()).id;
}

/** One SSE block ("field: value" lines) as { id, event, data, retry }. */
function parseEvent(block) {
  const event = { event: "message", data: [] };
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue; // a comment, e.g. the keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") event.data.push(value);
    else if (field === "id" || field === "event" || field === "retry") event[field] = value;
  }
  return { ...event, data: event.data.join("\n") };
}

/**
 * Follow GET /events until an aggregation event after `cursor.lastEventId` arrives; reconnect with
 * Last-Event-ID when the stream ends (gateway restart, network), so nothing is missed or seen twice.
 */
async function waitForAggregation(cursor) {
  const deadline = Date.now() + WAIT_TIMEOUT_S * 1000;
  let retryMs = 1000;
  while (Date.now() < deadline) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), deadline - Date.now());
    try {
      const response = await fetch(`${GATEWAY_URL}/events`, {
        headers: { ...AUTH, Accept: "text/event-stream", "Last-Event-ID": String(cursor.lastEventId) },
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(`GET /events: ${await problem(response)}`);
      const decoder = new TextDecoder();
      let buffer = "";
      for await (const chunk of response.body) {
        // Lines end in \n, \r\n or \r; a \r at the very end may still be followed by its \n.
        buffer = (buffer + decoder.decode(chunk, { stream: true })).replace(/\r\n|\r(?!$)/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (event.retry !== undefined && /^\d+$/.test(event.retry)) retryMs = Number(event.retry);
          if (event.id !== undefined && event.id !== "") cursor.lastEventId = Number(event.id);
          if (event.event === "gap") {
            console.warn(`gateway: announcements may have been missed (${event.data})`);
          } else if (event.event === "aggregation") {
            const { aggregation_id: aggregationId } = JSON.parse(event.data);
            // Leaving the loop cancels the body; `finally` then closes the connection.
            if (aggregationId) return { aggregationId, eventId: cursor.lastEventId };
          }
        }
      }
      console.warn(`event stream ended; reconnecting after event ${cursor.lastEventId}`);
    } catch (error) {
      if (Date.now() >= deadline) break;
      console.warn(`event stream failed (${error.cause?.message ?? error.message}); reconnecting`);
    } finally {
      clearTimeout(timer);
      controller.abort();
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(retryMs, deadline - Date.now())));
  }
  throw new Error(`no aggregation within ${WAIT_TIMEOUT_S} s`);
}

/** The aggregation as safetensors in this trainer's own tensor names (those of its last upload). */
async function download(aggregationId) {
  const url = `${GATEWAY_URL}/aggregations/${encodeURIComponent(aggregationId)}?format=safetensors`;
  const response = await fetch(url, { headers: AUTH });
  if (!response.ok) throw new Error(`download of ${aggregationId}: ${await problem(response)}`);
  return new Uint8Array(await response.arrayBuffer());
}

// --- the trainer loop ------------------------------------------------------------------------------

function gaussian() {
  return Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
}

/** "Training": a small random step from the current model. */
function train(model) {
  return model.map(({ name, shape, values }) => ({
    name,
    shape,
    values: Float32Array.from(values, (v) => v + 0.1 * gaussian()),
  }));
}

async function main() {
  let model = TENSORS.map(({ name, shape }) => ({
    name,
    shape,
    values: new Float32Array(shape.reduce((a, b) => a * b, 1)),
  }));
  const cursor = { lastEventId: await latestEventId() };
  console.log(`trainer on ${GATEWAY_URL}: ${ROUNDS} round(s), weighting ${SAMPLES}, files in ${WORK_DIR}`);
  for (let round = 1; round <= ROUNDS; round++) {
    model = train(model);
    const file = writeSafetensors(model);
    await writeFile(join(WORK_DIR, "weights.safetensors"), file);
    const uploaded = await upload(file);
    const { aggregationId, eventId } = await waitForAggregation(cursor);
    const bytes = await download(aggregationId);
    await writeFile(join(WORK_DIR, "aggregated.safetensors"), bytes);
    const tensors = readSafetensors(bytes);
    model = TENSORS.map(({ name, shape }) => {
      const tensor = tensors[name];
      if (!tensor || tensor.shape.join() !== shape.join()) {
        throw new Error(`aggregation ${aggregationId} has no ${name} of shape [${shape}]`);
      }
      return { name, ...tensor };
    });
    const first = Array.from(model[0].values.slice(0, 4), (v) => v.toPrecision(7));
    console.log(
      `round ${round}/${ROUNDS}: uploaded ${uploaded.file_id}, aggregation ${aggregationId} ` +
        `(event ${eventId}), ${bytes.length} bytes; ${model[0].name} [${model[0].shape}] starts ${first.join(" ")}`,
    );
  }
}

await main();
