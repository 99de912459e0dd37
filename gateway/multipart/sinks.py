"""File parts on their way to disk: hashed temp files, and the batches of writes a writer thread applies to them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from gateway._io import Digest
from gateway.multipart.model import Follower


class FileSink:
    """One file part on its way to disk; after creation it is only touched by worker threads."""

    __slots__ = ("dest_dir", "file", "finished", "follower", "hash", "path", "watch", "written")

    def __init__(
        self, dest_dir: Path, watch: Digest | None = None, follower: Follower | None = None
    ) -> None:
        self.dest_dir = dest_dir
        self.path: Path | None = None
        self.file: BinaryIO | None = None
        self.finished = False
        self.hash = hashlib.sha256()
        self.watch = watch
        """Fed the same bytes as the hash (a check that reads the part as it arrives)."""
        self.follower = follower
        """Told after every batch how much of the file is on disk (it reads the file as it grows)."""
        self.written = 0

    def _open(self) -> BinaryIO:
        if self.follower is not None:  # the follower's path, created here as mkstemp would
            name = str(self.follower.path)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        else:
            fd, name = tempfile.mkstemp(dir=self.dest_dir, prefix=".upload-")
        self.path = Path(name)
        try:
            self.file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        return self.file

    def write(self, data: memoryview) -> None:
        """Append `data` (the temp file is created on the first write); in the writer's thread."""
        file = self.file if self.file is not None else self._open()
        file.write(data)
        self.written += len(data)

    def digest(self, data: memoryview) -> None:
        """Hash `data` and feed it to the watch; in the hasher's thread."""
        self.hash.update(data)
        if self.watch is not None:
            self.watch.update(data)

    def finish(self) -> None:
        """Close the temp file (creating it if the part was empty)."""
        file = self.file if self.file is not None else self._open()
        file.close()
        self.finished = True
        if self.follower is not None:
            self.follower.store(self.written)

    def flushed(self) -> None:
        """Tell the follower what is on disk after a batch (the file stays open)."""
        if self.follower is not None and self.file is not None and not self.finished:
            self.file.flush()
            self.follower.store(self.written)

    def stored_path(self) -> Path:
        """The finished temp file."""
        if self.path is None or not self.finished:
            raise RuntimeError("file part read before its temp file was finished")
        return self.path

    def discard(self) -> None:
        """Close and delete the temp file, if any."""
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class BodyHash:
    """A sink that only hashes: the whole body's sha-256, fed the raw chunks beside the parts."""

    __slots__ = ("hash",)

    def __init__(self, digest: Digest) -> None:
        self.hash = digest

    def write(self, data: memoryview) -> None:
        """Nothing to store."""

    def digest(self, data: memoryview) -> None:
        """Hash `data`."""
        self.hash.update(data)

    def finish(self) -> None:
        """Nothing to close."""

    def flushed(self) -> None:
        """Nothing to tell."""


Op = tuple[FileSink | BodyHash, memoryview | None]
"""A write (data) or the end of a file part (None), queued on the event loop and applied in a thread."""


def store(ops: Iterable[Op]) -> None:
    """Write a batch of ops to the parts' files (in the writer's thread), then tell each touched
    part's follower what is on disk."""
    touched: dict[int, FileSink | BodyHash] = {}
    for sink, data in ops:
        if data is None:
            sink.finish()
        else:
            sink.write(data)
            touched[id(sink)] = sink
    for sink in touched.values():
        sink.flushed()


def digest(ops: Iterable[Op]) -> None:
    """Hash a batch of ops (in the hasher's thread: sha-256 and the disk copy run side by side)."""
    for sink, data in ops:
        if data is not None:
            sink.digest(data)


def discard(sinks: Iterable[FileSink]) -> None:
    """Delete every sink's temp file (blocking)."""
    for sink in sinks:
        sink.discard()
