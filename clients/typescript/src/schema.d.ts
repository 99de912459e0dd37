export interface paths {
    "/access": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        /**
         * A short-lived access token for links and event streams
         * @description Trade the bearer token for a short-lived, signed `?access_token=` that GET and HEAD requests
         *     accept where a header cannot be sent (EventSource, `<a href>`); an open stream outlives it.
         */
        post: operations["create_access"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/aggregations": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * List aggregations after an event id (long poll)
         * @description Long-poll: aggregation events after `after` at once, or wait up to `wait` s for the next; [] on timeout.
         */
        get: operations["list_aggregations"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/aggregations/latest": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * The newest aggregation
         * @description The newest aggregation the gateway has heard of.
         */
        get: operations["get_latest_aggregation"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/aggregations/{aggregation_id}": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * Download an aggregation
         * @description The aggregated model: `layer_0 ..` as an NPZ of plain arrays, or (`?format=npy`) the v1 object
         *     array (from a v1 upstream with its sample count; from a v3 upstream with 0 samples), or in the
         *     trainer's own tensor names (`?format=safetensors`, `?format=npz&names=original`): 409 when no
         *     names are remembered or they do not fit this aggregation's layers.
         *
         *     The first GET of an NPZ that BranchKey already holds in this layout is passed on while it
         *     arrives (no ETag then: the digest is known only at the end); a file that turns out invalid
         *     ends the answer early, never complete. Every later answer comes from the cache, with ETag.
         */
        get: operations["stream_aggregation"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        /**
         * An aggregation's headers (size, ETag) without the file
         * @description The aggregated model: `layer_0 ..` as an NPZ of plain arrays, or (`?format=npy`) the v1 object
         *     array (from a v1 upstream with its sample count; from a v3 upstream with 0 samples), or in the
         *     trainer's own tensor names (`?format=safetensors`, `?format=npz&names=original`): 409 when no
         *     names are remembered or they do not fit this aggregation's layers.
         *
         *     The first GET of an NPZ that BranchKey already holds in this layout is passed on while it
         *     arrives (no ETag then: the digest is known only at the end); a file that turns out invalid
         *     ends the answer early, never complete. Every later answer comes from the cache, with ETag.
         */
        head: operations["head_aggregation"];
        patch?: never;
        trace?: never;
    };
    "/channel": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * The notification channel's state
         * @description The notification channel's state, reconnect count and last error.
         */
        get: operations["get_channel"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/events": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * Stream events (Server-Sent Events)
         * @description Events as they happen: `id`, `event: aggregation|run_status|gap`, one-line JSON `data`; replays after an id.
         */
        get: operations["stream_events"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/exchange": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        /**
         * Upload, then download the round's aggregation
         * @description Upload weights exactly as `POST /upload` takes them, wait for the first aggregation announced
         *     after the upload was sent, and answer with its file, as `GET /aggregations/{id}` does: a bash
         *     trainer's round is `curl -F file=@w.npy localhost:8000/exchange -o next.npz`. A 504
         *     `aggregation-timeout` problem (with `file_id` and the event id to resume `after`) when none comes
         *     within `wait_timeout`: the upload was accepted then, so do not send it again.
         */
        post: operations["exchange_weights"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/healthz": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * Liveness: the process answers
         * @description The process is alive.
         */
        get: operations["get_health"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/performance": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * The performance reports sent
         * @description The performance reports sent through this gateway, oldest first (kept in memory).
         */
        get: operations["list_performance"];
        put?: never;
        /**
         * Send a performance report
         * @description Send a performance report for an aggregation to BranchKey.
         */
        post: operations["create_performance"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/readyz": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * Readiness: session, upstream and notification channel up
         * @description The session is authenticated, the upstream answers, and the notification channel is connected.
         */
        get: operations["get_ready"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/run": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * The run status, from BranchKey
         * @description The run status, fresh from the upstream.
         */
        get: operations["get_run"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/session": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * The current session
         * @description The current leaf, tree and branch, the dialect, the upstream and the session state.
         */
        get: operations["get_session_info"];
        put?: never;
        /**
         * Log in with leaf credentials
         * @description Log in (or switch leaf) with JSON credentials in the v3 or v1 client shape.
         */
        post: operations["create_session"];
        /**
         * Log out
         * @description Log out: uploads get 401 problems until the next login.
         */
        delete: operations["delete_session"];
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/upload": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        get?: never;
        put?: never;
        /**
         * Upload this leaf's weights
         * @description Upload weights: a multipart `file` part (NPZ, v1 object .npy, a plain .npy array, a list of
         *     arrays saved with np.save, a safetensors file or an NPZ in your own array names), `layer_<n>`
         *     .npy parts plus `weighting`, or a raw `application/octet-stream` body. A file without a
         *     weighting gets `weighting`, else 1.0. Named tensors are sent as `layer_0 ..` in the file's
         *     order; their names are kept for `GET /aggregations/{id}?format=safetensors`.
         */
        post: operations["create_upload"];
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
    "/uploads": {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        /**
         * The last uploads, forwarded or refused
         * @description The last uploads, newest first: forwarded ones with what BranchKey received, refused ones
         *     with their problem type (kept in memory: a restart forgets them).
         */
        get: operations["list_uploads"];
        put?: never;
        post?: never;
        delete?: never;
        options?: never;
        head?: never;
        patch?: never;
        trace?: never;
    };
}
export type webhooks = Record<string, never>;
export interface components {
    schemas: {
        /**
         * AccessGrant
         * @description A token to add as `?access_token=` to GET and HEAD URLs (it opens nothing else).
         */
        AccessGrant: {
            /** Access Token */
            access_token: string;
            /**
             * Expires At
             * @description RFC 3339 UTC.
             */
            expires_at: string;
            /**
             * Expires In
             * @description Seconds from now.
             */
            expires_in: number;
            /**
             * Query
             * @description `access_token=<token>`, ready to append to a URL.
             */
            query: string;
        };
        /**
         * AggregationEvent
         * @description An aggregation the upstream announced.
         */
        AggregationEvent: {
            /** Aggregation Id */
            aggregation_id: string;
            /** Id */
            id: number;
            /** Received At */
            received_at: string;
            /** Run Number */
            run_number?: unknown;
        };
        /**
         * ChannelInfo
         * @description The notification channel: WebSocket (v3) or the leaf's RabbitMQ queue (v1).
         */
        ChannelInfo: {
            /** Last Error */
            last_error: string | null;
            /** Last Message At */
            last_message_at: number | null;
            /** Reconnects */
            reconnects: number;
            /** Since */
            since: number;
            /**
             * State
             * @enum {string}
             */
            state: "starting" | "connecting" | "connected" | "down" | "stopped";
        };
        /**
         * DownloadFormat
         * @description Download formats: the cache's two and safetensors.
         * @enum {string}
         */
        DownloadFormat: "npz" | "npy" | "safetensors";
        /**
         * LayerInfo
         * @description One layer of the uploaded payload.
         */
        LayerInfo: {
            /** Dtype */
            dtype: string;
            /** Key */
            key: string;
            /**
             * Name
             * @description The tensor's own name in a safetensors file or named NPZ (sent as `key`).
             */
            name?: string | null;
            /** Shape */
            shape: number[];
        };
        /**
         * Names
         * @description Which names a download uses.
         * @enum {string}
         */
        Names: "layer" | "original";
        /**
         * PerformanceReport
         * @description A performance report for an aggregation.
         */
        PerformanceReport: {
            /** Aggregation Id */
            aggregation_id: string;
            /** Data */
            data: {
                [key: string]: unknown;
            } | string;
            /**
             * Mode
             * @enum {string}
             */
            mode: "test" | "train" | "non-federated";
        };
        /**
         * Problem
         * @description An RFC 9457 problem document: every error the gateway answers itself.
         */
        Problem: {
            /** @description not-ready: the notification channel's state. */
            channel?: string;
            /** @description What was wrong and what to do. */
            detail: string;
            /** @description unknown-event-id: the newest event id. */
            newest?: number;
            /** @description run-not-started: the run's number. */
            run_number?: unknown;
            /** @description run-not-started: the run's status. */
            run_status?: string;
            status: number;
            title: string;
            /** @description Stable problem code, e.g. /problems/run-not-started. */
            type: string;
            /** @description upstream-unavailable, not-found: BranchKey's HTTP status. */
            upstream_status?: number;
        };
        /**
         * ReportRecord
         * @description One performance report sent upstream through this gateway.
         */
        ReportRecord: {
            /** Aggregation Id */
            aggregation_id: string;
            /** At */
            at: number;
            /** Data */
            data: {
                [key: string]: unknown;
            } | string;
            /** Mode */
            mode: string;
        };
        /**
         * RunStatus
         * @description The branch's run.
         */
        RunStatus: {
            /** Run Number */
            run_number: unknown;
            /** Run Status */
            run_status: string;
        };
        /**
         * SessionInfo
         * @description Who the gateway is, and where it talks to.
         */
        SessionInfo: {
            /** Branch Id */
            branch_id?: string | null;
            /** Dialect */
            dialect: string;
            /** Leaf Id */
            leaf_id?: string | null;
            /** Leaf Name */
            leaf_name?: string | null;
            /**
             * Offline
             * @description True when the upstream is the embedded local aggregator.
             */
            offline: boolean;
            /** Run Number */
            run_number?: unknown;
            /** Run Status */
            run_status?: string | null;
            /**
             * State
             * @enum {string}
             */
            state: "authenticated" | "logged-out";
            /** Tree Id */
            tree_id?: string | null;
            /** Upstream Host */
            upstream_host: string;
        };
        /**
         * UploadRecord
         * @description One upload as the trainer saw it.
         */
        UploadRecord: {
            /** At */
            at: number;
            /** Detail */
            detail?: string | null;
            /** File Id */
            file_id?: string | null;
            /** Kind */
            kind?: string | null;
            /** Layers */
            layers?: number | null;
            /**
             * Outcome
             * @enum {string}
             */
            outcome: "forwarded" | "refused";
            /** Problem Type */
            problem_type?: string | null;
            /** Request Bytes */
            request_bytes: number | null;
            /** Size */
            size?: number | null;
            /** Weighting */
            weighting?: number | null;
            /** Weighting Source */
            weighting_source?: string | null;
        };
        /**
         * UploadResult
         * @description What BranchKey received (`sha256` and `size` are of the file sent upstream: the NPZ, or in
         *     protocol v1 the object `.npy`).
         */
        UploadResult: {
            /** File Id */
            file_id: string;
            /** Kind */
            kind: string;
            /** Layers */
            layers: components["schemas"]["LayerInfo"][];
            /**
             * Note
             * @description Something worth knowing about an accepted upload, e.g. that a weighting of 0 leaves the aggregated mean where the other uploads put it.
             */
            note?: string | null;
            /** Sha256 */
            sha256: string;
            /** Size */
            size: number;
            /** Weighting */
            weighting: number | null;
            /**
             * Weighting Source
             * @description Where the weighting came from: 'file' (the NPZ's weighting or the v1 sample count), 'request' (a 'weighting' form field or ?weighting=), 'default' (neither: 1.0).
             */
            weighting_source: ("default" | "file" | "request") | null;
        };
    };
    responses: never;
    parameters: never;
    requestBodies: never;
    headers: never;
    pathItems: never;
}
export type $defs = Record<string, never>;
export interface operations {
    create_access: {
        parameters: {
            query?: {
                /** @description Lifetime in seconds (at most GATEWAY_ACCESS_TTL_S, the default). */
                ttl?: number | null;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Successful Response */
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["AccessGrant"];
                };
            };
            /** @description Problem types: /problems/bad-request */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/unauthorized */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    list_aggregations: {
        parameters: {
            query?: {
                /** @description Return aggregation events after this id. */
                after?: number | null;
                /** @description Seconds to wait for one (max 60). */
                wait?: number;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Successful Response */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["AggregationEvent"][];
                };
            };
            /** @description Problem types: /problems/bad-request */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/unauthorized */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/unknown-event-id */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    get_latest_aggregation: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The newest aggregation event. */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["AggregationEvent"];
                };
            };
            /** @description Problem types: /problems/unauthorized */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/not-found */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    stream_aggregation: {
        parameters: {
            query?: {
                /** @description npz: an NPZ of plain arrays; npy: the v1 object array; safetensors: safetensors in the trainer's own names and dtypes. */
                format?: components["schemas"]["DownloadFormat"];
                /** @description original: the tensor names and dtypes of this leaf's last safetensors or named-NPZ upload (the default for safetensors); layer: layer_0 .. (the default for npz and npy). */
                names?: components["schemas"]["Names"] | null;
            };
            header?: {
                /** @description ETags the client holds (or *): a match is answered 304 Not Modified. */
                "if-none-match"?: string | null;
            };
            path: {
                aggregation_id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The aggregated model. */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/octet-stream": Blob;
                };
            };
            /** @description Partial Content: the byte range asked for with Range. */
            206: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description Not Modified: If-None-Match holds the current ETag (or *). */
            304: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description Problem types: /problems/bad-request, /problems/upstream-rejected */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/no-session, /problems/unauthorized, /problems/upstream-rejected */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/not-found */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/names/mismatch, /problems/names/no-map, /problems/upstream-rejected */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Range Not Satisfiable: the Range lies outside the file. */
            416: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description Problem types: /problems/upstream-rejected */
            422: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-unavailable */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-timeout */
            504: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/insufficient-storage */
            507: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    head_aggregation: {
        parameters: {
            query?: {
                /** @description npz: an NPZ of plain arrays; npy: the v1 object array; safetensors: safetensors in the trainer's own names and dtypes. */
                format?: components["schemas"]["DownloadFormat"];
                /** @description original: the tensor names and dtypes of this leaf's last safetensors or named-NPZ upload (the default for safetensors); layer: layer_0 .. (the default for npz and npy). */
                names?: components["schemas"]["Names"] | null;
            };
            header?: {
                /** @description ETags the client holds (or *): a match is answered 304 Not Modified. */
                "if-none-match"?: string | null;
            };
            path: {
                aggregation_id: string;
            };
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description The aggregated model. */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/octet-stream": Blob;
                };
            };
            /** @description Partial Content: the byte range asked for with Range. */
            206: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description Not Modified: If-None-Match holds the current ETag (or *). */
            304: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description Problem types: /problems/bad-request, /problems/upstream-rejected */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/no-session, /problems/unauthorized, /problems/upstream-rejected */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/not-found */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/names/mismatch, /problems/names/no-map, /problems/upstream-rejected */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Range Not Satisfiable: the Range lies outside the file. */
            416: {
                headers: {
                    [name: string]: unknown;
                };
                content?: never;
            };
            /** @description Problem types: /problems/upstream-rejected */
            422: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-unavailable */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-timeout */
            504: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/insufficient-storage */
            507: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    get_channel: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Successful Response */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ChannelInfo"];
                };
            };
            /** @description Problem types: /problems/unauthorized */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    stream_events: {
        parameters: {
            query?: {
                /** @description Resume after this event id (instead of the header). */
                after?: number | null;
                /** @description Comma-separated: aggregation, run_status, gap. */
                types?: string | null;
            };
            header?: {
                /** @description Resume after this event id. */
                "last-event-id"?: string | null;
            };
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Server-Sent Events: `id`, `event` and one-line JSON `data` per event. */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "text/event-stream": string;
                };
            };
            /** @description Problem types: /problems/bad-request */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/unauthorized */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    exchange_weights: {
        parameters: {
            query?: {
                /** @description Wait for the run to start (default BK_WAIT_FOR_RUN). */
                wait?: boolean | null;
                /** @description Longest wait in seconds, for the run and then for the aggregation (default and cap GATEWAY_WAIT_TIMEOUT_S). */
                wait_timeout?: number | null;
                /** @description Aggregation weight; overrides the file's. */
                weighting?: string | null;
                /** @description npz: an NPZ of plain arrays; npy: the v1 object array; safetensors: safetensors in the trainer's own names and dtypes (as GET /aggregations/{id}). */
                format?: components["schemas"]["DownloadFormat"];
                /** @description original: the tensor names and dtypes of this leaf's last named upload (the default for safetensors); layer: layer_0 .. (as GET /aggregations/{id}). */
                names?: components["schemas"]["Names"] | null;
            };
            header?: {
                /** @description The file's sha-256 as `sha-256=:<base64 of the 32 bytes>:` (RFC 9530): checked (400 digest-mismatch), and in v3 the file is sent on to BranchKey while it arrives. On a form it may name the file or the whole body. */
                "Content-Digest"?: string;
                /** @description The file's sha-256 as `sha-256=:<base64 of the 32 bytes>:` (RFC 9530): checked (400 digest-mismatch), and in v3 the file is sent on to BranchKey while it arrives. On a form it may name the file or the whole body. */
                "Repr-Digest"?: string;
            };
            path?: never;
            cookie?: never;
        };
        /** @description A multipart form (`file`, or `layer_<n>` parts and `weighting`) or the file as the raw body. */
        requestBody: {
            content: {
                "application/octet-stream": Blob;
                "application/x-npy": Blob;
                "application/zip": Blob;
                "multipart/form-data": {
                    /**
                     * Format: binary
                     * @description The weights: an NPZ (weighting + layer_0.., or arrays in your own names), the v1 client's object .npy, a plain np.save .npy array, a list of arrays saved with np.save, or a safetensors file.
                     */
                    file?: Blob;
                    /**
                     * @description Aggregation weight (the number of samples trained on), as decimal text; required with layer parts, else it overrides the file's.
                     * @example 128
                     */
                    weighting?: string;
                } & {
                    [key: `layer_${number}`]: Blob;
                };
            };
        };
        responses: {
            /** @description The first aggregation announced after the upload was sent, as GET /aggregations/{id} serves it; X-Aggregation-Id and X-File-Id name both files. */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/octet-stream": Blob;
                };
            };
            /** @description Problem types: /problems/bad-request, /problems/digest-mismatch, /problems/upstream-rejected */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/no-session, /problems/unauthorized, /problems/upstream-rejected */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/not-found */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/names/mismatch, /problems/names/no-map, /problems/run-not-started, /problems/session-changed, /problems/upstream-rejected */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/payload-too-large, /problems/upstream-rejected, /problems/weights/too-large, /problems/weights/zip-bomb */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/unsupported-media-type */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected, /problems/weights/architecture-mismatch, /problems/weights/bad-member-name, /problems/weights/bad-npy-header, /problems/weights/bad-safetensors-header, /problems/weights/bad-weighting, /problems/weights/bare-scalar, /problems/weights/crc-mismatch, /problems/weights/duplicate-member, /problems/weights/encrypted-member, /problems/weights/header-too-large, /problems/weights/invalid-archive, /problems/weights/layer-mismatch, /problems/weights/layer-numbering, /problems/weights/missing-weighting, /problems/weights/names-mismatch, /problems/weights/no-fields, /problems/weights/no-inputs, /problems/weights/no-layers, /problems/weights/not-a-payload, /problems/weights/not-an-array, /problems/weights/not-finite, /problems/weights/not-integer, /problems/weights/not-list, /problems/weights/not-ndarray, /problems/weights/not-numeric, /problems/weights/not-object-pair, /problems/weights/overlapping-members, /problems/weights/overlapping-tensors, /problems/weights/pickle-forbidden, /problems/weights/reserved-field-name, /problems/weights/shape-mismatch, /problems/weights/shape-overflow, /problems/weights/tensor-offsets, /problems/weights/too-many-members, /problems/weights/truncated, /problems/weights/unexpected-key, /problems/weights/unknown-kind, /problems/weights/unsupported-compression, /problems/weights/unsupported-dtype, /problems/weights/unsupported-kind, /problems/weights/unsupported-pickle, /problems/weights/weighting-not-integer, /problems/weights/weighting-not-single, /problems/weights/zero-weighting */
            422: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-unavailable */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/shutting-down */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/aggregation-timeout, /problems/upstream-timeout */
            504: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/insufficient-storage */
            507: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    get_health: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Successful Response */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": {
                        [key: string]: string;
                    };
                };
            };
        };
    };
    list_performance: {
        parameters: {
            query?: {
                limit?: number;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Successful Response */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["ReportRecord"][];
                };
            };
            /** @description Problem types: /problems/bad-request */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/unauthorized */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    create_performance: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": components["schemas"]["PerformanceReport"];
            };
        };
        responses: {
            /** @description Successful Response */
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": {
                        [key: string]: string;
                    };
                };
            };
            /** @description Problem types: /problems/bad-request, /problems/upstream-rejected */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/no-session, /problems/unauthorized, /problems/upstream-rejected */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/not-found */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/payload-too-large, /problems/upstream-rejected */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            422: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-unavailable */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-timeout */
            504: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    get_ready: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Successful Response */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": {
                        [key: string]: unknown;
                    };
                };
            };
            /** @description Problem types: /problems/unauthorized */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/not-ready */
            503: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    get_run: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Successful Response */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["RunStatus"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/no-session, /problems/unauthorized, /problems/upstream-rejected */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/not-found */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            422: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-unavailable */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-timeout */
            504: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    get_session_info: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Successful Response */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["SessionInfo"];
                };
            };
            /** @description Problem types: /problems/unauthorized */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    create_session: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody: {
            content: {
                "application/json": {
                    branch_id?: string;
                    id?: string;
                    leaf_id?: string;
                    leaf_name?: string;
                    leaf_session_token?: string;
                    name?: string;
                    owner_id?: string;
                    response_host?: string;
                    session_token?: string;
                    tree_id?: string;
                } & {
                    [key: string]: unknown;
                };
            };
        };
        responses: {
            /** @description Successful Response */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["SessionInfo"];
                };
            };
            /** @description Problem types: /problems/bad-request, /problems/upstream-rejected */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/unauthorized, /problems/upstream-rejected */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/not-found */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/payload-too-large, /problems/upstream-rejected */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            422: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-unavailable */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-timeout */
            504: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    delete_session: {
        parameters: {
            query?: never;
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Successful Response */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["SessionInfo"];
                };
            };
            /** @description Problem types: /problems/unauthorized */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    create_upload: {
        parameters: {
            query?: {
                /** @description Wait for the run to start (default BK_WAIT_FOR_RUN). */
                wait?: boolean | null;
                /** @description Longest wait in seconds. */
                wait_timeout?: number | null;
                /** @description Aggregation weight; overrides the file's. */
                weighting?: string | null;
            };
            header?: {
                /** @description The file's sha-256 as `sha-256=:<base64 of the 32 bytes>:` (RFC 9530): checked (400 digest-mismatch), and in v3 the file is sent on to BranchKey while it arrives. On a form it may name the file or the whole body. */
                "Content-Digest"?: string;
                /** @description The file's sha-256 as `sha-256=:<base64 of the 32 bytes>:` (RFC 9530): checked (400 digest-mismatch), and in v3 the file is sent on to BranchKey while it arrives. On a form it may name the file or the whole body. */
                "Repr-Digest"?: string;
            };
            path?: never;
            cookie?: never;
        };
        /** @description A multipart form (`file`, or `layer_<n>` parts and `weighting`) or the file as the raw body. */
        requestBody: {
            content: {
                "application/octet-stream": Blob;
                "application/x-npy": Blob;
                "application/zip": Blob;
                "multipart/form-data": {
                    /**
                     * Format: binary
                     * @description The weights: an NPZ (weighting + layer_0.., or arrays in your own names), the v1 client's object .npy, a plain np.save .npy array, a list of arrays saved with np.save, or a safetensors file.
                     */
                    file?: Blob;
                    /**
                     * @description Aggregation weight (the number of samples trained on), as decimal text; required with layer parts, else it overrides the file's.
                     * @example 128
                     */
                    weighting?: string;
                } & {
                    [key: `layer_${number}`]: Blob;
                };
            };
        };
        responses: {
            /** @description Successful Response */
            201: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["UploadResult"];
                };
            };
            /** @description Problem types: /problems/bad-request, /problems/digest-mismatch, /problems/upstream-rejected */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/no-session, /problems/unauthorized, /problems/upstream-rejected */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected */
            403: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/not-found */
            404: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/run-not-started, /problems/session-changed, /problems/upstream-rejected */
            409: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/payload-too-large, /problems/upstream-rejected, /problems/weights/too-large, /problems/weights/zip-bomb */
            413: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/unsupported-media-type */
            415: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-rejected, /problems/weights/architecture-mismatch, /problems/weights/bad-member-name, /problems/weights/bad-npy-header, /problems/weights/bad-safetensors-header, /problems/weights/bad-weighting, /problems/weights/bare-scalar, /problems/weights/crc-mismatch, /problems/weights/duplicate-member, /problems/weights/encrypted-member, /problems/weights/header-too-large, /problems/weights/invalid-archive, /problems/weights/layer-mismatch, /problems/weights/layer-numbering, /problems/weights/missing-weighting, /problems/weights/names-mismatch, /problems/weights/no-fields, /problems/weights/no-inputs, /problems/weights/no-layers, /problems/weights/not-a-payload, /problems/weights/not-an-array, /problems/weights/not-finite, /problems/weights/not-integer, /problems/weights/not-list, /problems/weights/not-ndarray, /problems/weights/not-numeric, /problems/weights/not-object-pair, /problems/weights/overlapping-members, /problems/weights/overlapping-tensors, /problems/weights/pickle-forbidden, /problems/weights/reserved-field-name, /problems/weights/shape-mismatch, /problems/weights/shape-overflow, /problems/weights/tensor-offsets, /problems/weights/too-many-members, /problems/weights/truncated, /problems/weights/unexpected-key, /problems/weights/unknown-kind, /problems/weights/unsupported-compression, /problems/weights/unsupported-dtype, /problems/weights/unsupported-kind, /problems/weights/unsupported-pickle, /problems/weights/weighting-not-integer, /problems/weights/weighting-not-single, /problems/weights/zero-weighting */
            422: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-unavailable */
            502: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/upstream-timeout */
            504: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/insufficient-storage */
            507: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
    list_uploads: {
        parameters: {
            query?: {
                limit?: number;
            };
            header?: never;
            path?: never;
            cookie?: never;
        };
        requestBody?: never;
        responses: {
            /** @description Successful Response */
            200: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/json": components["schemas"]["UploadRecord"][];
                };
            };
            /** @description Problem types: /problems/bad-request */
            400: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
            /** @description Problem types: /problems/unauthorized */
            401: {
                headers: {
                    [name: string]: unknown;
                };
                content: {
                    "application/problem+json": components["schemas"]["Problem"];
                };
            };
        };
    };
}
