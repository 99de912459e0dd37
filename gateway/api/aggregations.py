"""`GET /aggregations/{id}`: fetch once from BranchKey into the cache, then serve with Range and ETag."""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from gateway.dependencies import GatewayState, StateDep
from gateway.errors import BadRequestError
from gateway.weights import aggregate_to_object_npy, normalize_aggregate

router = APIRouter()

_MAX_ID = 200


class Format(StrEnum):
    """Download formats."""

    npz = "npz"
    npy = "npy"


def check_id(aggregation_id: str) -> None:
    """Ids are URL-safe names, never paths (§5.12)."""
    if (
        not aggregation_id
        or len(aggregation_id) > _MAX_ID
        or aggregation_id in (".", "..")
        or any(ch in aggregation_id for ch in "/\\\0")
        or not aggregation_id.isprintable()
    ):
        raise BadRequestError(
            f"{aggregation_id[:60]!r} is not an aggregation id: ids are at most {_MAX_ID} printable "
            "characters without '/' or '\\\\'."
        )


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The aggregated model."}
}


@router.head(
    "/aggregations/{aggregation_id}",
    response_class=FileResponse,
    responses=_RESPONSES,
    operation_id="head_aggregation",
)
@router.get(
    "/aggregations/{aggregation_id}",
    response_class=FileResponse,
    responses=_RESPONSES,
    operation_id="stream_aggregation",
)
async def stream_aggregation(
    aggregation_id: str,
    state: StateDep,
    fmt: Annotated[
        Format,
        Query(alias="format", description="npz: plain layer_0.. arrays; npy: the v1 object array."),
    ] = Format.npz,
) -> FileResponse:
    """The aggregated model: `layer_0 ..` as an NPZ of plain arrays, or (`?format=npy`) the v1 object array."""
    check_id(aggregation_id)
    path = await _cached(state, aggregation_id, fmt)
    digest = await to_thread.run_sync(_digest_of, path)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{aggregation_id}.{fmt.value}",
        headers={"ETag": f'"{digest}"', "Cache-Control": "private, max-age=31536000, immutable"},
    )


async def _cached(state: GatewayState, aggregation_id: str, fmt: Format) -> Path:
    """The cached file for (id, format), fetched and converted at most once at a time."""
    cache = state.cache_dir
    target = cache / f"{aggregation_id}.{fmt.value}"
    lock = state.fetch_locks.setdefault(f"{aggregation_id}.{fmt.value}", anyio.Lock())
    async with lock:
        if await to_thread.run_sync(target.exists):
            return target
        plain = cache / f"{aggregation_id}.npz"
        if not await to_thread.run_sync(plain.exists):
            await _fetch(state, aggregation_id, plain)
        if fmt is Format.npy:
            limits = state.settings.weights.policy().limits
            await to_thread.run_sync(aggregate_to_object_npy, plain, target, limits)
            await to_thread.run_sync(_write_digest, target)
        await to_thread.run_sync(_evict, cache, state.settings.gateway_cache_keep)
    return target


async def _fetch(state: GatewayState, aggregation_id: str, plain: Path) -> None:
    upstream = state.session.require()
    url = await upstream.download_url(aggregation_id)
    raw = state.tmp_dir / f".download-{secrets.token_hex(8)}"
    try:
        async with upstream.blob(url) as response:
            stream = await to_thread.run_sync(raw.open, "wb")
            try:
                async for chunk in response.aiter_bytes():
                    await to_thread.run_sync(stream.write, chunk)
            finally:
                await to_thread.run_sync(stream.close)
        limits = state.settings.weights.policy().limits
        await to_thread.run_sync(normalize_aggregate, raw, plain, limits)
        await to_thread.run_sync(_write_digest, plain)
    finally:
        await to_thread.run_sync(lambda: raw.unlink(missing_ok=True))


def _write_digest(path: Path) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    path.with_name(path.name + ".sha256").write_text(digest.hexdigest())


def _digest_of(path: Path) -> str:
    return path.with_name(path.name + ".sha256").read_text().strip()


def _evict(cache: Path, keep: int) -> None:
    """Keep the `keep` most recent aggregations (all their formats)."""
    ids: dict[str, float] = {}
    for entry in cache.iterdir():
        if entry.suffix in (".npz", ".npy"):
            ids[entry.stem] = max(ids.get(entry.stem, 0.0), entry.stat().st_mtime)
    for stale in sorted(ids, key=ids.__getitem__)[:-keep]:
        for suffix in (".npz", ".npy", ".npz.sha256", ".npy.sha256"):
            (cache / f"{stale}{suffix}").unlink(missing_ok=True)
