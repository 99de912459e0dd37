"""A member's array data read straight into caller buffers, its CRC-32 checked at the end.

Stored members (what `numpy.savez` and the SDK write) are read with `os.preadv` at their offset:
no copy, no shared file position, so one thread per input can read while another computes (the
read releases the GIL). The CRC-32 is ISA-L's (`isal`, the same checksum as `zlib.crc32`, about
four times faster with carry-less multiplication); the kernel is asked to fetch the next 16 MiB
ahead of each read. Deflated members, and every member where `os.preadv` is missing (Windows),
go through the zip library's stream.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterator

from isal.isal_zlib import crc32

from gateway.weights.archive import Archive, Member
from gateway.weights.errors import WeightsError

_LOCAL_HEADER = struct.Struct("<4s22xHH")
_POSITIONED = hasattr(os, "preadv")  # not on Windows: there every member goes through zipfile
_ADVISE = hasattr(os, "posix_fadvise")
_READ_AHEAD = 16 << 20
"""Bytes past the read position the kernel is asked to fetch (`POSIX_FADV_WILLNEED`)."""


class MemberData:
    """Sequential, exact-size reads of one member's array data (after its `.npy` header)."""

    def __init__(self, archive: Archive, member: Member) -> None:
        self._what = f"Member {member.info.filename!r}"
        self._info = member.info
        self._left = member.header.data_size
        self._chunks: Iterator[bytes] | None = None
        self._pending = memoryview(b"")
        if member.info.compress_type != zipfile.ZIP_STORED or not _POSITIONED:
            self._chunks = archive.iter_data(member)
            return
        self._fd = archive.fileno()
        start = self._data_start(member.info)
        header = os.pread(self._fd, member.header.header_size, start)
        if len(header) != member.header.header_size:
            raise WeightsError("truncated", f"{self._what} ends early: the archive is truncated.")
        self._crc = crc32(header)
        self._offset = self._advised = start + member.header.header_size
        self._end = self._offset + self._left

    def _data_start(self, info: zipfile.ZipInfo) -> int:
        """Where the member's bytes start: after its local header, whose name must match."""
        local = os.pread(self._fd, _LOCAL_HEADER.size, info.header_offset)
        if len(local) != _LOCAL_HEADER.size:
            raise WeightsError("truncated", f"{self._what} ends early: the archive is truncated.")
        magic, name_length, extra_length = _LOCAL_HEADER.unpack(local)
        name_at = info.header_offset + _LOCAL_HEADER.size
        name = os.pread(self._fd, name_length, name_at)
        encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
        if magic != b"PK\x03\x04" or name != info.orig_filename.encode(encoding, "replace"):
            raise WeightsError(
                "invalid-archive",
                f"{self._what} cannot be read: its local header does not match the directory.",
            )
        return int(name_at + name_length + extra_length)

    def readinto(self, buffer: memoryview) -> None:
        """Fill `buffer` with the next `len(buffer)` bytes of data."""
        size = buffer.nbytes
        if size > self._left:
            raise WeightsError("truncated", f"{self._what} ends before the layer does.")
        if self._chunks is not None:
            self._copy_chunks(self._chunks, buffer)
        else:
            done = 0
            while done < size:
                n = os.preadv(self._fd, [buffer[done:]], self._offset + done)
                if n <= 0:
                    raise WeightsError(
                        "truncated", f"{self._what} ends early: the archive is truncated."
                    )
                done += n
            self._crc = crc32(buffer, self._crc)
            self._offset += size
            self._read_ahead()
        self._left -= size

    def _read_ahead(self) -> None:
        """Have the disk fetch the next chunks while this one is averaged (no-op when cached)."""
        begin = max(self._advised, self._offset)
        target = min(self._end, self._offset + _READ_AHEAD)
        if _ADVISE and target > begin:
            os.posix_fadvise(self._fd, begin, target - begin, os.POSIX_FADV_WILLNEED)
            self._advised = target

    def _copy_chunks(self, chunks: Iterator[bytes], buffer: memoryview) -> None:
        done = 0
        size = buffer.nbytes
        while done < size:
            if not self._pending:
                self._pending = memoryview(next(chunks, b""))
                if not self._pending:
                    raise WeightsError("truncated", f"{self._what} ends before the layer does.")
            take = min(size - done, self._pending.nbytes)
            buffer[done : done + take] = self._pending[:take]
            self._pending = self._pending[take:]
            done += take

    def finish(self) -> None:
        """Check that all the data was read and that the member's CRC-32 matches."""
        if self._left:
            raise WeightsError("truncated", f"{self._what} was not read to its end.")
        if self._chunks is not None:
            for _ in self._chunks:  # the zip library checks size and CRC at the end
                pass
        elif self._crc != self._info.CRC:
            raise WeightsError(
                "crc-mismatch", f"{self._what} fails its CRC-32 check: the archive is corrupt."
            )
