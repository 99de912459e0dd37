"""The local aggregator: a BranchKey-compatible server (protocols v3 and v1) built by `create_aggregator_app`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import anyio.abc
from anyio import to_thread
from fastapi import APIRouter, Depends, FastAPI, Query, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.aggregator.amqp import AmqpNotifier, AmqpSetupError, start_amqp
from gateway.aggregator.errors import AggregatorError, add_exception_handlers
from gateway.aggregator.leaves import dev_leaves, load_leaves
from gateway.aggregator.notify import (
    Hub,
    TicketCapacityError,
    TicketStore,
    aggregation_message,
    run_status_message,
)
from gateway.aggregator.settings import AggregatorSettings
from gateway.aggregator.store import Branch, Leaf, Store, Upload
from gateway.multipart import MultipartLimits, read_multipart
from gateway.weights import LEARNING, fedavg, to_npz

log = logging.getLogger("gateway.aggregator")

_RUN_STATUSES = ("start", "stop", "pause")
_METRIC_MODES = ("test", "train", "non-federated")
_MAX_JSON_BODY = 1 << 20


@dataclass
class AggregatorState:
    """Everything the routes share; owned by the lifespan."""

    settings: AggregatorSettings
    store: Store
    tickets: TicketStore
    hub: Hub
    admin_token: str
    blob_key: bytes
    task_group: anyio.abc.TaskGroup | None = None
    amqp: AmqpNotifier | None = None
    branch_locks: dict[str, anyio.Lock] = field(default_factory=dict)
    done: dict[str, anyio.Event] = field(default_factory=dict)
    v1_locks: dict[str, anyio.Lock] = field(default_factory=dict)

    def lock(self, branch_id: str) -> anyio.Lock:
        """The lock that serialises round bookkeeping of one branch."""
        return self.branch_locks.setdefault(branch_id, anyio.Lock())

    def notify(self, branch_id: str, message: dict[str, Any]) -> None:
        """Tell the branch's leaves: v3 leaves over the WebSocket hub, v1 leaves over AMQP (if enabled)."""
        self.hub.publish(branch_id, message)
        if self.amqp is not None:
            self.amqp.publish_soon(branch_id, message)


def _state(request: Request) -> AggregatorState:
    state: AggregatorState = request.app.state.aggregator
    return state


StateDep = Annotated[AggregatorState, Depends(_state)]


async def _run(func: Callable[..., Any], *args: Any) -> Any:
    return await to_thread.run_sync(func, *args)


# ---------------------------------------------------------------- authentication


async def _leaf(request: Request, state: StateDep) -> Leaf:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or ":" not in credentials:
        raise AggregatorError(
            401,
            "Missing or malformed Authorization header: send 'Bearer <leaf id>:<session token>'.",
        )
    leaf_id, _, token = credentials.strip().partition(":")  # tokens may contain colons
    return await authenticate_leaf(state, leaf_id, token)


async def authenticate_leaf(state: AggregatorState, leaf_id: str, token: str) -> Leaf:
    """The leaf with this id and session token (compared in constant time), else 401."""
    leaf: Leaf | None = await _run(state.store.leaf, leaf_id)
    expected = leaf.session_token if leaf else secrets.token_urlsafe(32)
    if not hmac.compare_digest(expected.encode(), token.encode()) or leaf is None:
        raise AggregatorError(401, "Unknown leaf or wrong session token.")
    return leaf


LeafDep = Annotated[Leaf, Depends(_leaf)]


def _own_branch(leaf: Leaf, branch_id: str) -> None:
    if branch_id != leaf.branch_id:
        raise AggregatorError(403, f"Branch {branch_id!r} is not this leaf's branch.")


async def _admin(request: Request, state: StateDep) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), state.admin_token.encode()
    ):
        raise AggregatorError(401, "The admin API needs 'Authorization: Bearer <admin token>'.")


# ---------------------------------------------------------------- rounds and aggregation


def min_leaves(state: AggregatorState, branch_id: str) -> int:
    """Distinct leaves that complete a round of this branch."""
    configured = state.settings.min_leaves
    return configured if configured is not None else len(state.store.leaves(branch_id))


async def _maybe_close_round(
    state: AggregatorState, branch: Branch, force: bool = False
) -> str | None:
    """Close the branch's current round if it is complete (or forced) and start its aggregation."""
    uploads: list[Upload] = await _run(
        state.store.round_uploads, branch.branch_id, branch.run_number, branch.round
    )
    needed = await _run(min_leaves, state, branch.branch_id)
    if not uploads or (not force and len({u.leaf_id for u in uploads}) < needed):
        return None
    closed = await _run(state.store.close_round, branch.branch_id, branch.run_number, branch.round)
    if closed is None:
        return None
    aggregation_id, inputs = closed
    _start_aggregation(state, aggregation_id, branch.branch_id, inputs)
    return str(aggregation_id)


def _start_aggregation(
    state: AggregatorState, aggregation_id: str, branch_id: str, inputs: list[Upload]
) -> None:
    state.done[aggregation_id] = anyio.Event()
    assert state.task_group is not None  # noqa: S101 - set for the app's whole life by the lifespan
    state.task_group.start_soon(_aggregate, state, aggregation_id, branch_id, inputs)


async def _aggregate(
    state: AggregatorState, aggregation_id: str, branch_id: str, inputs: list[Upload]
) -> None:
    result = state.store.results_dir / f"{aggregation_id}.npz"
    started = time.perf_counter()
    try:
        policy = state.settings.weights.policy()
        await _run(fedavg, [Path(u.path) for u in inputs], result, policy)
        size, digest = await _run(_size_and_digest, result)
        await _run(state.store.finish_aggregation, aggregation_id, result, size, digest, None)
    except Exception as exc:  # a failed round is recorded, never fatal to the server
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.warning("aggregation %s of branch %s failed: %s", aggregation_id, branch_id, message)
        await _run(state.store.finish_aggregation, aggregation_id, None, None, None, message)
    else:
        log.info(
            "aggregation %s of branch %s: %d leaves in %.2f s",
            aggregation_id,
            branch_id,
            len(inputs),
            time.perf_counter() - started,
        )
        state.notify(branch_id, aggregation_message(aggregation_id))
    finally:
        state.done.pop(aggregation_id, anyio.Event()).set()


def _size_and_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


# ---------------------------------------------------------------- the v3 API

api = APIRouter(prefix="/api/v1")


@api.get("/run/{branch_id}")
async def get_run(branch_id: str, leaf: LeafDep, state: StateDep) -> dict[str, Any]:
    """Run status and number of the leaf's branch."""
    return await run_details(state, leaf, branch_id)


async def run_details(state: AggregatorState, leaf: Leaf, branch_id: str) -> dict[str, Any]:
    """The run answer of both dialects: `{"data": {"run_status", "run_number"}}`."""
    _own_branch(leaf, branch_id)
    branch = await _branch(state, branch_id)
    return {"data": {"run_status": branch.run_status, "run_number": branch.run_number}}


async def _branch(state: AggregatorState, branch_id: str) -> Branch:
    branch: Branch | None = await _run(state.store.branch, branch_id)
    if branch is None:
        raise AggregatorError(404, f"Unknown branch {branch_id!r}.")
    return branch


def _declared_size(request: Request, limit: int) -> int | None:
    raw = request.headers.get("x-bk-file-size")
    if raw is None:
        return None
    if not raw.isdigit():
        raise AggregatorError(
            400, "x-bk-file-size must be the file's size in bytes, as a decimal number."
        )
    size = int(raw)
    if size > limit:
        raise AggregatorError(
            413, f"The file is {size} bytes; this aggregator accepts at most {limit}."
        )
    return size


def _declared_digest(request: Request) -> bytes | None:
    raw = request.headers.get("x-bk-file-digest")
    if raw is None:
        return None
    prefix, _, encoded = raw.partition("=")
    try:
        digest = base64.b64decode(encoded, validate=True) if prefix == "sha256" else b""
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 32:
        raise AggregatorError(
            400, "x-bk-file-digest must be 'sha256=' followed by the base64 of the file's SHA-256."
        )
    return digest


def _upload_data(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise AggregatorError(400, "The 'data' form field must be a JSON object.") from None
    if not isinstance(data, dict):
        raise AggregatorError(400, "The 'data' form field must be a JSON object.")
    metadata = data.get("metadata")
    if isinstance(metadata, str):
        try:
            parsed = json.loads(metadata)
        except json.JSONDecodeError:
            parsed = None  # clients before 2.7.4 send a fixed non-JSON string
        data["metadata"] = parsed if isinstance(parsed, dict) else {"raw": metadata}
    elif metadata is not None and not isinstance(metadata, dict):
        raise AggregatorError(
            400, "'metadata' in the 'data' field must be a JSON object or string."
        )
    return data


@api.post("/file/upload", status_code=201)
async def create_upload(request: Request, leaf: LeafDep, state: StateDep) -> dict[str, Any]:
    """Receive one weights file: stream, verify integrity, validate, store, maybe close the round."""
    return {"data": {"file_id": await receive_upload(request, leaf, state)}}


async def receive_upload(
    request: Request, leaf: Leaf, state: AggregatorState, *, whole_weighting: bool = False
) -> str:
    """Both dialects' upload: stream, verify the integrity headers if sent, validate, store; the file id.

    `whole_weighting` (protocol v1) also refuses a weighting that is not a whole number of samples.
    """
    settings = state.settings
    branch = await _branch(state, leaf.branch_id)
    if branch.run_status != "start":
        raise AggregatorError(
            409, f"The run is not started (status: {branch.run_status}); upload when it starts."
        )
    limit = int(settings.max_upload_bytes)
    declared_size = _declared_size(request, limit)
    declared_digest = _declared_digest(request)
    limits = MultipartLimits(
        max_file_bytes=limit,
        max_total_file_bytes=limit,
        max_field_bytes=settings.max_metadata_bytes,
        max_parts=2,
        max_files=1,
    )
    form = await read_multipart(request, state.store.tmp_dir, limits, file_fields=("file",))
    converted = state.store.tmp_dir / f".converted-{secrets.token_hex(8)}.npz"
    try:
        part = form.files.get("file")
        if part is None:
            raise AggregatorError(400, "The upload needs a 'file' part holding the weights file.")
        data = _upload_data(form.fields.get("data"))
        if declared_size is not None and declared_size != part.size:
            raise AggregatorError(
                422, f"x-bk-file-size says {declared_size} bytes but the file part has {part.size}."
            )
        if declared_digest is not None and not hmac.compare_digest(declared_digest, part.sha256):
            raise AggregatorError(
                422,
                "x-bk-file-digest does not match the file's SHA-256: the file changed in transit.",
            )
        payload, was_converted = await _run(to_npz, part.path, converted, settings.weights.policy())
        declared_kind = (data.get("metadata") or {}).get("kind")
        if declared_kind is not None and declared_kind != payload.kind:
            raise AggregatorError(
                422, f"metadata.kind is {declared_kind!r} but the archive is {payload.kind!r}."
            )
        if payload.kind != LEARNING:
            raise AggregatorError(422, "This aggregator combines federated_learning payloads only.")
        if whole_weighting and not (
            payload.weighting is not None
            and payload.weighting >= 0
            and float(payload.weighting).is_integer()
        ):
            raise AggregatorError(
                422,
                f"Protocol v1 weights carry a whole number of samples; this file's weighting is "
                f"{payload.weighting!r}.",
            )
        digest = base64.b64encode(part.sha256).decode()
        async with state.lock(leaf.branch_id):
            branch = await _branch(state, leaf.branch_id)
            if branch.run_status != "start":
                raise AggregatorError(
                    409,
                    f"The run is not started (status: {branch.run_status}); upload when it starts.",
                )
            file_id, duplicate = await _run(
                state.store.add_upload,
                leaf,
                branch,
                digest,
                part.size,
                converted if was_converted else part.path,
                payload.kind,
                payload.weighting,
                data.get("metadata") or {},
            )
            if not duplicate:
                await _maybe_close_round(state, branch)
    finally:
        await _run(form.cleanup)
        await _run(lambda: converted.unlink(missing_ok=True))
    return str(file_id)


@api.get("/file/download/{file_id}")
async def get_download(
    file_id: str, request: Request, leaf: LeafDep, state: StateDep
) -> dict[str, Any]:
    """A signed, expiring, absolute URL for an aggregation of the leaf's branch or one of its uploads."""
    await downloadable(state, leaf, file_id)
    return {"data": {"download_url": blob_url(state, request, "npz", file_id)}}


BlobFormat = Literal["npz", "npy"]
_BLOB_PATHS: dict[BlobFormat, str] = {"npz": "/api/v1/blob", "npy": "/v1/blob"}


def blob_url(state: AggregatorState, request: Request, fmt: BlobFormat, file_id: str) -> str:
    """An absolute, signed, expiring URL of `file_id` in format `fmt` (the signature binds the format)."""
    expires = int(time.time() + state.settings.blob_url_ttl_s)
    signature = _sign(state.blob_key, fmt, file_id, expires)
    base = str(request.base_url).rstrip("/")
    return f"{base}{_BLOB_PATHS[fmt]}/{file_id}?expires={expires}&signature={signature}"


def check_blob_signature(
    state: AggregatorState, fmt: BlobFormat, file_id: str, expires: int, signature: str
) -> None:
    """403 unless the URL was signed by this aggregator for this file and format, and is unexpired."""
    ask = "/v1/file/download" if fmt == "npy" else "/api/v1/file/download"
    if not hmac.compare_digest(signature, _sign(state.blob_key, fmt, file_id, expires)):
        raise AggregatorError(403, f"Bad download signature: ask {ask} for a new URL.")
    if expires < time.time():
        raise AggregatorError(403, f"This download URL has expired: ask {ask} for a new one.")


async def downloadable(state: AggregatorState, leaf: Leaf, file_id: str) -> Path:
    """The stored NPZ behind `file_id` if this leaf may download it (404/403/409 otherwise)."""
    aggregation = await _run(state.store.aggregation, file_id)
    if aggregation is not None:
        _own_branch(leaf, aggregation.branch_id)
        if aggregation.status == "pending":
            raise AggregatorError(
                409, f"Aggregation {file_id} is still being computed; try again shortly."
            )
        if aggregation.status == "failed" or aggregation.path is None:
            raise AggregatorError(409, f"Aggregation {file_id} failed: {aggregation.error}")
        return Path(aggregation.path)
    upload = await _run(state.store.upload, file_id)
    if upload is None:
        raise AggregatorError(404, f"No aggregation or upload has id {file_id!r}.")
    if upload.leaf_id != leaf.id:
        raise AggregatorError(403, f"File {file_id} belongs to another leaf.")
    return Path(upload.path)


class BlobResponse(FileResponse):
    """A stored model file, read in 1 MiB pieces (one worker-thread hop each, not sixteen)."""

    chunk_size = 1024 * 1024


def _sign(key: bytes, fmt: BlobFormat, file_id: str, expires: int) -> str:
    return hmac.new(key, f"{fmt}\n{file_id}\n{expires}".encode(), hashlib.sha256).hexdigest()


@api.get("/blob/{file_id}", response_model=None)
async def get_blob(
    file_id: str,
    state: StateDep,
    expires: Annotated[int, Query()] = 0,
    signature: Annotated[str, Query()] = "",
) -> FileResponse:
    """The file behind a download URL: no credentials, a valid unexpired signature instead."""
    check_blob_signature(state, "npz", file_id, expires, signature)
    aggregation = await _run(state.store.aggregation, file_id)
    path = aggregation.path if aggregation else None
    if path is None:
        upload = await _run(state.store.upload, file_id)
        path = upload.path if upload else None
    if path is None or not await _run(os.path.exists, path):
        raise AggregatorError(404, f"No file with id {file_id!r}.")
    return BlobResponse(path, media_type="application/octet-stream", filename=f"{file_id}.npz")


async def _json_body(request: Request) -> Any:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_JSON_BODY:
            raise AggregatorError(413, f"The request body is larger than {_MAX_JSON_BODY} bytes.")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AggregatorError(400, "The request body must be JSON.") from None


@api.post("/performance/analysis", status_code=201)
async def create_metric(request: Request, leaf: LeafDep, state: StateDep) -> dict[str, Any]:
    """Store a performance report (the body is JSON whatever its Content-Type)."""
    return {"data": {"id": await store_metric(request, leaf, state)}}


async def store_metric(request: Request, leaf: Leaf, state: AggregatorState) -> int:
    """Both dialects' performance report: checked against the leaf, stored; its id."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise AggregatorError(400, "The body must be a JSON object.")
    missing = [
        k
        for k in ("mode", "aggregation_id", "leaf_id", "branch_id", "tree_id", "data")
        if k not in body
    ]
    if missing:
        raise AggregatorError(400, f"The report lacks {', '.join(missing)}.")
    if (
        body["leaf_id"] != leaf.id
        or body["branch_id"] != leaf.branch_id
        or body["tree_id"] != leaf.tree_id
    ):
        raise AggregatorError(
            403, "leaf_id, branch_id and tree_id must be the authenticated leaf's."
        )
    if body["mode"] not in _METRIC_MODES:
        raise AggregatorError(400, f"mode must be one of {', '.join(_METRIC_MODES)}.")
    if not isinstance(body["aggregation_id"], str):
        raise AggregatorError(400, "aggregation_id must be a string.")
    data = body["data"] if isinstance(body["data"], str) else json.dumps(body["data"])
    metric_id: int = await _run(
        state.store.add_metric, leaf, body["aggregation_id"], body["mode"], data
    )
    return metric_id


@api.get("/config/branch/{branch_id}")
async def get_branch_config(branch_id: str, leaf: LeafDep, state: StateDep) -> dict[str, Any]:
    """The branch configuration in its documented shape."""
    _own_branch(leaf, branch_id)
    branch = await _branch(state, branch_id)
    needed = await _run(min_leaves, state, branch_id)
    return {
        "data": {
            "branch": {"id": branch.branch_id, "name": branch.branch_id, "tree_id": branch.tree_id},
            "service": {"algorithm": "fedavg", "parameters": {"min_leaves": needed}},
            "created_at": branch.created_at,
            "updated_at": branch.updated_at,
        }
    }


@api.post("/ws/ticket", response_model=None)
async def create_ticket(leaf: LeafDep, state: StateDep) -> JSONResponse:
    """A single-use, expiring ticket for the notification WebSocket (exactly 200, application/json)."""
    try:
        ticket = state.tickets.issue(leaf.id, leaf.branch_id)
    except TicketCapacityError:
        raise AggregatorError(
            503, "Too many WebSocket tickets are outstanding; retry shortly."
        ) from None
    body = {
        "ticket_id": ticket.ticket_id,
        "request_id": ticket.request_id,
        "expires_at": ticket.expires_at_iso(),
    }
    return JSONResponse({"data": body}, status_code=200)


@api.websocket("/ws")
async def notifications(websocket: WebSocket, ticket: str = "", request_id: str = "") -> None:
    """Notifications of the leaf's branch: run status on connect, then aggregations and run changes."""
    state: AggregatorState = websocket.app.state.aggregator
    redeemed = state.tickets.redeem(ticket, request_id)
    if redeemed is None:
        await websocket.close(code=1008)  # before accept: the handshake fails with 403
        return
    branch = await _run(state.store.branch, redeemed.branch_id)
    await websocket.accept()
    first = run_status_message(branch.run_status) if branch else None
    await state.hub.serve(websocket, redeemed, first)


# ---------------------------------------------------------------- admin API

admin = APIRouter(prefix="/admin", dependencies=[Depends(_admin)])


async def _admin_branch(state: AggregatorState, branch_id: str | None) -> Branch:
    if branch_id is not None:
        return await _branch(state, branch_id)
    branches: list[Branch] = await _run(state.store.branches)
    if len(branches) != 1:
        raise AggregatorError(400, "There are several branches: name one with 'branch_id'.")
    return branches[0]


@admin.post("/run")
async def set_run(request: Request, state: StateDep) -> dict[str, Any]:
    """Set a run's status: `{"status": "start"|"stop"|"pause", "branch_id"?}`; start opens a new run."""
    body = await _json_body(request)
    if not isinstance(body, dict) or body.get("status") not in _RUN_STATUSES:
        raise AggregatorError(400, 'Send {"status": "start" | "stop" | "pause"}.')
    branch = await _admin_branch(state, body.get("branch_id"))
    async with state.lock(branch.branch_id):
        updated: Branch = await _run(state.store.set_run_status, branch.branch_id, body["status"])
    state.notify(updated.branch_id, run_status_message(updated.run_status))
    return {"data": updated.__dict__}


@admin.post("/aggregate")
async def force_aggregation(request: Request, state: StateDep, wait: bool = False) -> JSONResponse:
    """Close the current round now, whatever the number of leaves; `?wait=true` waits for the result."""
    body = await _json_body(request) if request.headers.get("content-length", "0") != "0" else {}
    branch = await _admin_branch(state, body.get("branch_id") if isinstance(body, dict) else None)
    async with state.lock(branch.branch_id):
        current = await _branch(state, branch.branch_id)
        aggregation_id = await _maybe_close_round(state, current, force=True)
    if aggregation_id is None:
        raise AggregatorError(409, "The current round has no uploads to aggregate.")
    if wait:
        event = state.done.get(aggregation_id)
        if event is not None:
            await event.wait()
    record = await _run(state.store.aggregation, aggregation_id)
    return JSONResponse(
        {"data": record.__dict__ if record else {"aggregation_id": aggregation_id}},
        status_code=202 if not wait else 200,
    )


@admin.get("/leaves")
async def list_leaves(state: StateDep) -> dict[str, Any]:
    """Known leaves (without tokens)."""
    leaves: list[Leaf] = await _run(state.store.leaves)
    return {"data": [leaf.public() for leaf in leaves]}


@admin.get("/branches")
async def list_branches(state: StateDep) -> dict[str, Any]:
    """Branches with their run status, run number and current round."""
    branches: list[Branch] = await _run(state.store.branches)
    return {"data": [b.__dict__ for b in branches]}


@admin.get("/rounds")
async def list_rounds(state: StateDep) -> dict[str, Any]:
    """Each branch's open round: who has uploaded, and how many leaves complete it."""
    rounds = []
    for branch in await _run(state.store.branches):
        uploads = await _run(
            state.store.round_uploads, branch.branch_id, branch.run_number, branch.round
        )
        rounds.append(
            {
                "branch_id": branch.branch_id,
                "run_number": branch.run_number,
                "round": branch.round,
                "leaves": sorted({u.leaf_id for u in uploads}),
                "min_leaves": await _run(min_leaves, state, branch.branch_id),
            }
        )
    return {"data": rounds}


@admin.get("/uploads")
async def list_uploads(state: StateDep) -> dict[str, Any]:
    """Every stored upload."""
    uploads: list[Upload] = await _run(state.store.uploads)
    return {"data": [u.__dict__ for u in uploads]}


@admin.get("/aggregations")
async def list_aggregations(state: StateDep) -> dict[str, Any]:
    """Every aggregation with its status."""
    return {"data": [a.__dict__ for a in await _run(state.store.aggregations)]}


@admin.get("/metrics")
async def list_metrics(state: StateDep) -> dict[str, Any]:
    """Every performance report."""
    return {"data": await _run(state.store.metrics)}


# ---------------------------------------------------------------- app factory


class CollapseLeadingSlashes:
    """`//api/v1/...` (a host configured with a trailing slash, §2.1) is routed like `/api/v1/...`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("//"):
            path = "/" + scope["path"].lstrip("/")
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


def _load_leaves(settings: AggregatorSettings) -> list[Leaf]:
    if settings.leaves_file is not None:
        return load_leaves(settings.leaves_file)
    leaves, path = dev_leaves(settings.data_dir, settings.dev_leaves)
    log.info("development leaves: %d, credentials in %s", len(leaves), path)
    return leaves


def create_aggregator_app(settings: AggregatorSettings, *, embedded: bool = False) -> FastAPI:
    """A BranchKey-compatible aggregation server for `settings` (`embedded`: inside a gateway,
    whose users need no advice on the aggregator's own options)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    leaves = _load_leaves(settings)
    admin_token = (
        settings.admin_token.get_secret_value()
        if settings.admin_token
        else _stored_admin_token(settings.data_dir)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        amqp = await _start_amqp(app, settings, leaves, embedded)
        try:
            async with _serving(app, settings, leaves, admin_token, amqp):
                yield
        finally:
            if amqp is not None:
                await amqp.aclose()

    app = FastAPI(
        title="BranchKey Gateway local aggregator",
        version="3",
        lifespan=lifespan,
        openapi_url=None,
    )
    app.add_middleware(CollapseLeadingSlashes)
    add_exception_handlers(app)
    app.include_router(api)
    # The v1 routes build on this module's helpers, so they are imported once it is complete.
    from gateway.aggregator.v1 import v1_api

    app.include_router(v1_api)
    app.include_router(admin)
    app.state.leaves = leaves
    app.state.admin_token = admin_token
    app.state.startup_error = None
    return app


async def _start_amqp(
    app: FastAPI, settings: AggregatorSettings, leaves: list[Leaf], embedded: bool
) -> AmqpNotifier | None:
    if settings.amqp_url is None:
        log.log(
            logging.DEBUG if embedded else logging.INFO,
            "v1 leaves get HTTP service only (no notifications): start with --amqp-url "
            "(BK_AGGREGATOR_AMQP_URL) to publish them over RabbitMQ",
        )
        return None
    try:
        return await start_amqp(settings, leaves)
    except AmqpSetupError as exc:
        app.state.startup_error = str(exc)
        log.error("%s", exc)
        raise


@asynccontextmanager
async def _serving(
    app: FastAPI,
    settings: AggregatorSettings,
    leaves: list[Leaf],
    admin_token: str,
    amqp: AmqpNotifier | None,
) -> AsyncIterator[None]:
    """The store, the shared state and the background tasks, for the app's whole life."""
    store: Store = await _run(Store, settings.data_dir)  # SQLite work stays off the event loop
    try:
        await _run(store.replace_leaves, leaves, settings.initial_run_status)
        blob_key: str = await _run(store.secret, "blob-key")
        state = AggregatorState(
            settings=settings,
            store=store,
            tickets=TicketStore(ttl_s=settings.ticket_ttl_s),
            hub=Hub(),
            admin_token=admin_token,
            blob_key=blob_key.encode(),
            amqp=amqp,
        )
        app.state.aggregator = state
        async with anyio.create_task_group() as group:
            state.task_group = group
            if amqp is not None:
                group.start_soon(amqp.run)
            for aggregation, inputs in await _run(store.pending_aggregations):
                log.info("resuming aggregation %s after a restart", aggregation.aggregation_id)
                _start_aggregation(state, aggregation.aggregation_id, aggregation.branch_id, inputs)
            yield
            # uvicorn has closed every WebSocket (1012, so clients back off) before this point.
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _run(store.close)


def _stored_admin_token(data_dir: Path) -> str:
    """A generated admin token, kept in `<data_dir>/admin-token` (mode 0600) across restarts."""
    path = data_dir / "admin-token"
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token
