"""Receiving a weights file (both protocol dialects): stream, verify integrity, validate, store, maybe close the round."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import Request

from gateway.aggregator.agreement import check_fit
from gateway.aggregator.errors import (
    BadRequestError,
    ConflictError,
    PayloadTooLargeError,
    UnprocessableError,
)
from gateway.aggregator.records import Branch, Leaf
from gateway.aggregator.rounds import get_branch, maybe_close_round
from gateway.aggregator.state import AggregatorState
from gateway.multipart import FilePart, MultipartLimits, read_multipart
from gateway.weights import LEARNING, Payload, to_npz


async def receive_upload(
    request: Request, leaf: Leaf, state: AggregatorState, *, whole_weighting: bool = False
) -> str:
    """Both dialects' upload: stream, verify the integrity headers if sent, validate, store; the file id.

    `whole_weighting` (protocol v1) also refuses a weighting that is not a whole number of samples.
    """
    settings = state.settings
    _check_started(await get_branch(state, leaf.branch_id))
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
            raise BadRequestError("The upload needs a 'file' part holding the weights file.")
        data = _upload_data(form.fields.get("data"))
        _check_integrity(part, declared_size, declared_digest)
        payload, was_converted = await to_thread.run_sync(
            to_npz, part.path, converted, settings.validation_policy()
        )
        _check_payload(payload, data, whole_weighting=whole_weighting)
        source = converted if was_converted else part.path
        return await _store(state, leaf, part, source, payload, data.get("metadata") or {})
    finally:
        await to_thread.run_sync(form.cleanup)
        await to_thread.run_sync(lambda: converted.unlink(missing_ok=True))


async def _store(
    state: AggregatorState,
    leaf: Leaf,
    part: FilePart,
    source: Path,
    payload: Payload,
    metadata: dict[str, Any],
) -> str:
    """Store the upload in the branch's current round (the run may have stopped meanwhile).

    A re-sent upload (same leaf, run and digest) answers its first file id, even after its round
    closed; a new one must fit the round (gateway/aggregator/agreement.py).
    """
    digest = base64.b64encode(part.sha256).decode()
    async with state.branch_lock(leaf.branch_id):
        branch = await get_branch(state, leaf.branch_id)
        _check_started(branch)
        earlier = await to_thread.run_sync(state.store.duplicate_of, leaf.id, branch, digest)
        if earlier is not None:
            return earlier
        policy = state.settings.validation_policy()
        await to_thread.run_sync(check_fit, state.store, leaf, branch, source, payload, policy)
        file_id, duplicate = await to_thread.run_sync(
            state.store.add_upload,
            leaf,
            branch,
            digest,
            part.size,
            source,
            payload.kind,
            payload.weighting if payload.kind == LEARNING else None,  # ignored for analytics
            metadata,
        )
        if not duplicate:
            await maybe_close_round(state, branch)
    return file_id


def _check_started(branch: Branch) -> None:
    if branch.run_status != "start":
        raise ConflictError(
            f"The run is not started (status: {branch.run_status}); upload when it starts."
        )


def _declared_size(request: Request, limit: int) -> int | None:
    raw = request.headers.get("x-bk-file-size")
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequestError(
            "x-bk-file-size must be the file's size in bytes, as a decimal number."
        )
    size = int(raw)
    if size > limit:
        raise PayloadTooLargeError(
            f"The file is {size} bytes; this aggregator accepts at most {limit}."
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
        raise BadRequestError(
            "x-bk-file-digest must be 'sha256=' followed by the base64 of the file's SHA-256."
        )
    return digest


def _upload_data(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise BadRequestError("The 'data' form field must be a JSON object.") from None
    if not isinstance(data, dict):
        raise BadRequestError("The 'data' form field must be a JSON object.")
    if not isinstance(data.get("leaf_name", ""), str):
        raise BadRequestError("'leaf_name' in the 'data' field must be a string.")
    metadata = data.get("metadata")
    if isinstance(metadata, str):
        try:
            parsed = json.loads(metadata)
        except json.JSONDecodeError:
            parsed = None  # clients before 2.7.4 send a fixed non-JSON string
        data["metadata"] = parsed if isinstance(parsed, dict) else {"raw": metadata}
    elif metadata is not None and not isinstance(metadata, dict):
        raise BadRequestError("'metadata' in the 'data' field must be a JSON object or string.")
    return data


def _check_integrity(
    part: FilePart, declared_size: int | None, declared_digest: bytes | None
) -> None:
    if declared_size is not None and declared_size != part.size:
        raise UnprocessableError(
            f"x-bk-file-size says {declared_size} bytes but the file part has {part.size}."
        )
    if declared_digest is not None and not hmac.compare_digest(declared_digest, part.sha256):
        raise UnprocessableError(
            "x-bk-file-digest does not match the file's SHA-256: the file changed in transit."
        )


def _check_payload(payload: Payload, data: dict[str, Any], *, whole_weighting: bool) -> None:
    declared_kind = (data.get("metadata") or {}).get("kind")
    if declared_kind is not None and declared_kind != payload.kind:
        raise UnprocessableError(
            f"metadata.kind is {declared_kind!r} but the archive is {payload.kind!r}."
        )
    if whole_weighting and payload.kind != LEARNING:
        raise UnprocessableError(
            "Protocol v1 uploads carry federated_learning weights only; send "
            f"{payload.kind} payloads to /api/v1/file/upload.",
            "unsupported-kind",
        )
    if whole_weighting and not (
        payload.weighting is not None
        and payload.weighting >= 0
        and float(payload.weighting).is_integer()
    ):
        raise UnprocessableError(
            f"Protocol v1 weights carry a whole number of samples; this file's weighting is "
            f"{payload.weighting!r}."
        )
