"""The aggregation download cache: each aggregation fetched from BranchKey once, served from disk after."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

import anyio
import httpx
from anyio import to_thread

from gateway._io import FLUSH_BYTES, KeyedLocks, Spool, sha256_file
from gateway.errors import BadRequestError, GatewayError, UpstreamUnavailableError
from gateway.weights import (
    Limits,
    Payload,
    WeightsError,
    aggregate_to_object_npy,
    detect_format,
    normalize_aggregate,
    starts_plain,
)
from gateway.weights.objectnpy import read_object_npy

MAX_ID_LENGTH = 200
MAX_REFUSED = 256


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


@dataclass(frozen=True)
class Passing:
    """An aggregation passed on while it arrives from BranchKey, cache file and digest written in
    the same pass. `chunks` ends only once the whole file is published in the cache unchanged;
    otherwise it raises before its last chunk, so a cut-off answer is never a complete model."""

    length: int | None
    """The body's size, when BranchKey declared it (its bytes are passed on unchanged)."""
    chunks: AsyncIterator[bytes]


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
    """Aggregations on disk as `<id>.npz` (and `<id>.npy` when asked), each with a `.sha256` beside it
    (and `<id>.npz.samples`, the sample count a v1 upstream gave, for `<id>.npy`).

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
        self.refused: dict[str, None] = {}
        """Ids whose last cut-through download failed (at most MAX_REFUSED, oldest dropped)."""
        self.on_fetched = on_fetched
        """Told (in a worker thread) each aggregation fetched from upstream and what it holds."""

    async def open(
        self, source: Callable[[], AggregateSource], aggregation_id: str, fmt: Format
    ) -> Served:
        """The file for (id, format), fetched from `source()` on first use (asked only then: a cached
        file needs no session), as a private hard link that stays readable even if the entry is
        evicted while it is being sent."""
        async with self.deliver(source, aggregation_id, fmt, through=False) as got:
            assert isinstance(got, Served)  # noqa: S101 - `through=False` always stores first
            return got

    @asynccontextmanager
    async def deliver(
        self,
        source: Callable[[], AggregateSource],
        aggregation_id: str,
        fmt: Format,
        *,
        through: bool,
    ) -> AsyncIterator[Served | Passing]:
        """The file for (id, format) as `open` gives it, or with `through` (an NPZ not cached yet,
        whose first bytes show BranchKey's file already in the served layout) a `Passing`: its
        bytes while they arrive, the id's lock held until this context ends. Leaving the context
        early (the trainer went away) cancels the fetch and releases the lock; a follower waiting
        for the lock then finds the id cached, or fetches it itself."""
        check_id(aggregation_id)
        lock = self.locks.get(aggregation_id)
        served: Served | None = None
        stack = AsyncExitStack()
        try:
            await stack.enter_async_context(lock)
            passing = None
            plain = self.folder / f"{aggregation_id}.npz"
            if aggregation_id in self.refused:  # failed last time: store first, for a clear answer
                del self.refused[aggregation_id]
                through = False
            if through and fmt is Format.npz and not await to_thread.run_sync(plain.exists):
                passing = await self._pass(source(), aggregation_id, stack)
            if passing is None:
                served = await self._open_locked(source, aggregation_id, fmt)
            else:
                yield passing
        finally:
            # Not shielded as a whole: the blob's context holds its own cancel scope. What must
            # finish after a cancel (the spool's thread, the scratch file) shields itself.
            await stack.aclose()
            self.locks.discard(aggregation_id, lock)
        if served is not None:
            yield served
        with anyio.CancelScope(shield=True):
            await self.evict()

    async def _open_locked(
        self, source: Callable[[], AggregateSource], aggregation_id: str, fmt: Format
    ) -> Served:
        target = self.folder / f"{aggregation_id}.{fmt.value}"
        if not await to_thread.run_sync(target.exists):
            plain = self.folder / f"{aggregation_id}.npz"
            if not await to_thread.run_sync(plain.exists):
                stack = AsyncExitStack()
                try:
                    await self._fetch(source(), aggregation_id, stack)
                finally:
                    await stack.aclose()
            if fmt is Format.npy and not await to_thread.run_sync(target.exists):
                samples = await to_thread.run_sync(_samples_of, plain)
                await self._publish(
                    target,
                    lambda tmp: aggregate_to_object_npy(
                        plain, tmp, self.limits, num_samples=samples
                    ),
                )
        digest = await to_thread.run_sync(_digest_of, target)
        served = self.scratch / f".serve-{secrets.token_hex(8)}"
        await to_thread.run_sync(os.link, target, served)
        return Served(served, digest)

    async def _start(
        self, source: AggregateSource, aggregation_id: str, stack: AsyncExitStack
    ) -> tuple[httpx.Response, Spool]:
        """The blob's response, and the scratch file it is written to (both closed by `stack`)."""
        url = await source.download_url(aggregation_id)
        response = await stack.enter_async_context(source.blob(url))
        limit = self.limits.max_total_uncompressed_bytes

        def too_large() -> Exception:
            return UpstreamUnavailableError(
                f"BranchKey's file for {aggregation_id} is larger than {limit} bytes "
                "(GATEWAY_MAX_UNCOMPRESSED_BYTES); refusing to store it."
            )

        raw = Spool(self.scratch / f".download-{secrets.token_hex(8)}", limit, too_large)
        stack.push_async_callback(raw.discard)
        await raw.open()
        return response, raw

    async def _fetch(
        self, source: AggregateSource, aggregation_id: str, stack: AsyncExitStack
    ) -> None:
        """Download the blob whole, then publish it (store and forward)."""
        response, raw = await self._start(source, aggregation_id, stack)
        async for block in _blocks(response):
            await raw.write([block])
        await raw.close()
        await self._settle(raw, aggregation_id)

    async def _pass(
        self, source: AggregateSource, aggregation_id: str, stack: AsyncExitStack
    ) -> Passing | None:
        """Start the download; a `Passing` when its first MiB looks like the served layout, else
        (None) the whole file downloaded and published first."""
        response, raw = await self._start(source, aggregation_id, stack)
        blocks = _blocks(response)
        stack.push_async_callback(blocks.aclose)
        first = await anext(blocks, b"")
        await raw.write([first])
        await raw.sync()  # a full disk is a problem answer, not a cut-off one
        if not starts_plain(first[:FLUSH_BYTES], self.limits):
            async for block in blocks:
                await raw.write([block])
            await raw.close()
            await self._settle(raw, aggregation_id)
            return None

        async def chunks() -> AsyncGenerator[bytes, None]:
            # One block is held back until the whole file is checked: a file that is not kept
            # byte for byte (invalid, or not in the served layout after all) is never complete.
            held = first
            try:
                async for block in blocks:
                    await raw.write([block])
                    yield held
                    held = block
                await raw.close()
                kept = await self._settle(raw, aggregation_id)
            except (GatewayError, WeightsError, OSError):
                # The next GET of this id stores first, to answer the precise problem.
                self.refused[aggregation_id] = None
                while len(self.refused) > MAX_REFUSED:
                    del self.refused[next(iter(self.refused))]
                raise
            if not kept:
                raise UpstreamUnavailableError(
                    f"BranchKey's file for {aggregation_id} is not in the served layout after all "
                    "(only its first member was); the answer was cut off. Download it again: it "
                    "is served from the cache now."
                )
            yield held

        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        length = response.headers.get("content-length") if encoding == "identity" else None
        passed = chunks()
        stack.push_async_callback(passed.aclose)
        return Passing(int(length) if length and length.isdigit() else None, passed)

    async def _settle(self, raw: Spool, aggregation_id: str) -> bool:
        """Publish `<id>.npz` from a complete download (and `<id>.npy` from a v1 upstream's file);
        whether the `.npz` holds the downloaded bytes unchanged."""
        plain = self.folder / f"{aggregation_id}.npz"
        digest = raw.hexdigest()
        samples: int | None = None
        if await to_thread.run_sync(detect_format, raw.path, self.limits) == "npy-object":
            # A v1 upstream's file: its sample count is kept beside the NPZ for ?format=npy, whose
            # file our writer makes from the NPZ when first asked (the upstream's pickle bytes are
            # never handed on), so that an NPZ download does not wait for a v1 file too.
            samples = (await to_thread.run_sync(read_object_npy, raw.path, self.limits)).num_samples
        fetched: list[Payload] = []

        def produce(tmp: Path) -> None:
            fetched.append(normalize_aggregate(raw.path, tmp, self.limits, move=True))
            if samples is not None:
                _samples_path(plain).write_text(str(samples))

        # An upstream file already in the served layout is moved into the cache, not copied,
        # and keeps the digest computed while it arrived: no extra pass over the data.
        await self._publish(plain, produce, lambda: None if raw.path.exists() else digest)
        if self.on_fetched is not None:
            await to_thread.run_sync(self.on_fetched, aggregation_id, fetched[0])
        if not await to_thread.run_sync(raw.path.exists):
            return True  # moved: an NPZ in the served layout already
        return await to_thread.run_sync(_digest_of, plain) == digest

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


async def _blocks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The body in blocks of FLUSH_BYTES or more (the last may be shorter), each one `bytes`: one
    worker-thread hop, one write and one digest update per block in the spool's thread (which
    takes the GIL back after every call, so a list of chunks cost it one round per chunk), and
    one ASGI send."""
    pending: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        pending.append(chunk)
        size += len(chunk)
        if size >= FLUSH_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def remove_partials(cache: Path) -> None:
    """Remove the partial files (`.<name>.<hex>`) a crashed process left: ids never start with '.'."""
    for entry in cache.iterdir():
        if entry.name.startswith(".") and entry.is_file():
            entry.unlink(missing_ok=True)


def _digest_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _digest_of(path: Path) -> str:
    return _digest_path(path).read_text().strip()


def _samples_path(plain: Path) -> Path:
    return plain.with_name(plain.name + ".samples")


def _samples_of(plain: Path) -> int:
    """The sample count a v1 upstream gave with this aggregation (0: none was given)."""
    try:
        return int(_samples_path(plain).read_text())
    except FileNotFoundError:
        return 0


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
    for suffix in (".npz", ".npy", ".npz.sha256", ".npy.sha256", ".npz.samples"):
        (cache / f"{aggregation_id}{suffix}").unlink(missing_ok=True)
