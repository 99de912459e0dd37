"""RFC 9530 integrity fields: the `sha-256` digest a trainer sends in `Content-Digest` or `Repr-Digest`.

Both fields are RFC 8941 dictionaries of byte sequences (`sha-256=:<base64>:, sha-512=:...:`). The
gateway uses only `sha-256` (the digest BranchKey's upload carries); other algorithms are ignored,
as RFC 9530 allows. It accepts no content coding on uploads, so a request's representation and
content are the same bytes and `Repr-Digest` means what `Content-Digest` means.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

FIELDS: Final = ("content-digest", "repr-digest")
"""The request fields read, in the order their values are compared."""
ALGORITHM: Final = "sha-256"

_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*", re.ASCII)
_BYTES = re.compile(r":([A-Za-z0-9+/=]*):", re.ASCII)
_PARAM = re.compile(r";\s*[a-z*][a-z0-9_\-.*]*(=[^;,]*)?", re.ASCII)


class DigestFieldError(ValueError):
    """A digest field that does not parse, or two that disagree; the message says which and how."""


@dataclass(frozen=True)
class ClaimedDigest:
    """The sha-256 a request says its content has, and the field that said it."""

    sha256: bytes
    field: str
    """`Content-Digest`, `Repr-Digest`, or a file part's `Content-Digest`."""

    def header(self) -> str:
        """The claim as the field's value."""
        return content_digest(self.sha256)


def content_digest(sha256: bytes) -> str:
    """`sha-256=:<base64>:`, the value of `Content-Digest` for content with this sha-256."""
    return f"{ALGORITHM}=:{base64.b64encode(sha256).decode()}:"


def parse_sha256(value: str, field: str) -> bytes | None:
    """The `sha-256` member of one digest field's value (None: the field names other algorithms
    only). Raises `DigestFieldError` for a value that is not a dictionary of byte sequences, or a
    `sha-256` that is not 32 bytes of standard base64."""
    found: bytes | None = None
    for member in _members(value):
        key, sep, rest = member.partition("=")
        key = key.strip()
        if not _KEY.fullmatch(key) or not sep:
            raise DigestFieldError(
                f"{field} must look like 'sha-256=:<base64 of the 32-byte digest>:'; "
                f"{member.strip()[:80]!r} is not a digest entry."
            )
        item = _BYTES.match(rest.strip())
        if item is None or _PARAM.sub("", rest.strip()[item.end() :]).strip():
            raise DigestFieldError(
                f"{field}: the {key} value must be base64 between colons, e.g. "
                f"sha-256=:{base64.b64encode(bytes(32)).decode()}:"
            )
        if key != ALGORITHM:
            continue  # another algorithm: ignored (RFC 9530 section 5)
        try:
            digest = base64.b64decode(item.group(1), validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) != 32:
            raise DigestFieldError(
                f"{field}: sha-256 must be the standard base64 of the 32-byte digest (44 "
                "characters with '='), not hex: sha256sum FILE | cut -d' ' -f1 | xxd -r -p | base64"
            )
        if found is not None and found != digest:
            raise DigestFieldError(f"{field} names two different sha-256 digests.")
        found = digest
    return found


def claimed_digest(headers: Iterable[tuple[str, str]]) -> ClaimedDigest | None:
    """The sha-256 that `Content-Digest` and `Repr-Digest` claim among `headers` (lower-case
    names, repeated fields allowed); None when neither names sha-256. Raises `DigestFieldError`."""
    claim: ClaimedDigest | None = None
    for name, value in headers:
        if name not in FIELDS:
            continue
        field = "Content-Digest" if name == FIELDS[0] else "Repr-Digest"
        digest = parse_sha256(value, field)
        if digest is None:
            continue
        if claim is not None and claim.sha256 != digest:
            raise DigestFieldError(
                f"{claim.field} and {field} name different sha-256 digests; the gateway decodes no "
                "content coding, so both are the digest of the body: send one."
            )
        claim = claim or ClaimedDigest(digest, field)
    return claim


def _members(value: str) -> Iterable[str]:
    """The comma-separated members of a dictionary field (byte sequences contain no commas)."""
    for member in value.split(","):
        if member.strip():
            yield member
