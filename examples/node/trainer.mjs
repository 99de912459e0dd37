// A Node.js 20 trainer that takes part in a federation through BranchKey Gateway.
//
// Each round it writes its weights as an NPZ itself (.npy headers by hand, a STORED zip built with
// fflate), uploads it with fetch + FormData, waits for the round's aggregation on the gateway's
// Server-Sent Events stream (resuming with Last-Event-ID after a dropped connection), downloads the
// aggregated NPZ, unzips it and reads the .npy arrays back. The "training" is a random step away from
// the last aggregate: the point is the protocol, not the model.
//
//   GATEWAY_URL     the gateway (default http://127.0.0.1:8000)
//   ROUNDS          rounds to take part in (default 3)
//   SAMPLES         this trainer's weighting, the number of samples it trained on (default 128)
//   WORK_DIR        where weights.npz and aggregated.npz are kept (default: a new temp folder)
//   WAIT_TIMEOUT_S  longest wait for one round's aggregation (default 600)

import { mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { unzipSync, zipSync } from "fflate";

const GATEWAY_URL = (process.env.GATEWAY_URL || "http://127.0.0.1:8000").replace(/\/+$/, "");
// With GATEWAY_TOKEN set (always, for a gateway in a container), every request carries it.
const AUTH = process.env.GATEWAY_TOKEN ? { Authorization: `Bearer ${process.env.GATEWAY_TOKEN}` } : {};
const ROUNDS = positive("ROUNDS", 3);
const SAMPLES = positive("SAMPLES", 128);
const WAIT_TIMEOUT_S = positive("WAIT_TIMEOUT_S", 600);
const WORK_DIR = process.env.WORK_DIR || (await mkdtemp(join(tmpdir(), "bk-node-trainer-")));

// The model: layer_0 (16 x 8) and layer_1 (8), float32, as the other examples use.
const SHAPES = [[16, 8], [8]];

function positive(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) {
    throw new Error(`${name} must be a positive number, not ${JSON.stringify(raw)}`);
  }
  return value;
}

// --- .npy: magic, version 1.0, a header dict padded to 64 bytes, little-endian data ------------

const MAGIC = [0x93, ..."NUMPY"].map((c) => (typeof c === "number" ? c : c.charCodeAt(0)));
const DTYPES = {
  f4: { size: 4, get: (v, o) => v.getFloat32(o, true), set: (v, o, x) => v.setFloat32(o, x, true) },
  f8: { size: 8, get: (v, o) => v.getFloat64(o, true), set: (v, o, x) => v.setFloat64(o, x, true) },
  i4: { size: 4, get: (v, o) => v.getInt32(o, true), set: (v, o, x) => v.setInt32(o, x, true) },
  i8: {
    size: 8,
    get: (v, o) => Number(v.getBigInt64(o, true)),
    set: (v, o, x) => v.setBigInt64(o, BigInt(x), true),
  },
};

/** An .npy file (format 1.0) holding `values` (any array of numbers) as `<f4`, `<f8`, ... */
function writeNpy(values, shape, type = "f4") {
  const dtype = DTYPES[type];
  const count = shape.reduce((a, b) => a * b, 1);
  if (values.length !== count) throw new Error(`${values.length} values for shape ${shape}`);
  const dims = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
  let header = `{'descr': '<${type}', 'fortran_order': False, 'shape': ${dims}, }`;
  // magic (6) + version (2) + header length (2) + header + "\n" is a multiple of 64 bytes.
  header += " ".repeat((64 - ((10 + header.length + 1) % 64)) % 64) + "\n";
  const bytes = new Uint8Array(10 + header.length + count * dtype.size);
  const view = new DataView(bytes.buffer);
  bytes.set(MAGIC, 0);
  bytes.set([1, 0], 6);
  view.setUint16(8, header.length, true);
  bytes.set(new TextEncoder().encode(header), 10);
  for (let i = 0; i < count; i++) dtype.set(view, 10 + header.length + i * dtype.size, values[i]);
  return bytes;
}

/** { shape, values } of an .npy file (versions 1.0 to 3.0; C order; numbers only). */
function readNpy(bytes, name) {
  if (!MAGIC.every((b, i) => bytes[i] === b)) throw new Error(`${name} is not an .npy file`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const [length, start] = major === 1 ? [view.getUint16(8, true), 10] : [view.getUint32(8, true), 12];
  const header = new TextDecoder().decode(bytes.subarray(start, start + length));
  const descr = /'descr':\s*'([<>|=]?)([a-z])(\d+)'/.exec(header);
  const shapeText = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !shapeText || /'fortran_order':\s*True/.test(header)) {
    throw new Error(`${name}: unsupported .npy header ${header.trim()}`);
  }
  const [, order, kind, size] = descr;
  const dtype = DTYPES[`${kind}${size}`];
  if (!dtype || order === ">") throw new Error(`${name}: unsupported dtype ${descr[0]}`);
  const shape = shapeText[1]
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const data = start + length;
  const values = new Float64Array(count);
  for (let i = 0; i < count; i++) values[i] = dtype.get(view, data + i * dtype.size);
  return { shape, values };
}

// --- NPZ: a zip of .npy members, STORED (numpy's own np.savez does the same) ---------------------

function writeNpz(layers, weighting) {
  const members = { "weighting.npy": [writeNpy([weighting], [], "f8"), { level: 0 }] };
  layers.forEach((layer, i) => {
    members[`layer_${i}.npy`] = [writeNpy(layer.values, layer.shape), { level: 0 }];
  });
  return zipSync(members);
}

function readNpz(bytes) {
  const arrays = {};
  for (const [name, member] of Object.entries(unzipSync(bytes))) {
    arrays[name.replace(/\.npy$/, "")] = readNpy(member, name);
  }
  return arrays;
}

// --- the gateway ---------------------------------------------------------------------------------

async function problem(response) {
  return `${response.status} ${response.statusText}: ${await response.text()}`;
}

async function upload(npz) {
  const form = new FormData();
  form.append("file", new Blob([npz], { type: "application/octet-stream" }), "weights.npz");
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

async function download(aggregationId) {
  const response = await fetch(`${GATEWAY_URL}/aggregations/${encodeURIComponent(aggregationId)}`, { headers: AUTH });
  if (!response.ok) throw new Error(`download of ${aggregationId}: ${await problem(response)}`);
  return new Uint8Array(await response.arrayBuffer());
}

// --- the trainer loop ------------------------------------------------------------------------------

function gaussian() {
  return Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
}

/** "Training": a small random step from the current model. */
function train(model) {
  return model.map(({ shape, values }) => ({
    shape,
    values: Float32Array.from(values, (v) => v + 0.1 * gaussian()),
  }));
}

async function main() {
  let model = SHAPES.map((shape) => ({
    shape,
    values: new Float32Array(shape.reduce((a, b) => a * b, 1)),
  }));
  const cursor = { lastEventId: await latestEventId() };
  console.log(`trainer on ${GATEWAY_URL}: ${ROUNDS} round(s), weighting ${SAMPLES}, files in ${WORK_DIR}`);
  for (let round = 1; round <= ROUNDS; round++) {
    model = train(model);
    const npz = writeNpz(model, SAMPLES);
    await writeFile(join(WORK_DIR, "weights.npz"), npz);
    const uploaded = await upload(npz);
    const { aggregationId, eventId } = await waitForAggregation(cursor);
    const bytes = await download(aggregationId);
    await writeFile(join(WORK_DIR, "aggregated.npz"), bytes);
    const arrays = readNpz(bytes);
    model = SHAPES.map((shape, i) => {
      const layer = arrays[`layer_${i}`];
      if (!layer || layer.shape.join() !== shape.join()) {
        throw new Error(`aggregation ${aggregationId} has no layer_${i} of shape [${shape}]`);
      }
      return layer;
    });
    const first = Array.from(model[0].values.slice(0, 4), (v) => v.toPrecision(7));
    console.log(
      `round ${round}/${ROUNDS}: uploaded ${uploaded.file_id}, aggregation ${aggregationId} ` +
        `(event ${eventId}), ${bytes.length} bytes; layer_0 [${model[0].shape}] starts ${first.join(" ")}`,
    );
  }
}

await main();
