// Upload -> event -> download through BranchKey Gateway with the typed client: uploads a plain .npy
// (a one-layer model), waits for the round's aggregation on the event stream, downloads it.
//
//   GATEWAY_URL     the gateway (default http://127.0.0.1:8000)
//   GATEWAY_TOKEN   its token, if it has one
//   OUT             where the aggregated NPZ is written (default aggregated.npz)
//   WEIGHTING       the upload's weighting (default 128)
//   WAIT_TIMEOUT_S  longest wait for the aggregation (default 120)
//
// Prints one JSON line: file_id, event, aggregation_id, bytes, etag, out.

import { writeFile } from "node:fs/promises";
import {
  createGatewayClient,
  downloadAggregation,
  latestEventId,
  nextAggregation,
  uploadWeights,
} from "./client.js";

/** An .npy file (format 1.0) of little-endian float32 values with `shape`. */
export function npyFloat32(values: readonly number[], shape: readonly number[]): Uint8Array<ArrayBuffer> {
  const dims = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': ${dims}, }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n"; // magic+version+length+header: 64n
  const bytes = new Uint8Array(10 + header.length + values.length * 4);
  bytes.set([0x93, ..."NUMPY"].map((c) => (typeof c === "number" ? c : c.charCodeAt(0))));
  bytes.set([1, 0], 6);
  new DataView(bytes.buffer).setUint16(8, header.length, true);
  bytes.set(new TextEncoder().encode(header), 10);
  const data = new DataView(bytes.buffer, 10 + header.length);
  values.forEach((value, i) => data.setFloat32(i * 4, value, true));
  return bytes;
}

const env = process.env;
const client = createGatewayClient(env.GATEWAY_URL ?? "http://127.0.0.1:8000", env.GATEWAY_TOKEN);
const out = env.OUT ?? "aggregated.npz";
const weighting = Number(env.WEIGHTING ?? "128");
const timeoutMs = Number(env.WAIT_TIMEOUT_S ?? "120") * 1000;

const shape = [4, 2];
const values = Array.from({ length: 8 }, (_, i) => (i + 1) / 4);
const after = await latestEventId(client); // the stream replays from here: no announcement is missed
const uploaded = await uploadWeights(client, new Blob([npyFloat32(values, shape)]), {
  filename: "weights.npy",
  weighting,
});
const aggregation = await nextAggregation(client, after, timeoutMs);
const { bytes, etag } = await downloadAggregation(client, aggregation.aggregation_id);
await writeFile(out, bytes);
console.log(
  JSON.stringify({
    file_id: uploaded.file_id,
    layers: uploaded.layers,
    event: aggregation.id,
    aggregation_id: aggregation.aggregation_id,
    bytes: bytes.length,
    etag,
    out,
  }),
);
