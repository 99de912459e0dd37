"""`GET /aggregations/{id}`: fetch once from BranchKey into the cache, then serve with Range and ETag."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import anyio
from anyio import to_thread
from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from gateway.dependencies import GatewayState, StateDep
from gateway.errors import BadRequestError, UpstreamUnavailableError
from gateway.observability import MeteredFileResponse, MetricsDep
from gateway.weights import aggregate_to_object_npy, detect_format, normalize_aggregate
from gateway.weights.objectnpy import read_object_npy

router = APIRouter()

_MAX_ID = 200
_FLUSH_BYTES = 1 << 20


class Format(StrEnum):
    """Download formats."""

    npz = "npz"
    npy = "npy"


def check_id(aggregation_id: str) -> None:
    """Ids are URL-safe names, never paths (§5.12)."""
    if (
        not aggregation_id
        or len(aggregation_id) > _MAX_ID
        or aggregation_id.startswith(".")
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
    metrics: MetricsDep,
    fmt: Annotated[
        Format,
        Query(alias="format", description="npz: plain layer_0.. arrays; npy: the v1 object array."),
    ] = Format.npz,
) -> FileResponse:
    """The aggregated model: `layer_0 ..` as an NPZ of plain arrays, or (`?format=npy`) the v1 object
    array (from a v1 upstream with its sample count; from a v3 upstream with 0 samples)."""
    check_id(aggregation_id)
    served, digest = await _cached(state, aggregation_id, fmt)
    return MeteredFileResponse(
        served,
        media_type="application/octet-stream",
        filename=f"{aggregation_id}.{fmt.value}",
        headers={"ETag": f'"{digest}"', "Cache-Control": "private, max-age=31536000, immutable"},
        cleanup=lambda: served.unlink(missing_ok=True),
        on_sent=metrics.record_download,
    )


async def _cached(state: GatewayState, aggregation_id: str, fmt: Format) -> tuple[Path, str]:
    """A private hard link to the cached file for (id, format), and its sha256.

    One lock per aggregation id: both formats of one id are produced one at a time, and eviction
    never removes an id whose lock is held. The link keeps a response readable even if the cache
    entry is evicted while it is being sent.
    """
    lock = state.fetch_locks.setdefault(aggregation_id, anyio.Lock())
    try:
        return await _cached_locked(state, aggregation_id, fmt, lock)
    except BaseException:
        if not lock.locked():
            state.fetch_locks.pop(aggregation_id, None)  # nothing cached: keep the table bounded
        raise


async def _cached_locked(
    state: GatewayState, aggregation_id: str, fmt: Format, lock: anyio.Lock
) -> tuple[Path, str]:
    cache = state.cache_dir
    target = cache / f"{aggregation_id}.{fmt.value}"
    async with lock:
        if not await to_thread.run_sync(target.exists):
            plain = cache / f"{aggregation_id}.npz"
            if not await to_thread.run_sync(plain.exists):
                await _fetch(state, aggregation_id, plain)
            if fmt is Format.npy and not await to_thread.run_sync(target.exists):
                limits = state.settings.weights.policy().limits
                await _publish(
                    cache, target, lambda tmp: aggregate_to_object_npy(plain, tmp, limits)
                )
        digest = await to_thread.run_sync(_digest_of, target)
        served = state.tmp_dir / f".serve-{secrets.token_hex(8)}"
        await to_thread.run_sync(os.link, target, served)
    await _evict(state, state.settings.gateway_cache_keep)
    return served, digest


async def _publish(
    cache: Path,
    target: Path,
    produce: Callable[[Path], object],
    known_digest: Callable[[], str | None] | None = None,
) -> None:
    """Produce a cache file under a private name, record its digest, then make it visible.

    `known_digest`, asked after `produce`, may give the digest without reading the file again.
    """
    tmp = cache / f".{target.name}.{secrets.token_hex(8)}"

    def build() -> None:
        try:
            produce(tmp)
            digest = known_digest() if known_digest is not None else None
            if digest is None:
                _write_digest(tmp, target)
            else:
                target.with_name(target.name + ".sha256").write_text(digest)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    await to_thread.run_sync(build)


async def _fetch(state: GatewayState, aggregation_id: str, plain: Path) -> None:
    upstream = state.session.require()
    url = await upstream.download_url(aggregation_id)
    raw = state.tmp_dir / f".download-{secrets.token_hex(8)}"
    digest = hashlib.sha256()  # of the bytes as stored: reused when they are served unchanged
    try:
        async with upstream.blob(url) as response:
            stream = await to_thread.run_sync(raw.open, "wb")
            try:
                pending: list[bytes] = []
                size = 0
                total = 0
                limit = state.settings.weights.policy().limits.max_total_uncompressed_bytes
                async for chunk in response.aiter_bytes():
                    pending.append(chunk)
                    size += len(chunk)
                    total += len(chunk)
                    if total > limit:
                        raise UpstreamUnavailableError(
                            f"BranchKey's file for {aggregation_id} is larger than {limit} bytes "
                            "(GATEWAY_MAX_UNCOMPRESSED_BYTES); refusing to store it."
                        )
                    if size >= _FLUSH_BYTES:  # one worker-thread hop per ~1 MiB
                        await to_thread.run_sync(_write_hashed, stream, digest, pending)
                        pending, size = [], 0
                await to_thread.run_sync(_write_hashed, stream, digest, pending)
            finally:
                await to_thread.run_sync(stream.close)
        limits = state.settings.weights.policy().limits
        # An upstream file already in the served layout is moved into the cache, not copied,
        # and keeps the digest computed while it arrived: no extra pass over the data.
        await _publish(
            state.cache_dir,
            plain,
            lambda tmp: normalize_aggregate(raw, tmp, limits, move=True),
            lambda: None if raw.exists() else digest.hexdigest(),
        )
        moved = not await to_thread.run_sync(raw.exists)  # then it was an NPZ already
        if not moved and await to_thread.run_sync(detect_format, raw, limits) == "npy-object":
            # A v1 upstream's file: ?format=npy serves it with its own sample count, re-written by
            # our writer (the upstream's pickle bytes are never handed on).
            samples = (await to_thread.run_sync(read_object_npy, raw, limits)).num_samples
            await _publish(
                state.cache_dir,
                state.cache_dir / f"{aggregation_id}.npy",
                lambda tmp: aggregate_to_object_npy(plain, tmp, limits, num_samples=samples),
            )
    finally:
        await to_thread.run_sync(lambda: raw.unlink(missing_ok=True))


def _write_hashed(stream: Any, digest: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        stream.write(chunk)
        digest.update(chunk)


def _write_digest(source: Path, target: Path) -> None:
    """`<target>.sha256` holding the sha256 of `source` (written before `target` appears)."""
    digest = hashlib.sha256()
    with source.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    target.with_name(target.name + ".sha256").write_text(digest.hexdigest())


def _digest_of(path: Path) -> str:
    return path.with_name(path.name + ".sha256").read_text().strip()


async def _evict(state: GatewayState, keep: int) -> None:
    """Keep the `keep` most recent aggregations (all formats); each removal holds that id's lock."""
    for stale in await to_thread.run_sync(_stale_ids, state.cache_dir, keep):
        lock = state.fetch_locks.setdefault(stale, anyio.Lock())
        if lock.locked():
            continue  # being produced or served right now: next time
        async with lock:
            await to_thread.run_sync(_remove_id, state.cache_dir, stale)
        if not lock.locked() and state.fetch_locks.get(stale) is lock:
            del state.fetch_locks[stale]


def _stale_ids(cache: Path, keep: int) -> list[str]:
    ids: dict[str, float] = {}
    for entry in cache.iterdir():
        if entry.suffix in (".npz", ".npy") and not entry.name.startswith("."):
            try:
                ids[entry.stem] = max(ids.get(entry.stem, 0.0), entry.stat().st_mtime)
            except FileNotFoundError:
                continue
    return sorted(ids, key=ids.__getitem__)[:-keep]


def _remove_id(cache: Path, aggregation_id: str) -> None:
    for suffix in (".npz", ".npy", ".npz.sha256", ".npy.sha256"):
        (cache / f"{aggregation_id}{suffix}").unlink(missing_ok=True)
