"""Parsing of the Authorization headers leaves and the admin send."""

from __future__ import annotations

import base64

import pytest

from gateway.aggregator.auth import basic_credentials, bearer_token


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer leaf:token", "leaf:token"),
        ("bearer  leaf:to:ken ", "leaf:to:ken"),
        ("BEARER admin-token", "admin-token"),
        ("Bearer", ""),
        ("Basic bGVhZjp0b2tlbg==", None),
        ("", None),
        ("Bearerleaf:token", None),
    ],
)
def test_bearer_token(header: str, expected: str | None) -> None:
    """The one Bearer parser: any scheme case, credentials stripped with their colons kept, other schemes None."""
    assert bearer_token(header) == expected


def test_basic_credentials() -> None:
    """HTTP Basic decodes latin-1 `user:password` (as requests sends it); bad base64 or another scheme is None."""
    encoded = base64.b64encode("leaf-ä:tok:en".encode("latin-1")).decode()
    assert basic_credentials(f"basic {encoded}") == "leaf-ä:tok:en"
    assert basic_credentials("Basic not base64!") is None
    assert basic_credentials(f"Bearer {encoded}") is None
