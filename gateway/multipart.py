"""Streaming multipart/form-data reader: file parts go to hashed temp files, written off the event loop."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

__all__ = ["FilePart", "FormData", "MultipartError", "MultipartLimits", "read_multipart"]

# RFC 7578 section 4.7 deprecates Content-Transfer-Encoding; these are the identity encodings.
_IDENTITY_ENCODINGS = frozenset({b"7bit", b"8bit", b"binary"})


class MultipartError(Exception):
    """A request body refused by `read_multipart`, with the HTTP status to answer it with.

    `status` is 400 (malformed), 413 (too large) or 415 (not multipart/form-data);
    `message` is one actionable sentence for the client.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class FilePart:
    """A file part, stored in a temp file that the caller must delete or move."""

    name: str
    filename: str | None
    path: Path
    size: int
    sha256: bytes


@dataclass(frozen=True)
class FormData:
    """A parsed form; the caller owns the files' temp files (delete them with `cleanup` or move them)."""

    fields: dict[str, str]
    files: dict[str, FilePart]
    order: tuple[str, ...]

    def cleanup(self) -> None:
        """Delete every file part's temp file; blocking, so async code runs it via anyio.to_thread.run_sync."""
        for part in self.files.values():
            part.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class MultipartLimits:
    """Caps on one form, enforced on the bytes actually received (never on Content-Length)."""

    max_file_bytes: int
    max_total_file_bytes: int
    max_field_bytes: int = 64 * 1024
    max_parts: int = 10_050
    max_files: int = 10_001


class _FileSink:
    """One file part on its way to disk; after creation it is only touched by worker threads."""

    __slots__ = ("dest_dir", "file", "finished", "hash", "path")

    def __init__(self, dest_dir: Path) -> None:
        self.dest_dir = dest_dir
        self.path: Path | None = None
        self.file: BinaryIO | None = None
        self.finished = False
        self.hash = hashlib.sha256()

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
        file = self.file if self.file is not None else self._open()
        file.write(data)
        self.hash.update(data)

    def finish(self) -> None:
        file = self.file if self.file is not None else self._open()
        file.close()
        self.finished = True

    def stored_path(self) -> Path:
        if self.path is None or not self.finished:
            raise RuntimeError("file part read before its temp file was finished")
        return self.path

    def discard(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


# A write (data) or the end of a file part (None), queued on the event loop and applied in a thread.
_Op = tuple[_FileSink, memoryview | None]


_FLUSH_BYTES = 1 << 20


def _apply(ops: Iterable[_Op]) -> None:
    for sink, data in ops:
        if data is None:
            sink.finish()
        else:
            sink.write(data)


class _Writer:
    """Applies batches of writes in a worker thread while the event loop reads the next batch.

    At most one batch is being written and one waits (about 2 MiB). A failed write is kept, not
    raised in the writer's task (a task group would wrap it), and re-raised by the reading side.
    """

    def __init__(self) -> None:
        self.send, self._receive = anyio.create_memory_object_stream[list[_Op]](1)
        self.error: Exception | None = None

    async def run(self) -> None:
        async with self._receive:
            async for ops in self._receive:
                if self.error is not None:
                    continue  # drain without writing, so the reading side never blocks
                try:
                    await anyio.to_thread.run_sync(_apply, ops)
                except Exception as exc:
                    self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise self.error


async def _read_and_write(request: Request, reader: _Reader) -> None:
    """Feed the body to `reader`; its file writes overlap the reading of the next ~1 MiB."""
    writer = _Writer()
    failure: BaseException | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(writer.run)
        try:
            async with writer.send, contextlib.aclosing(request.stream()) as stream:
                pending = 0
                async for chunk in stream:
                    reader.feed(chunk)
                    pending += len(chunk)
                    # One worker-thread call per ~1 MiB, not per network chunk: far fewer thread hops.
                    if reader.ops and (pending >= _FLUSH_BYTES or reader.ended):
                        ops, reader.ops, pending = reader.ops, [], 0
                        writer.check()
                        await writer.send.send(ops)
                    if reader.ended:
                        break
                if reader.ops:
                    ops, reader.ops = reader.ops, []
                    await writer.send.send(ops)
        except BaseException as exc:  # raised after the group, which would wrap it in a group
            failure = exc
            group.cancel_scope.cancel()
    if failure is not None:
        raise failure
    writer.check()  # every batch is written once the group has ended


def _discard(sinks: Iterable[_FileSink]) -> None:
    for sink in sinks:
        sink.discard()


@dataclass
class _Part:
    name: str
    filename: str | None
    sink: _FileSink | None  # None for a field, whose bytes stay in `value`
    value: bytearray
    size: int = 0


def _boundary(content_type: str | None) -> bytes:
    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        shown = media_type.decode("latin-1") or "missing"
        raise MultipartError(
            415,
            f"Content-Type must be multipart/form-data (got {shown}); send the upload as a form.",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise MultipartError(
            400,
            "The multipart/form-data Content-Type has no boundary; let the client build the header.",
        )
    return boundary


class _Reader:
    """Parser callbacks: they check limits and queue file writes, doing no I/O themselves."""

    def __init__(
        self, boundary: bytes, dest_dir: Path, limits: MultipartLimits, file_fields: frozenset[str]
    ) -> None:
        self.dest_dir = dest_dir
        self.limits = limits
        self.file_fields = file_fields
        self.ops: list[_Op] = []
        self.sinks: list[_FileSink] = []
        self.fields: dict[str, str] = {}
        self.file_parts: list[_Part] = []
        self.order: list[str] = []
        self.names: set[str] = set()
        self.part_count = 0
        self.total_file_bytes = 0
        self.ended = False
        self.part: _Part | None = None
        self.headers: dict[bytes, bytes] = {}
        self.header_field = bytearray()
        self.header_value = bytearray()
        try:
            self.parser = MultipartParser(
                boundary,
                callbacks={
                    "on_part_begin": self.on_part_begin,
                    "on_part_data": self.on_part_data,
                    "on_part_end": self.on_part_end,
                    "on_header_field": self.on_header_field,
                    "on_header_value": self.on_header_value,
                    "on_header_end": self.on_header_end,
                    "on_headers_finished": self.on_headers_finished,
                    "on_end": self.on_end,
                },
            )
        except FormParserError as exc:
            raise MultipartError(400, f"The multipart boundary is unusable ({exc}).") from exc

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as exc:
            raise MultipartError(
                400, f"The multipart body is malformed ({exc}); send a well-formed form."
            ) from exc

    def on_part_begin(self) -> None:
        self.part_count += 1
        if self.part_count > self.limits.max_parts:
            raise MultipartError(
                413, f"The form has more than {self.limits.max_parts} parts; send fewer parts."
            )
        self.part = None
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[bytes(self.header_field).lower()] = bytes(self.header_value).strip(b" \t")
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        number = self.part_count
        disposition, options = parse_options_header(self.headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise MultipartError(
                400, f"Part {number} needs a 'Content-Disposition: form-data; name=...' header."
            )
        encoding = self.headers.get(b"content-transfer-encoding", b"binary").lower()
        if encoding not in _IDENTITY_ENCODINGS:
            raise MultipartError(
                400, f"Part {number} uses Content-Transfer-Encoding {encoding!r}; send raw bytes."
            )
        try:
            name = options[b"name"].decode()
            raw_filename = options.get(b"filename")
            filename = None if raw_filename is None else raw_filename.decode()
        except UnicodeDecodeError:
            raise MultipartError(
                400, f"Part {number} has a name or filename that is not UTF-8; encode it as UTF-8."
            ) from None
        if name in self.names:
            raise MultipartError(400, f"Part {name!r} appears twice; send each name once.")
        self.names.add(name)
        self.order.append(name)
        sink = None
        if filename is not None or name in self.file_fields:
            if len(self.file_parts) >= self.limits.max_files:
                raise MultipartError(
                    413, f"The form has more than {self.limits.max_files} files; send fewer files."
                )
            sink = _FileSink(self.dest_dir)
            self.sinks.append(sink)
        self.part = _Part(name=name, filename=filename, sink=sink, value=bytearray())
        if sink is not None:
            self.file_parts.append(self.part)

    def _current(self) -> _Part:
        if self.part is None:  # the parser emits data and part ends only after a part's headers
            raise MultipartError(400, "The multipart body is malformed; send a well-formed form.")
        return self.part

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current()
        part.size += end - start
        if part.sink is None:
            if part.size > self.limits.max_field_bytes:
                raise MultipartError(
                    413,
                    f"Field {part.name!r} exceeds {self.limits.max_field_bytes} bytes; send it as a file.",
                )
            part.value += memoryview(data)[start:end]
            return
        self.total_file_bytes += end - start
        if part.size > self.limits.max_file_bytes:
            raise MultipartError(
                413,
                f"File {part.name!r} exceeds {self.limits.max_file_bytes} bytes; send a smaller file.",
            )
        if self.total_file_bytes > self.limits.max_total_file_bytes:
            raise MultipartError(
                413,
                f"The files exceed {self.limits.max_total_file_bytes} bytes in total; send less data.",
            )
        # A view, not a copy: the chunk (or the parser's look-behind bytes) is immutable.
        self.ops.append((part.sink, memoryview(data)[start:end]))

    def on_part_end(self) -> None:
        part = self._current()
        if part.sink is not None:
            self.ops.append((part.sink, None))
            return
        try:
            self.fields[part.name] = part.value.decode()
        except UnicodeDecodeError:
            raise MultipartError(
                400,
                f"Field {part.name!r} is not valid UTF-8; encode it as UTF-8 or send it as a file.",
            ) from None

    def on_end(self) -> None:
        self.ended = True

    def form(self) -> FormData:
        files: dict[str, FilePart] = {}
        for part in self.file_parts:
            sink = part.sink
            if sink is None:  # pragma: no cover -- file_parts holds only parts with a sink
                continue
            files[part.name] = FilePart(
                name=part.name,
                filename=part.filename,
                path=sink.stored_path(),
                size=part.size,
                sha256=sink.hash.digest(),
            )
        return FormData(fields=self.fields, files=files, order=tuple(self.order))


async def read_multipart(
    request: Request,
    dest_dir: Path,
    limits: MultipartLimits,
    *,
    file_fields: Collection[str] | None = None,
) -> FormData:
    """Stream a multipart/form-data body into temp files under `dest_dir`, hashing as bytes arrive.

    A part is a file if its Content-Disposition has a filename or its name is in `file_fields`;
    other parts are UTF-8 fields kept in memory. Memory stays about 2 MiB whatever the file sizes:
    writes and hash updates run in a worker thread, ~1 MiB per call, while the next MiB is read. Raises
    `MultipartError` (400/413/415) as soon as a problem is seen, without reading the rest; on any
    failure, cancellation included, every temp file is deleted first. On success the caller owns the
    files and must delete (`FormData.cleanup`) or move them.
    """
    boundary = _boundary(request.headers.get("content-type"))
    reader = _Reader(boundary, dest_dir, limits, frozenset(file_fields or ()))
    try:
        try:
            await _read_and_write(request, reader)
        except ClientDisconnect:
            raise MultipartError(
                400, "The client disconnected before the form was complete; retry the upload."
            ) from None
        if not reader.ended:
            raise MultipartError(
                400, "The body ended before the closing multipart boundary; resend the whole form."
            )
    except BaseException:
        reader.ops.clear()
        # Shielded so that a cancelled request still removes its files before the cancellation goes on.
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_discard, reader.sinks)
        except BaseException:
            # A repeated native asyncio cancel can break through the shield: finish here, blocking.
            _discard(reader.sinks)
            raise
        raise
    return reader.form()
