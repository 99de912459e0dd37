"""Short-lived signed access tokens (`?access_token=`) for what a browser cannot send a header with:
`EventSource` streams and plain links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

QUERY_PARAMETER = "access_token"
"""RFC 6750 §2.3's name; the log redaction already covers every `*token=` pair."""

_CONTEXT = b"branchkey-gateway access token v1\x00"
_SIGNATURE_CHARS = 43  # base64url of a SHA-256 MAC, unpadded

Verdict = Literal["valid", "expired", "invalid"]


@dataclass(frozen=True)
class AccessToken:
    """An issued token and when it stops being accepted."""

    token: str
    expires_at: float


class AccessSigner:
    """Issues and checks tokens `<expiry>.<HMAC-SHA256(key, expiry)>`; nothing is stored.

    The key is derived from GATEWAY_TOKEN, so tokens survive a restart and rotating GATEWAY_TOKEN
    revokes every one of them; without GATEWAY_TOKEN (nothing checks them then) it is random.
    """

    def __init__(
        self, gateway_token: str | None, max_ttl_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        secret = gateway_token.encode() if gateway_token else secrets.token_bytes(32)
        self._key = hmac.new(secret, _CONTEXT, hashlib.sha256).digest()
        self.max_ttl_s = max_ttl_s
        self._clock = clock

    def issue(self, ttl_s: float | None = None) -> AccessToken:
        """A token valid for `ttl_s` (at most, and by default, the configured lifetime)."""
        ttl = self.max_ttl_s if ttl_s is None else min(ttl_s, self.max_ttl_s)
        expires = int(self._clock() + ttl)
        return AccessToken(f"{expires}.{self._sign(expires)}", float(expires))

    def check(self, token: str) -> Verdict:
        """Whether `token` was issued here and has not expired (signature compared in constant time)."""
        expiry, _, signature = token.partition(".")
        if not expiry.isascii() or not expiry.isdigit() or len(expiry) > 12:
            return "invalid"
        if not hmac.compare_digest(signature.encode(), self._sign(int(expiry)).encode()):
            return "invalid"
        return "valid" if int(expiry) > self._clock() else "expired"

    def _sign(self, expires: int) -> str:
        mac = hmac.new(self._key, str(expires).encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode()[:_SIGNATURE_CHARS]
