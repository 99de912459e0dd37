"""The multipart parser's callbacks: part headers, limits, fields in memory and file writes queued for the writer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from gateway._io import Digest
from gateway.multipart.model import FilePart, Follow, FormData, MultipartError, MultipartLimits
from gateway.multipart.sinks import FileSink, Op

Watch = Callable[[str], Digest | None]
"""Given a file part's name, something to feed its bytes to as they arrive (or None)."""

# RFC 7578 section 4.7 deprecates Content-Transfer-Encoding; these are the identity encodings.
_IDENTITY_ENCODINGS = frozenset({b"7bit", b"8bit", b"binary"})


@dataclass
class _Part:
    name: str
    filename: str | None
    sink: FileSink | None  # None for a field, whose bytes stay in `value`
    value: bytearray
    size: int = 0


def parse_boundary(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type; 415 for another type, 400 without one."""
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


class BodyParser:
    """Parser callbacks: they check limits and queue file writes, doing no I/O themselves."""

    def __init__(
        self,
        boundary: bytes,
        dest_dir: Path,
        limits: MultipartLimits,
        file_fields: frozenset[str],
        watch: Watch | None = None,
        follow: Follow | None = None,
    ) -> None:
        self.watch = watch
        self.follow = follow
        self.dest_dir = dest_dir
        self.limits = limits
        self.file_fields = file_fields
        self.ops: list[Op] = []
        self.sinks: list[FileSink] = []
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
        self.fed = 0
        """Bytes of the body fed before the current chunk."""
        self.chunk = b""
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
        """Parse `chunk`; file bytes are queued on `ops`, and `ended` is set at the closing boundary."""
        self.chunk = chunk
        try:
            self.parser.write(chunk)
            self.fed += len(chunk)
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
            sink = FileSink(
                self.dest_dir,
                self.watch(name) if self.watch else None,
                self.follow(name, self.headers) if self.follow else None,
            )
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
        if part.size == end - start and part.sink.follower is not None:
            # Its first bytes: where they start in the body, when they come from the chunk itself
            # (not from the parser's look-behind buffer).
            part.sink.follower.begin(self.fed + start if data is self.chunk else None)
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
        """The parsed form, once every queued write has been applied."""
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
