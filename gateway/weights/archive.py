"""A ZIP (NPZ) reader that checks the central directory before it decompresses anything."""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

from gateway.weights.errors import WeightsError
from gateway.weights.npy import ArrayHeader, read_exact, read_header
from gateway.weights.policy import Limits

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"
_EOCD64 = b"PK\x06\x06"
_EOCD_SIZE = 22
_MAX_COMMENT = 0xFFFF
_LOCAL_HEADER_SIZE = 30
_CHUNK = 1 << 20
# Everything the zip library can raise for a damaged archive; each means "not a valid archive".
_ZIP_FAILURES = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    ValueError,
    struct.error,
    OverflowError,
    NotImplementedError,
    UnicodeDecodeError,
    KeyError,
    IndexError,
)


@dataclass(frozen=True)
class Member:
    """One `<key>.npy` member and its checked `.npy` header."""

    key: str
    info: zipfile.ZipInfo
    header: ArrayHeader

    @property
    def offset(self) -> int:
        """Offset of the member's local header in the archive."""
        return self.info.header_offset


def is_zip(prefix: bytes) -> bool:
    """Whether bytes start like a ZIP archive (the check `numpy.load` makes)."""
    return prefix.startswith(ZIP_MAGIC)


class Archive:
    """An open NPZ archive whose structure passed the limits; members are read on demand."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = path
        self.limits = limits
        self._file: IO[bytes] = path.open("rb")
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            _precheck_directory(self._file, self.size, limits)
            try:
                self._zip = zipfile.ZipFile(self._file)
            except _ZIP_FAILURES as exc:
                raise WeightsError(
                    "invalid-archive", f"The file is not a readable ZIP/NPZ archive ({exc})."
                ) from None
            self.members = self._check_members()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        """The archive's file descriptor, for positioned reads (`os.pread`) of stored members."""
        return self._file.fileno()

    def close(self) -> None:
        """Release the file."""
        self._zip.close()
        self._file.close()

    def _check_members(self) -> list[Member]:
        infos = self._zip.infolist()
        limits = self.limits
        if len(infos) > limits.max_members:
            raise WeightsError(
                "too-many-members",
                f"The archive has {len(infos)} members; at most {limits.max_members} are accepted.",
            )
        seen: set[str] = set()
        total = compressed = 0
        for info in infos:
            _check_member_entry(info, seen, limits)
            total += info.file_size
            compressed += info.compress_size
        if total > limits.max_total_uncompressed_bytes:
            raise WeightsError(
                "zip-bomb",
                f"The archive unpacks to {total} bytes; at most "
                f"{limits.max_total_uncompressed_bytes} bytes are accepted.",
            )
        if total > limits.ratio_floor_bytes and total > limits.max_compression_ratio * max(
            compressed, 1
        ):
            raise WeightsError(
                "zip-bomb",
                f"The archive unpacks to {total / max(compressed, 1):.0f} times its packed size; "
                f"at most {limits.max_compression_ratio:g} is accepted.",
            )
        _check_no_overlap(self._file, infos, self._zip.start_dir)
        return [Member(info.filename[:-4], info, self._read_member_header(info)) for info in infos]

    def _read_member_header(self, info: zipfile.ZipInfo) -> ArrayHeader:
        what = f"Member {info.filename!r}"
        try:
            with self._zip.open(info) as stream:
                header = read_header(stream.read, self.limits.max_header_bytes, what)
        except _ZIP_FAILURES as exc:
            raise _unreadable(what, exc) from None
        data_size = info.file_size - header.header_size
        if data_size != header.data_size:
            raise WeightsError(
                "shape-mismatch",
                f"{what} declares {header.dtype.str} shape {header.shape} ({header.data_size} bytes) "
                f"but holds {max(data_size, 0)} bytes of data.",
            )
        return header

    def iter_data(self, member: Member, chunk_size: int = _CHUNK) -> Iterator[bytes]:
        """Yield the member's array data in chunks; the zip library checks size and CRC at the end."""
        what = f"Member {member.info.filename!r}"
        try:
            with self._zip.open(member.info) as stream:
                read_exact(stream.read, member.header.header_size, what)
                left = member.header.data_size
                while left > 0:
                    chunk = stream.read(min(chunk_size, left))
                    if not chunk:
                        raise WeightsError(
                            "truncated", f"{what} ends early: the archive is truncated."
                        )
                    left -= len(chunk)
                    yield chunk
                if stream.read(1):
                    raise WeightsError(
                        "shape-mismatch", f"{what} holds more data than its header declares."
                    )
        except _ZIP_FAILURES as exc:
            raise _unreadable(what, exc) from None

    def read_data(self, member: Member) -> bytes:
        """The member's whole array data (one layer in memory)."""
        return b"".join(self.iter_data(member))


def _unreadable(what: str, exc: Exception) -> WeightsError:
    if isinstance(exc, zipfile.BadZipFile) and "CRC" in str(exc):
        return WeightsError(
            "crc-mismatch", f"{what} fails its CRC-32 check: the archive is corrupt."
        )
    return WeightsError("invalid-archive", f"{what} cannot be read ({exc}).")


def _check_member_entry(info: zipfile.ZipInfo, seen: set[str], limits: Limits) -> None:
    name = info.filename
    if "\x00" in info.orig_filename:
        raise WeightsError(
            "bad-member-name",
            f"Archive member {info.orig_filename[:100]!r} has a NUL byte in its name.",
        )
    if name in seen:
        raise WeightsError(
            "duplicate-member", f"The archive holds {name!r} twice; each key may appear once."
        )
    seen.add(name)
    key = name[:-4]
    if (
        not name.endswith(".npy")
        or not key
        or any(ch in key for ch in "/\\")
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key)
    ):
        raise WeightsError(
            "bad-member-name",
            f"Archive member {name[:100]!r} is not named '<key>.npy'; "
            "an NPZ holds only .npy members with plain key names.",
        )
    if info.flag_bits & 0x1 or info.flag_bits & 0x40:
        raise WeightsError(
            "encrypted-member", f"Archive member {name!r} is encrypted; send it unencrypted."
        )
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise WeightsError(
            "unsupported-compression",
            f"Archive member {name!r} uses compression method {info.compress_type}; "
            "only stored and deflate (what numpy writes) are accepted.",
        )
    if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
        raise WeightsError(
            "invalid-archive", f"Stored member {name!r} has different packed and unpacked sizes."
        )
    if (
        info.file_size > limits.ratio_floor_bytes
        and info.file_size > limits.max_compression_ratio * max(info.compress_size, 1)
    ):
        raise WeightsError(
            "zip-bomb",
            f"Archive member {name!r} unpacks to "
            f"{info.file_size / max(info.compress_size, 1):.0f} times its packed size; "
            f"at most {limits.max_compression_ratio:g} is accepted.",
        )


def _check_no_overlap(file: IO[bytes], infos: list[zipfile.ZipInfo], directory_offset: int) -> None:
    """Members must not share bytes (the trick behind non-recursive zip bombs).

    Each span runs from the member's local header to the end of its data, with the name and extra
    field lengths taken from the local header itself (they may differ from the central directory).
    """
    spans = []
    for info in infos:
        if not 0 <= info.header_offset <= directory_offset:
            raise WeightsError(
                "invalid-archive",
                f"Archive member {info.filename!r} points outside the archive.",
            )
        file.seek(info.header_offset)
        local = file.read(_LOCAL_HEADER_SIZE)
        if len(local) != _LOCAL_HEADER_SIZE or local[:4] != ZIP_MAGIC[0]:
            raise WeightsError(
                "invalid-archive",
                f"Archive member {info.filename!r} has no local header where the directory says.",
            )
        name_length, extra_length = struct.unpack("<HH", local[26:30])
        start = info.header_offset
        spans.append(
            (start, start + _LOCAL_HEADER_SIZE + name_length + extra_length + info.compress_size)
        )
    spans.sort()
    previous_end = 0
    for start, end in spans:
        if start < previous_end:
            raise WeightsError(
                "overlapping-members",
                "Archive members overlap each other; this is how zip bombs are built.",
            )
        previous_end = end
    if previous_end > directory_offset:
        raise WeightsError(
            "overlapping-members", "An archive member runs into the central directory."
        )


def _precheck_directory(file: IO[bytes], size: int, limits: Limits) -> None:
    """Read the end-of-directory records and refuse absurd entry counts before any parsing."""
    tail_size = min(size, _EOCD_SIZE + _MAX_COMMENT)
    file.seek(size - tail_size)
    tail = file.read(tail_size)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < _EOCD_SIZE:
        raise WeightsError(
            "invalid-archive",
            "The file starts like a ZIP archive but has no end-of-directory record: "
            "it is truncated or not a ZIP file.",
        )
    entries, directory_size, directory_offset = struct.unpack("<10xHII", tail[at : at + 20])
    eocd_pos = size - tail_size + at
    if entries == 0xFFFF or directory_size == 0xFFFFFFFF or directory_offset == 0xFFFFFFFF:
        locator_pos = eocd_pos - 20
        if locator_pos >= 0:
            file.seek(locator_pos)
            locator = file.read(20)
            if len(locator) == 20 and locator[:4] == _EOCD64_LOCATOR:
                (record_pos,) = struct.unpack("<8xQ4x", locator)
                if record_pos + 56 <= size:
                    file.seek(record_pos)
                    record = file.read(56)
                    if record[:4] == _EOCD64:
                        entries, directory_size = struct.unpack("<32xQQ8x", record)
    if entries > limits.max_members:
        raise WeightsError(
            "too-many-members",
            f"The archive declares {entries} members; at most {limits.max_members} are accepted.",
        )
    if directory_size > size:
        raise WeightsError(
            "invalid-archive", "The archive's central directory is larger than the file itself."
        )
    file.seek(0)
