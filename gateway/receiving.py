"""An upload's body to scratch files: multipart parts or the raw body, hashed as written, size
capped, and checked against the digest the trainer sent with it (RFC 9530)."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from gateway._io import FLUSH_BYTES, Spool, Tee
from gateway.digests import ClaimedDigest, DigestFieldError, claimed_digest, content_digest
from gateway.errors import (
    BadRequestError,
    DigestMismatchError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from gateway.multipart import FormData, MultipartError, MultipartLimits, read_multipart
from gateway.multipart.model import Follower
from gateway.weights import StreamScan

FollowFile = Callable[[Mapping[bytes, bytes], ClaimedDigest], Follower | None]
"""Given the upload file's part headers (none for a raw body) and the digest claimed for it (the
part's own, else the request's), a `Follower` that reads the file as it is written, or None."""
LAYER_PART = re.compile(r"layer_(0|[1-9][0-9]*)", re.ASCII)
MAX_PARTS = 10_050
"""Multipart parts one upload may have: up to 10 000 `layer_<n>` parts, and a few fields."""
RAW_TYPES = ("application/octet-stream", "application/zip", "application/x-npy")
_IDENTITY = ("", "identity")


@dataclass(frozen=True)
class ReceivedFile:
    """A whole weights file as it arrived."""

    path: Path
    sha256: bytes
    filename: str
    size: int
    scan: StreamScan | None = None
    """What the NaN/Inf scan saw while the file arrived (None when the check is off)."""


@dataclass(frozen=True)
class Received:
    """What an upload request carried: one file, or per-layer `.npy` parts, and a weighting field."""

    file: ReceivedFile | None = None
    layers: tuple[Path, ...] = ()
    weighting: str | None = None


@dataclass
class Scratch:
    """Temp files of one upload; all removed at the end, whatever happens."""

    folder: Path
    paths: list[Path] = field(default_factory=list)
    form: FormData | None = None

    def new(self, suffix: str) -> Path:
        """A fresh scratch path (removed by `cleanup`)."""
        path = self.folder / f".upload-{secrets.token_hex(8)}{suffix}"
        self.paths.append(path)
        return path

    def cleanup(self) -> None:
        """Remove every file of this upload."""
        if self.form is not None:
            self.form.cleanup()
        for path in self.paths:
            path.unlink(missing_ok=True)


def npz_name(filename: str) -> str:
    """The upstream file name for a trainer's file name: its stem, as `.npz`."""
    stem = Path(filename).name.rsplit(".", 1)[0] or "weights"
    return f"{stem}.npz"


def request_claim(headers: Headers) -> ClaimedDigest | None:
    """The sha-256 the request's `Content-Digest` / `Repr-Digest` claim (400 if they do not parse);
    415 for a content coding, which the gateway does not decode."""
    coding = headers.get("content-encoding", "").strip().lower()
    if coding not in _IDENTITY:
        raise UnsupportedMediaTypeError(
            f"The gateway does not decode Content-Encoding {coding!r}: send the file as it is, "
            "without a content coding."
        )
    try:
        return claimed_digest(headers.items())
    except DigestFieldError as exc:
        raise BadRequestError(str(exc)) from None


def part_claim(headers: Mapping[bytes, bytes]) -> ClaimedDigest | None:
    """The sha-256 a file part's own `Content-Digest` / `Repr-Digest` headers claim."""
    pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers.items()]
    try:
        claim = claimed_digest(pairs)
    except DigestFieldError as exc:
        raise MultipartError(400, f"The file part's {exc}") from None
    return None if claim is None else ClaimedDigest(claim.sha256, f"the file part's {claim.field}")


async def receive(
    request: Request,
    scratch: Scratch,
    limit: int,
    scan: StreamScan | None = None,
    follow: FollowFile | None = None,
) -> Received:
    """The uploaded file (or the layer parts) on disk, and a weighting field if one was sent; `scan`
    is fed the whole file's bytes beside its digest, `follow` may follow the file as it is written
    (the raw body is the part named `file`, with the request's headers). A digest the trainer sent
    is checked before this returns: a mismatch is a 400, whatever else is wrong with the file."""
    claim = request_claim(request.headers)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _receive_form(request, scratch, limit, scan, claim, follow)
    if content_type in RAW_TYPES:
        follower = None if follow is None or claim is None else follow({}, claim)
        file = await _receive_raw(request, scratch, limit, scan, follower)
        _check(claim, file.sha256, None)
        return Received(file=file)
    raise UnsupportedMediaTypeError(
        "Send multipart/form-data (curl -F file=@w.npz) or application/octet-stream (curl --data-binary @w.npz "
        "-H 'Content-Type: application/octet-stream')."
    )


def _check(claim: ClaimedDigest | None, sha256: bytes | None, body: bytes | None) -> None:
    """Refuse a file whose digest is not the one claimed (`body`: the whole multipart body's digest,
    which a request's own Content-Digest covers by RFC 9530; the gateway takes either)."""
    if claim is None or claim.sha256 in (sha256, body):
        return
    actual = sha256 if sha256 is not None else body
    what = "the file that arrived" if sha256 is not None else "the body that arrived"
    raise DigestMismatchError(
        f"{claim.field} says the upload's sha-256 is {claim.header()!r}, but {what} has "
        f"{content_digest(actual or b'')!r}: it was changed on the way, or the digest is of another "
        "file. Nothing was kept or sent on. Compute it from the file you send: "
        "sha256sum w.npz | cut -d' ' -f1 | xxd -r -p | base64"
    )


class _FileFields:
    """Multipart parts kept as files: `file` and `layer_<n>`."""

    def __contains__(self, name: object) -> bool:
        return name == "file" or (isinstance(name, str) and LAYER_PART.fullmatch(name) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(("file",))

    def __len__(self) -> int:
        return 1


async def _receive_form(
    request: Request,
    scratch: Scratch,
    limit: int,
    scan: StreamScan | None,
    claim: ClaimedDigest | None,
    follow: FollowFile | None,
) -> Received:
    limits = MultipartLimits(max_file_bytes=limit, max_total_file_bytes=limit, max_parts=MAX_PARTS)
    claims: dict[str, ClaimedDigest] = {}

    def follow_file(name: str, headers: Mapping[bytes, bytes]) -> Follower | None:
        if name != "file":
            return None
        if (own := part_claim(headers)) is not None:
            claims[name] = own
        chosen = own or claim
        return None if follow is None or chosen is None else follow(headers, chosen)

    body = hashlib.sha256() if claim is not None else None
    form = await read_multipart(
        request,
        scratch.folder,
        limits,
        file_fields=_FileFields(),
        watch=lambda name: scan if name == "file" else None,
        follow=follow_file,
        body_digest=body,
    )
    scratch.form = form
    weighting = form.fields.get("weighting")
    part = form.files.get("file")
    layers = {int(name[6:]): p.path for name, p in form.files.items() if LAYER_PART.fullmatch(name)}
    if part is not None and layers:
        raise BadRequestError("Send either a 'file' part or 'layer_<n>' parts, not both.")
    if part is not None:
        _check(claims.get("file"), part.sha256, None)
        _check(claim, part.sha256, None if body is None else body.digest())
        file = ReceivedFile(part.path, part.sha256, part.filename or "weights.npz", part.size, scan)
        return Received(file=file, weighting=weighting)
    if claim is not None and body is not None:
        _check(claim, None, body.digest())
    if layers:
        if sorted(layers) != list(range(len(layers))):
            names = ", ".join(f"layer_{i}" for i in sorted(layers)[:8])
            expected = "layer_0" if len(layers) == 1 else f"layer_0 .. layer_{len(layers) - 1}"
            raise BadRequestError(
                f"{len(layers)} layer part(s) must be named {expected} without gaps; found "
                f"{names}. Number them from 0: curl -F layer_0=@l0.npy -F layer_1=@l1.npy "
                "-F weighting=12 localhost:8000/upload"
            )
        return Received(layers=tuple(layers[i] for i in range(len(layers))), weighting=weighting)
    raise BadRequestError(
        "The form needs a 'file' part (curl -F file=@w.npy localhost:8000/upload), or "
        "'layer_0', 'layer_1', ... parts and 'weighting' (curl -F layer_0=@l0.npy "
        "-F weighting=12 localhost:8000/upload)."
    )


async def _receive_raw(
    request: Request,
    scratch: Scratch,
    limit: int,
    scan: StreamScan | None,
    follower: Follower | None,
) -> ReceivedFile:
    def too_large() -> Exception:
        return PayloadTooLargeError(f"The upload is over GATEWAY_MAX_UPLOAD_BYTES ({limit} bytes).")

    # Written by the spool's writer thread and hashed by its hasher thread while the next MiB
    # arrives (as multipart parts are).
    # A follower's path is a scratch path of its own (removed with the others).
    spool = Spool(scratch.new(".bin") if follower is None else follower.path, limit, too_large)
    if scan is not None:
        spool.feed = Tee(spool.digest, scan)
    spool.follower = follower
    await spool.open()
    if follower is not None:
        follower.begin(0)
    pending: list[bytes] = []
    pending_size = 0
    try:
        async for chunk in request.stream():
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= FLUSH_BYTES:
                await spool.write(pending)
                pending, pending_size = [], 0
        await spool.write(pending)
    except ClientDisconnect:
        raise BadRequestError("The client disconnected before the upload was complete.") from None
    finally:
        with anyio.CancelScope(shield=True):  # the writer thread always ends
            await spool.close()
    if spool.size == 0:
        raise BadRequestError("The request body is empty: send the weights file as the body.")
    return ReceivedFile(spool.path, spool.digest.digest(), "weights.npz", spool.size, scan)
