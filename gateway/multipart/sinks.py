"""File parts on their way to disk: hashed temp files, and the writer that fills them in a worker thread."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

from gateway._io import Digest


class FileSink:
    """One file part on its way to disk; after creation it is only touched by worker threads."""

    __slots__ = ("dest_dir", "file", "finished", "hash", "path", "watch")

    def __init__(self, dest_dir: Path, watch: Digest | None = None) -> None:
        self.dest_dir = dest_dir
        self.path: Path | None = None
        self.file: BinaryIO | None = None
        self.finished = False
        self.hash = hashlib.sha256()
        self.watch = watch
        """Fed the same bytes as the hash (a check that reads the part as it arrives)."""

    def _open(self) -> BinaryIO:
        fd, name = tempfile.mkstemp(dir=self.dest_dir, prefix=".upload-")
        self.path = Path(name)
        try:
            self.file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        return self.file

    def write(self, data: memoryview) -> None:
        """Append `data` and hash it (the temp file is created on the first write)."""
        file = self.file if self.file is not None else self._open()
        file.write(data)
        self.hash.update(data)
        if self.watch is not None:
            self.watch.update(data)

    def finish(self) -> None:
        """Close the temp file (creating it if the part was empty)."""
        file = self.file if self.file is not None else self._open()
        file.close()
        self.finished = True

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


Op = tuple[FileSink, memoryview | None]
"""A write (data) or the end of a file part (None), queued on the event loop and applied in a thread."""


def _apply(ops: Iterable[Op]) -> None:
    for sink, data in ops:
        if data is None:
            sink.finish()
        else:
            sink.write(data)


def discard(sinks: Iterable[FileSink]) -> None:
    """Delete every sink's temp file (blocking)."""
    for sink in sinks:
        sink.discard()


class Writer:
    """Applies batches of writes in a worker thread while the event loop reads the next batch.

    At most one batch is being written and one waits (about 2 MiB). A failed write is kept, not
    raised in the writer's task (a task group would wrap it), and re-raised by the reading side.
    """

    def __init__(self) -> None:
        self.send, self._receive = anyio.create_memory_object_stream[list[Op]](1)
        self.error: Exception | None = None

    async def run(self) -> None:
        """Write every batch sent until `send` is closed."""
        async with self._receive:
            async for ops in self._receive:
                if self.error is not None:
                    continue  # drain without writing, so the reading side never blocks
                try:
                    await anyio.to_thread.run_sync(_apply, ops)
                except Exception as exc:
                    self.error = exc

    def check(self) -> None:
        """Re-raise a write that failed."""
        if self.error is not None:
            raise self.error
