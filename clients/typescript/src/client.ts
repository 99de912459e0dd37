// A typed client for BranchKey Gateway: openapi-fetch over the types openapi-typescript generated from
// the gateway's OpenAPI document (src/schema.d.ts, `npm run generate`).

import createClient, { type Client } from "openapi-fetch";
import type { components, paths } from "./schema.js";

export type GatewayClient = Client<paths>;
export type UploadResult = components["schemas"]["UploadResult"];
export type AggregationEvent = components["schemas"]["AggregationEvent"];

/** The gateway's answer to a refused request: RFC 9457 problem+json. */
export type Problem = components["schemas"]["Problem"];

/** A problem the gateway answered, thrown by the helpers below. */
export class GatewayProblem extends Error {
  constructor(
    readonly problem: Problem,
    readonly what: string,
  ) {
    super(`${what}: ${problem.status} ${problem.type}: ${problem.detail}`);
    this.name = "GatewayProblem";
  }
}

/** A client for the gateway at `baseUrl`; with `token` (GATEWAY_TOKEN), every request carries it. */
export function createGatewayClient(baseUrl: string, token?: string): GatewayClient {
  const client = createClient<paths>({ baseUrl: baseUrl.replace(/\/+$/, "") });
  if (token) {
    client.use({
      onRequest({ request }) {
        request.headers.set("Authorization", `Bearer ${token}`);
        return request;
      },
    });
  }
  return client;
}

function fail(error: unknown, response: Response, what: string): never {
  const problem =
    typeof error === "object" && error !== null && "type" in error
      ? (error as Problem)
      : { type: "about:blank", title: response.statusText, status: response.status, detail: String(error) };
  throw new GatewayProblem(problem, what);
}

/** POST /upload as a multipart form: the weights file (an NPZ, or any .npy the gateway accepts). */
export async function uploadWeights(
  client: GatewayClient,
  file: Blob,
  options: { filename?: string; weighting?: number } = {},
): Promise<UploadResult> {
  const form = {
    file,
    ...(options.weighting === undefined ? {} : { weighting: String(options.weighting) }),
  };
  const { data, error, response } = await client.POST("/upload", {
    body: form,
    bodySerializer(body) {
      const multipart = new FormData();
      for (const [name, value] of Object.entries(body)) {
        if (value instanceof Blob) multipart.append(name, value, options.filename ?? "weights.npz");
        else if (value !== undefined) multipart.append(name, String(value));
      }
      return multipart;
    },
  });
  if (data === undefined) fail(error, response, "upload");
  return data;
}

/** The newest aggregation's event id, or 0 when none has been announced yet. */
export async function latestEventId(client: GatewayClient): Promise<number> {
  const { data, error, response } = await client.GET("/aggregations/latest");
  if (response.status === 404) return 0;
  if (data === undefined) fail(error, response, "latest aggregation");
  return data.id;
}

/** The first aggregation announced after event `after`, read from the Server-Sent Events stream. */
export async function nextAggregation(
  client: GatewayClient,
  after: number,
  timeoutMs: number,
): Promise<AggregationEvent> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    const { error, response } = await client.GET("/events", {
      params: { query: { after, types: "aggregation" } },
      parseAs: "stream",
      signal: abort.signal,
    });
    if (!response.ok || response.body === null) fail(error, response, "events");
    for await (const event of serverSentEvents(response.body)) {
      if (event.event === "aggregation") {
        return { id: Number(event.id), ...JSON.parse(event.data) } as AggregationEvent;
      }
    }
    throw new Error("the event stream ended before an aggregation was announced");
  } catch (err) {
    if (abort.signal.aborted) throw new Error(`no aggregation within ${timeoutMs} ms`);
    throw err;
  } finally {
    clearTimeout(timer);
    abort.abort(); // closes the stream
  }
}

interface ServerSentEvent {
  id: string;
  event: string;
  data: string;
}

/** The events of a text/event-stream body (comments and `retry:` lines skipped). */
async function* serverSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true }).replace(/\r\n?/g, "\n");
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event: ServerSentEvent = { id: "", event: "message", data: "" };
      const data: string[] = [];
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon === 0) continue;
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "id") event.id = value;
        else if (field === "event") event.event = value;
        else if (field === "data") data.push(value);
      }
      if (data.length > 0) yield { ...event, data: data.join("\n") };
    }
  }
}

/** GET /aggregations/{aggregation_id}: the aggregated model (an NPZ of plain layer_0.. arrays). */
export async function downloadAggregation(
  client: GatewayClient,
  aggregationId: string,
): Promise<{ bytes: Uint8Array; etag: string | null }> {
  const { data, error, response } = await client.GET("/aggregations/{aggregation_id}", {
    params: { path: { aggregation_id: aggregationId }, query: { format: "npz" } },
    parseAs: "arrayBuffer",
  });
  if (data === undefined) fail(error, response, `download of ${aggregationId}`);
  return { bytes: new Uint8Array(data), etag: response.headers.get("etag") };
}
