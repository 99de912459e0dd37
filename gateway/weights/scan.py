"""NaN and Inf in an NPZ found while its bytes arrive, beside the digest; read back only what was not seen."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.weights.archive import Archive
from gateway.weights.errors import WeightsError
from gateway.weights.model import Payload
from gateway.weights.npy import MAGIC, ArrayHeader, read_header
from gateway.weights.policy import Limits
from gateway.weights.values import ValueCheck

_LOCAL = b"PK\x03\x04"
_LOCAL_SIZE = 30
_ZIP64_EXTRA = 0x0001
_INFLATE_STEP = 1 << 20
"""Most bytes one decompress call may produce: memory stays about 1 MiB for any member."""
_STORED, _DEFLATED = 0, 8


@dataclass
class MemberScan:
    """What the stream scan saw of one ZIP member: where it was, and its verdict if it read it all."""

    offset: int
    name: str
    method: int
    compress_size: int
    values: ValueCheck | None = None
    complete: bool = False
    """The whole array was seen (a `values` of None then means: no float data to check)."""


class _Npy:
    """A member's uncompressed bytes: the `.npy` header, then the data into a `ValueCheck`."""

    def __init__(self, member: MemberScan, limits: Limits) -> None:
        self.member = member
        self.limits = limits
        self.head = bytearray()
        self.header: ArrayHeader | None = None
        self.left = 0
        self.failed = False

    def feed(self, data: bytes | memoryview) -> None:
        if self.failed or self.member.complete:
            return
        view = memoryview(data)
        if self.header is None:
            view = self._gather_header(view)
            if self.header is None:
                return
        member = self.member
        take = view[: self.left]
        self.left -= len(take)
        if member.values is not None:
            member.values.feed(take)
        if self.left == 0:
            member.complete = True  # the data size is a whole number of elements
            if member.values is not None:
                member.values.flush()

    def _gather_header(self, view: memoryview) -> memoryview:
        head = self.head
        wanted = len(MAGIC) + 4
        if len(head) < wanted:
            taken = wanted - len(head)
            head += view[:taken]
            view = view[taken:]
            if len(head) < wanted:
                return view
            if not head.startswith(MAGIC) or head[6] not in (1, 2, 3):
                self.failed = True
                return view
        length_size = 2 if head[6] == 1 else 4
        length = int.from_bytes(head[8 : 8 + length_size], "little")
        if length > self.limits.max_header_bytes:
            self.failed = True
            return view
        total = len(MAGIC) + 2 + length_size + length
        taken = total - len(head)
        head += view[:taken]
        view = view[taken:]
        if len(head) < total:
            return view
        try:
            header = read_header(io.BytesIO(bytes(head)).read, self.limits.max_header_bytes, "")
        except WeightsError:
            self.failed = True  # the archive check names the problem
            return view
        self.header, self.left = header, header.data_size
        key = self.member.name[:-4]
        if ValueCheck.wanted(header.dtype):
            self.member.values = ValueCheck(key, header.dtype, header.shape)
        if self.left == 0:
            self.member.complete = True
        return view


class _Inflate:
    """A deflated member's bytes, decompressed in bounded steps into its `_Npy`."""

    def __init__(self, npy: _Npy, declared: int) -> None:
        self.npy = npy
        self.left = declared
        self.inflater = zlib.decompressobj(-15)
        self.failed = False

    def feed(self, data: bytes | memoryview) -> None:
        pending: bytes | memoryview = data
        while pending and not self.failed and not self.inflater.eof and self.left > 0:
            try:
                out = self.inflater.decompress(pending, min(_INFLATE_STEP, self.left))
            except zlib.error:
                self.failed = True  # the archive check reports the corrupt member
                return
            self.left -= len(out)
            self.npy.feed(out)
            pending = self.inflater.unconsumed_tail


class StreamScan:
    """Fed an upload's bytes in order (beside its digest), checks the float arrays of an NPZ as
    they arrive: stored members directly, deflated ones decompressed in 1 MiB steps.

    It follows the local headers from the first byte; a layout it cannot follow (a data
    descriptor, encryption, another compression) ends the scan, and `check_archive` reads back
    the members it did not see whole. Decompression is bounded by the declared sizes and the
    compression-ratio limit, so a zip bomb costs no more here than the archive check allows.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.members: dict[int, MemberScan] = {}
        self.offset = 0
        """Bytes consumed."""
        self.stopped = False
        self._buffer = bytearray()
        self._need = _LOCAL_SIZE
        self._then: Callable[[bytes], None] = self._local_header
        self._sink: Callable[[memoryview], None] | None = None
        self._sink_left = 0
        self._pending: MemberScan | None = None
        self._declared = 0
        self._unpacked = 0

    def update(self, data: bytes | memoryview, /) -> None:
        """Scan the next bytes (the `Digest` protocol of the receive loop)."""
        view = memoryview(data)
        while view and not self.stopped:
            if self._sink_left:
                take = view[: self._sink_left]
                self._sink_left -= len(take)
                self.offset += len(take)
                view = view[len(take) :]
                if self._sink is not None:
                    self._sink(take)
                if not self._sink_left:
                    self._member_done()
                continue
            taken = view[: self._need - len(self._buffer)]
            self._buffer += taken
            self.offset += len(taken)
            view = view[len(taken) :]
            if len(self._buffer) == self._need:
                gathered = bytes(self._buffer)
                self._buffer.clear()
                self._then(gathered)

    def _local_header(self, record: bytes) -> None:
        signature = record[:4]
        if signature != _LOCAL:
            self.stopped = True  # the central directory (done) or a layout not followed
            return
        flags, method = struct.unpack("<HH", record[6:10])
        compress_size, file_size, name_length, extra_length = struct.unpack("<IIHH", record[18:30])
        if flags & 0x49 or method not in (_STORED, _DEFLATED):
            self.stopped = True  # encrypted, data descriptor, or another compression
            return
        start = self.offset - _LOCAL_SIZE

        def names(rest: bytes) -> None:
            self._member(start, flags, method, compress_size, file_size, name_length, rest)

        self._need, self._then = name_length + extra_length, names
        if self._need == 0:
            self.stopped = True

    def _member(
        self,
        start: int,
        flags: int,
        method: int,
        compress_size: int,
        file_size: int,
        name_length: int,
        rest: bytes,
    ) -> None:
        name = rest[:name_length].decode("utf-8" if flags & 0x800 else "cp437", "replace")
        sizes = _zip64_sizes(rest[name_length:], file_size, compress_size)
        if sizes is None:
            self.stopped = True
            return
        file_size, compress_size = sizes
        member = MemberScan(start, name, method, compress_size)
        self.members[start] = member
        self._unpacked += file_size
        limits = self.limits
        bomb = (
            file_size > limits.ratio_floor_bytes
            and file_size > limits.max_compression_ratio * max(compress_size, 1)
        ) or self._unpacked > limits.max_total_uncompressed_bytes
        npy = _Npy(member, limits)
        if bomb or not name.endswith(".npy"):
            self._sink = None  # skipped: the archive check refuses it or reads it back
        elif method == _STORED:
            self._sink = npy.feed
        else:
            self._sink = _Inflate(npy, file_size).feed
        self._sink_left = compress_size
        self._need, self._then = _LOCAL_SIZE, self._local_header
        if compress_size == 0:
            self._member_done()

    def _member_done(self) -> None:
        self._sink = None


def _zip64_sizes(extra: bytes, file_size: int, compress_size: int) -> tuple[int, int] | None:
    """The member's (uncompressed, compressed) sizes, from its ZIP64 extra field when the local
    header says so; None when that field is missing or short."""
    if file_size != 0xFFFFFFFF and compress_size != 0xFFFFFFFF:
        return file_size, compress_size
    at = 0
    while at + 4 <= len(extra):
        kind, size = struct.unpack("<HH", extra[at : at + 4])
        body = extra[at + 4 : at + 4 + size]
        if kind == _ZIP64_EXTRA:
            values = list(struct.unpack(f"<{len(body) // 8}Q", body[: len(body) // 8 * 8]))
            if file_size == 0xFFFFFFFF:
                if not values:
                    return None
                file_size = values.pop(0)
            if compress_size == 0xFFFFFFFF:
                if not values:
                    return None
                compress_size = values.pop(0)
            return file_size, compress_size
        at += 4 + size
    return None


def check_payload(
    path: Path, payload: Payload, limits: Limits, scan: StreamScan | None = None
) -> None:
    """Refuse an NPZ whose float arrays hold NaN or Inf, in payload order: the stream scan's verdict
    for each member it saw whole (at the offset, with the name, method and size the directory
    gives), reading back only the others."""
    wanted = [info for info in payload.arrays if ValueCheck.wanted(np.dtype(info.dtype))]
    if not wanted:
        return
    seen = scan.members if scan is not None else {}
    with Archive(path, limits) as archive:
        members = {member.key: member for member in archive.members}
        for info in wanted:
            member = members[info.key]
            scanned = seen.get(member.offset)
            if (
                scanned is not None
                and scanned.complete
                and scanned.name == member.info.filename
                and scanned.method == member.info.compress_type
                and scanned.compress_size == member.info.compress_size
            ):
                if scanned.values is not None:
                    scanned.values.raise_if_bad()
                continue
            values = ValueCheck(info.key, member.header.dtype, member.header.shape)
            for chunk in archive.iter_data(member):
                values.feed(chunk)
                values.raise_if_bad()
            values.raise_if_bad(final=True)
