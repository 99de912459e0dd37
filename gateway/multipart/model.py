"""What a multipart read gives back: the parsed form, its file parts, its limits and its one error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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


class Follower(Protocol):
    """Something that reads a file part while it arrives (to send it on before it is complete)."""

    @property
    def path(self) -> Path:
        """Where the part is to be stored (a fresh path; the sink creates the file)."""

    def begin(self, offset: int | None) -> None:
        """The part's first data byte is at `offset` in the body (None: not known); on the event
        loop, inside the parser."""

    def store(self, size: int) -> None:
        """The part's file holds its first `size` bytes, flushed; from the writer's thread."""


Follow = Callable[[str, Mapping[bytes, bytes]], Follower | None]
"""Given a file part's name and headers (lower-case names), a `Follower` for it, or None."""
