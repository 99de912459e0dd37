"""The aggregation download cache: each aggregation fetched from BranchKey once, served from disk after."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import httpx
from anyio import to_thread

from gateway._io import FLUSH_BYTES, KeyedLocks, sha256_file, write_hashed
from gateway.errors import BadRequestError, UpstreamUnavailableError
from gateway.weights import (
    Limits,
    Payload,
    aggregate_to_object_npy,
    detect_format,
    normalize_aggregate,
)
from gateway.weights.objectnpy import read_object_npy

MAX_ID_LENGTH = 200


class Format(StrEnum):
    """Download formats."""

    npz = "npz"
    npy = "npy"


class AggregateSource(Protocol):
    """Where aggregations come from: the leaf's upstream session."""

    async def download_url(self, file_id: str) -> str:
        """The blob URL of an aggregation."""
        ...

    def blob(self, url: str) -> AbstractAsyncContextManager[httpx.Response]:
        """The blob behind a download URL, streamed (a non-200 answer raises)."""
        ...


@dataclass(frozen=True)
class Served:
    """A private hard link to a cached file (the caller removes it once sent) and its sha256."""

    path: Path
    sha256: str


def check_id(aggregation_id: str) -> None:
    """Ids are URL-safe names, never paths (§5.12): they name the cache's files."""
    if (
        not aggregation_id
        or len(aggregation_id) > MAX_ID_LENGTH
        or aggregation_id.startswith(".")
        or any(ch in aggregation_id for ch in "/\\\0")
        or not aggregation_id.isprintable()
    ):
        raise BadRequestError(
            f"{aggregation_id[:60]!r} is not an aggregation id: ids are at most {MAX_ID_LENGTH} "
            "printable characters without '/' or '\\\\', not starting with '.'."
        )


class AggregationCache:
    """Aggregations on disk as `<id>.npz` (and `<id>.npy` when asked), each with a `.sha256` beside it.

    One lock per aggregation id: both formats of one id are produced one at a time, and eviction
    never removes an id whose lock is held. Files appear under their name only once complete and
    with their digest recorded; scratch names start with '.', which no id may.
    """

    def __init__(
        self,
        folder: Path,
        scratch: Path,
        limits: Limits,
        keep: int,
        on_fetched: Callable[[str, Payload], None] | None = None,
    ) -> None:
        self.folder = folder
        self.scratch = scratch
        self.limits = limits
        self.keep = keep
        self.locks = KeyedLocks()
        self.on_fetched = on_fetched
        """Told (in a worker thread) each aggregation fetched from upstream and what it holds."""

    async def open(
        self, source: Callable[[], AggregateSource], aggregation_id: str, fmt: Format
    ) -> Served:
        """The file for (id, format), fetched from `source()` on first use (asked only then: a cached
        file needs no session), as a private hard link that stays readable even if the entry is
        evicted while it is being sent."""
        check_id(aggregation_id)
        lock = self.locks.get(aggregation_id)
        try:
            async with lock:
                served = await self._open_locked(source, aggregation_id, fmt)
        finally:
            self.locks.discard(aggregation_id, lock)
        await self.evict()
        return served

    async def _open_locked(
        self, source: Callable[[], AggregateSource], aggregation_id: str, fmt: Format
    ) -> Served:
        target = self.folder / f"{aggregation_id}.{fmt.value}"
        if not await to_thread.run_sync(target.exists):
            plain = self.folder / f"{aggregation_id}.npz"
            if not await to_thread.run_sync(plain.exists):
                await self._fetch(source(), aggregation_id, plain)
            if fmt is Format.npy and not await to_thread.run_sync(target.exists):
                await self._publish(
                    target, lambda tmp: aggregate_to_object_npy(plain, tmp, self.limits)
                )
        digest = await to_thread.run_sync(_digest_of, target)
        served = self.scratch / f".serve-{secrets.token_hex(8)}"
        await to_thread.run_sync(os.link, target, served)
        return Served(served, digest)

    async def _fetch(self, source: AggregateSource, aggregation_id: str, plain: Path) -> None:
        url = await source.download_url(aggregation_id)
        raw = self.scratch / f".download-{secrets.token_hex(8)}"
        try:
            digest = await self._download(source, url, aggregation_id, raw)
            # An upstream file already in the served layout is moved into the cache, not copied,
            # and keeps the digest computed while it arrived: no extra pass over the data.
            fetched: list[Payload] = []
            await self._publish(
                plain,
                lambda tmp: fetched.append(normalize_aggregate(raw, tmp, self.limits, move=True)),
                lambda: None if raw.exists() else digest,
            )
            if self.on_fetched is not None:
                await to_thread.run_sync(self.on_fetched, aggregation_id, fetched[0])
            moved = not await to_thread.run_sync(raw.exists)  # then it was an NPZ already
            if not moved and await to_thread.run_sync(detect_format, raw, self.limits) == (
                "npy-object"
            ):
                # A v1 upstream's file: ?format=npy serves it with its own sample count, re-written
                # by our writer (the upstream's pickle bytes are never handed on).
                samples = (await to_thread.run_sync(read_object_npy, raw, self.limits)).num_samples
                await self._publish(
                    self.folder / f"{aggregation_id}.npy",
                    lambda tmp: aggregate_to_object_npy(
                        plain, tmp, self.limits, num_samples=samples
                    ),
                )
        finally:
            await to_thread.run_sync(lambda: raw.unlink(missing_ok=True))

    async def _download(
        self, source: AggregateSource, url: str, aggregation_id: str, raw: Path
    ) -> str:
        """Stream the blob into `raw`; the sha256 of the bytes as stored."""
        digest = hashlib.sha256()
        limit = self.limits.max_total_uncompressed_bytes
        async with source.blob(url) as response:
            stream = await to_thread.run_sync(raw.open, "wb")
            try:
                pending: list[bytes] = []
                pending_size = total = 0
                async for chunk in response.aiter_bytes():
                    pending.append(chunk)
                    pending_size += len(chunk)
                    total += len(chunk)
                    if total > limit:
                        raise UpstreamUnavailableError(
                            f"BranchKey's file for {aggregation_id} is larger than {limit} bytes "
                            "(GATEWAY_MAX_UNCOMPRESSED_BYTES); refusing to store it."
                        )
                    if pending_size >= FLUSH_BYTES:
                        await to_thread.run_sync(write_hashed, stream, digest, pending)
                        pending, pending_size = [], 0
                await to_thread.run_sync(write_hashed, stream, digest, pending)
            finally:
                await to_thread.run_sync(stream.close)
        return digest.hexdigest()

    async def _publish(
        self,
        target: Path,
        produce: Callable[[Path], object],
        known_digest: Callable[[], str | None] | None = None,
    ) -> None:
        """Produce a cache file under a private name, record its digest, then make it visible.

        `known_digest`, asked after `produce`, may give the digest without reading the file again.
        """
        tmp = self.folder / f".{target.name}.{secrets.token_hex(8)}"

        def build() -> None:
            try:
                produce(tmp)
                digest = known_digest() if known_digest is not None else None
                if digest is None:
                    digest = sha256_file(tmp).hex()
                _digest_path(target).write_text(digest)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)

        await to_thread.run_sync(build)

    async def evict(self) -> None:
        """Keep the `keep` most recent aggregations (all formats); each removal holds that id's lock."""
        for stale in await to_thread.run_sync(_stale_ids, self.folder, self.keep):
            lock = self.locks.get(stale)
            if lock.locked():
                continue  # being produced or served right now: next time
            try:
                async with lock:
                    await to_thread.run_sync(_remove_id, self.folder, stale)
            finally:
                self.locks.discard(stale, lock)


def remove_partials(cache: Path) -> None:
    """Remove the partial files (`.<name>.<hex>`) a crashed process left: ids never start with '.'."""
    for entry in cache.iterdir():
        if entry.name.startswith(".") and entry.is_file():
            entry.unlink(missing_ok=True)


def _digest_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _digest_of(path: Path) -> str:
    return _digest_path(path).read_text().strip()


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
