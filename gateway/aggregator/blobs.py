"""Downloads of both dialects: who may download a file, its signed expiring URL, and the file behind that URL."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path
from typing import Final

from anyio import to_thread
from fastapi import Request
from fastapi.responses import FileResponse

from gateway.aggregator.auth import own_branch
from gateway.aggregator.errors import ConflictError, ForbiddenError, NotFoundError
from gateway.aggregator.formats import BlobFormat, in_format
from gateway.aggregator.records import Leaf
from gateway.aggregator.state import AggregatorState

_BLOB_PATHS: Final[dict[BlobFormat, str]] = {"npz": "/api/v1/blob", "npy": "/v1/blob"}
_DOWNLOAD_PATHS: Final[dict[BlobFormat, str]] = {
    "npz": "/api/v1/file/download",
    "npy": "/v1/file/download",
}


class BlobResponse(FileResponse):
    """A stored model file, read in 1 MiB pieces (one worker-thread hop each, not sixteen)."""

    chunk_size = 1024 * 1024


async def download_url(
    state: AggregatorState, request: Request, leaf: Leaf, fmt: BlobFormat, file_id: str
) -> str:
    """A signed URL of a file this leaf may download, in format `fmt`.

    A format other than the stored one is converted now, so that the blob itself cannot fail.
    """
    await in_format(state, fmt, file_id, await downloadable(state, leaf, file_id))
    return blob_url(state, request, fmt, file_id)


async def downloadable(state: AggregatorState, leaf: Leaf, file_id: str) -> Path:
    """The stored NPZ behind `file_id` if this leaf may download it (404/403/409 otherwise)."""
    aggregation = await to_thread.run_sync(state.store.aggregation, file_id)
    if aggregation is not None:
        own_branch(leaf, aggregation.branch_id)
        if aggregation.status == "pending":
            raise ConflictError(
                f"Aggregation {file_id} is still being computed; try again shortly."
            )
        if aggregation.status == "failed" or aggregation.path is None:
            raise ConflictError(f"Aggregation {file_id} failed: {aggregation.error}")
        return Path(aggregation.path)
    upload = await to_thread.run_sync(state.store.upload, file_id)
    if upload is None:
        raise NotFoundError(f"No aggregation or upload has id {file_id!r}.")
    if upload.leaf_id != leaf.id:
        raise ForbiddenError(f"File {file_id} belongs to another leaf.")
    return Path(upload.path)


def blob_url(state: AggregatorState, request: Request, fmt: BlobFormat, file_id: str) -> str:
    """An absolute, signed, expiring URL of `file_id` in format `fmt` (the signature binds the format)."""
    expires = int(time.time() + state.settings.blob_url_ttl_s)
    signature = _sign(state.blob_key, fmt, file_id, expires)
    base = str(request.base_url).rstrip("/")
    return f"{base}{_BLOB_PATHS[fmt]}/{file_id}?expires={expires}&signature={signature}"


async def serve_blob(
    state: AggregatorState, fmt: BlobFormat, file_id: str, expires: int, signature: str
) -> FileResponse:
    """The file behind a download URL of either dialect: no credentials, a valid signature for `fmt` instead."""
    check_blob_signature(state, fmt, file_id, expires, signature)
    source = await _stored_path(state, file_id)
    path = await in_format(state, fmt, file_id, source)
    return BlobResponse(path, media_type="application/octet-stream", filename=f"{file_id}.{fmt}")


def check_blob_signature(
    state: AggregatorState, fmt: BlobFormat, file_id: str, expires: int, signature: str
) -> None:
    """403 unless the URL was signed by this aggregator for this file and format, and is unexpired."""
    ask = _DOWNLOAD_PATHS[fmt]
    expected = _sign(state.blob_key, fmt, file_id, expires).encode("ascii")
    # bytes: compare_digest raises TypeError on a str that is not ASCII
    if not hmac.compare_digest(signature.encode("utf-8", "surrogateescape"), expected):
        raise ForbiddenError(f"Bad download signature: ask {ask} for a new URL.")
    if expires < time.time():
        raise ForbiddenError(f"This download URL has expired: ask {ask} for a new one.")


async def _stored_path(state: AggregatorState, file_id: str) -> Path:
    """The stored NPZ of a finished aggregation or an upload with this id, else 404."""
    aggregation = await to_thread.run_sync(state.store.aggregation, file_id)
    path = aggregation.path if aggregation else None
    if path is None:
        upload = await to_thread.run_sync(state.store.upload, file_id)
        path = upload.path if upload else None
    if path is None or not await to_thread.run_sync(os.path.exists, path):
        raise NotFoundError(f"No file with id {file_id!r}.")
    return Path(path)


def _sign(key: bytes, fmt: BlobFormat, file_id: str, expires: int) -> str:
    return hmac.new(key, f"{fmt}\n{file_id}\n{expires}".encode(), hashlib.sha256).hexdigest()
