"""Signed access tokens: issued with an expiry, refused once expired or altered, bound to the key."""

from __future__ import annotations

from gateway.access import AccessSigner


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_is_valid_until_it_expires() -> None:
    """A token is accepted for its lifetime and called expired afterwards."""
    clock = Clock()
    signer = AccessSigner("gateway-token", 600, clock)
    grant = signer.issue()
    assert grant.expires_at == clock.now + 600
    assert signer.check(grant.token) == "valid"
    clock.now += 599
    assert signer.check(grant.token) == "valid"
    clock.now += 1
    assert signer.check(grant.token) == "expired"


def test_the_lifetime_is_capped() -> None:
    """A longer lifetime than GATEWAY_ACCESS_TTL_S is cut to it; a shorter one is kept."""
    clock = Clock()
    signer = AccessSigner("gateway-token", 60, clock)
    assert signer.issue(3600).expires_at == clock.now + 60
    assert signer.issue(5).expires_at == clock.now + 5


def test_altered_or_foreign_tokens_are_invalid() -> None:
    """A changed expiry or signature, garbage, or another key's token is refused; the same
    GATEWAY_TOKEN (a restart) accepts it, another one (a rotation) does not."""
    clock = Clock()
    signer = AccessSigner("gateway-token", 600, clock)
    token = signer.issue().token
    expiry, _, signature = token.partition(".")
    assert signer.check(f"{int(expiry) + 1000}.{signature}") == "invalid"
    altered = signature[:-1] + ("B" if signature.endswith("A") else "A")
    assert signer.check(f"{expiry}.{altered}") == "invalid"
    for garbage in ("", ".", "abc", "12.", "-5.x", "١٢٣.x", token + "x"):
        assert signer.check(garbage) == "invalid", garbage
    assert AccessSigner("gateway-token", 600, clock).check(token) == "valid"
    assert AccessSigner("rotated-token", 600, clock).check(token) == "invalid"
    assert AccessSigner(None, 600, clock).check(token) == "invalid"
