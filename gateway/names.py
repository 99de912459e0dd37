"""The leaf's tensor names, kept across restarts, and aggregations served in them (safetensors, named NPZ)."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from anyio import to_thread

from gateway._io import KeyedLocks, sha256_file
from gateway.errors import BadRequestError, NameMapConflictError, NoNameMapError
from gateway.weights import Limits, WeightsError
from gateway.weights.names import NameMap
from gateway.weights.renamed import aggregate_to_named_npz, aggregate_to_safetensors

log = logging.getLogger("gateway")

MAP_FILE = "names.json"


class DownloadFormat(StrEnum):
    """Download formats: the cache's two and safetensors."""

    npz = "npz"
    npy = "npy"
    safetensors = "safetensors"


class Names(StrEnum):
    """Which names a download uses."""

    layer = "layer"
    original = "original"


@dataclass(frozen=True)
class Plain:
    """The plain `layer_0 ..` NPZ of an aggregation (a private link the caller removes) and its digest."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class Renamed:
    """A private hard link to a file in the trainer's names (the caller removes it) and its sha256."""

    path: Path
    sha256: str
    suffix: str
    """The file name's extension: `safetensors` or `npz`."""


def wants_names(fmt: DownloadFormat, names: Names | None) -> bool:
    """Whether a download goes through the name map (safetensors always; npz with names=original)."""
    if fmt is DownloadFormat.npy and names is Names.original:
        raise BadRequestError(
            "The v1 object .npy (?format=npy) holds a list of arrays, which has no names; "
            "ask for ?format=safetensors or ?format=npz&names=original."
        )
    return fmt is DownloadFormat.safetensors or names is Names.original


class NamedDownloads:
    """The name map of the leaf's last upload (in `<data dir>/names.json`) and the files derived
    with it, kept in their own folder: `<aggregate sha256>-<map digest>.<format>`, one lock each,
    the `keep` newest kept."""

    def __init__(self, data_dir: Path, scratch: Path, limits: Limits, keep: int) -> None:
        self.map_path = data_dir / MAP_FILE
        self.folder = data_dir / "named"
        self.scratch = scratch
        self.limits = limits
        self.keep = keep
        self.locks = KeyedLocks()
        self.current: NameMap | None = None

    def load(self) -> None:
        """Read the remembered map and clear partial files (at start-up, in a worker thread)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for entry in self.folder.iterdir():
            if entry.name.startswith("."):
                entry.unlink(missing_ok=True)
        for partial in self.map_path.parent.glob(f".{MAP_FILE}.*"):
            partial.unlink(missing_ok=True)
        try:
            self.current = NameMap.from_json(self.map_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.current = None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring %s, which is not a name map (%s)", self.map_path, exc)
            self.current = None

    async def remember(self, names: NameMap | None) -> None:
        """Keep the names of an upload BranchKey accepted; an upload in `layer_<n>` names forgets them."""
        if names == self.current:
            return
        self.current = names
        try:
            await to_thread.run_sync(self._write, names)
        except OSError as exc:  # the upload itself succeeded: report it so, and say why here
            log.warning("could not keep the tensor names in %s (%s)", self.map_path, exc)

    def _write(self, names: NameMap | None) -> None:
        if names is None:
            self.map_path.unlink(missing_ok=True)
            return
        tmp = self.map_path.with_name(f".{MAP_FILE}.{secrets.token_hex(6)}")
        try:
            tmp.write_text(names.to_json(), encoding="utf-8")
            os.replace(tmp, self.map_path)
        finally:
            tmp.unlink(missing_ok=True)

    async def open(
        self, plain: Plain, aggregation_id: str, fmt: DownloadFormat, names: Names | None
    ) -> Renamed:
        """The aggregation as `fmt` in the trainer's names (`names=layer`: safetensors in `layer_i`)."""
        current = None if names is Names.layer else self.current
        if current is None and names is not Names.layer:
            raise NoNameMapError(
                "No tensor names are remembered: this leaf's last accepted upload was not a "
                "safetensors file or a named NPZ. Upload one first, or ask for ?format=npz "
                "(layer_0..) or ?format=safetensors&names=layer."
            )
        suffix = "safetensors" if fmt is DownloadFormat.safetensors else "npz"
        digest = current.digest if current is not None else "layer"
        target = self.folder / f"{plain.sha256}-{digest}.{suffix}"

        def produce(tmp: Path) -> str | None:
            """Write the file; its sha256 when known from the writing."""
            if suffix == "safetensors":
                return aggregate_to_safetensors(
                    plain.path, tmp, current, self.limits, aggregation_id
                )
            assert current is not None  # noqa: S101 - names=layer npz never gets here
            aggregate_to_named_npz(plain.path, tmp, current, self.limits, aggregation_id)
            return None

        lock = self.locks.get(target.name)
        try:
            async with lock:
                sha256 = await to_thread.run_sync(self._produce, target, produce)
                served = self.scratch / f".serve-{secrets.token_hex(8)}"
                await to_thread.run_sync(os.link, target, served)
        finally:
            self.locks.discard(target.name, lock)
        await self._evict()
        return Renamed(served, sha256, suffix)

    def _produce(self, target: Path, produce: Callable[[Path], str | None]) -> str:
        digest_path = target.with_name(target.name + ".sha256")
        if target.exists():
            os.utime(target)  # recently used: evicted last
            return digest_path.read_text().strip()
        tmp = self.folder / f".{target.name}.{secrets.token_hex(6)}"
        try:
            try:
                digest = produce(tmp) or sha256_file(tmp).hex()
            except WeightsError as error:
                if error.code == "names-mismatch":
                    raise NameMapConflictError(error.message) from None
                raise
            digest_path.write_text(digest)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    async def _evict(self) -> None:
        """Keep the `keep` most recently used files; each removal holds that file's lock."""
        for stale in await to_thread.run_sync(_stale_files, self.folder, self.keep):
            lock = self.locks.get(stale.name)
            if lock.locked():
                continue  # being produced or linked right now: next time
            try:
                async with lock:
                    await to_thread.run_sync(_remove, stale)
            finally:
                self.locks.discard(stale.name, lock)


def _stale_files(folder: Path, keep: int) -> list[Path]:
    files = []
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.suffix == ".sha256":
            continue
        try:
            files.append((entry.stat().st_mtime, entry))
        except FileNotFoundError:
            continue
    return [path for _, path in sorted(files)[:-keep]]


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)
