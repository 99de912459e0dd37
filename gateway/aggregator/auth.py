"""Who is asking: leaves (Bearer for protocol v3, HTTP Basic for v1), the admin, and what a leaf may touch."""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from typing import Annotated

from anyio import to_thread
from fastapi import Depends, Request

from gateway.aggregator.errors import ForbiddenError, NotAuthenticatedError
from gateway.aggregator.records import Leaf
from gateway.aggregator.state import AggregatorState, StateDep


def bearer_token(authorization: str) -> str | None:
    """The credentials of an `Authorization: Bearer <credentials>` header (stripped), else None."""
    scheme, _, credentials = authorization.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def basic_credentials(authorization: str) -> str | None:
    """The decoded `user:password` of an `Authorization: Basic <base64>` header, else None."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        # requests encodes `user:password` as latin-1 before base64 (§3.3).
        return base64.b64decode(encoded.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return None


async def authenticate_leaf(state: AggregatorState, leaf_id: str, token: str) -> Leaf:
    """The leaf with this id and session token (compared in constant time), else 401."""
    leaf = await to_thread.run_sync(state.store.leaf, leaf_id)
    expected = leaf.session_token if leaf else secrets.token_urlsafe(32)
    if not hmac.compare_digest(expected.encode(), token.encode()) or leaf is None:
        raise NotAuthenticatedError("Unknown leaf or wrong session token.")
    return leaf


async def _leaf_of(state: StateDep, credentials: str | None, expected: str) -> Leaf:
    """The leaf of `<leaf id>:<session token>` credentials, else 401 saying what to send (`expected`)."""
    if credentials is None or ":" not in credentials:
        raise NotAuthenticatedError(f"Missing or malformed Authorization header: send {expected}.")
    leaf_id, _, token = credentials.partition(":")  # tokens may contain colons
    return await authenticate_leaf(state, leaf_id, token)


async def _bearer_leaf(request: Request, state: StateDep) -> Leaf:
    credentials = bearer_token(request.headers.get("authorization", ""))
    return await _leaf_of(state, credentials, "'Bearer <leaf id>:<session token>'")


async def _basic_leaf(request: Request, state: StateDep) -> Leaf:
    credentials = basic_credentials(request.headers.get("authorization", ""))
    return await _leaf_of(state, credentials, "HTTP Basic <leaf id>:<session token>")


LeafDep = Annotated[Leaf, Depends(_bearer_leaf)]
"""The leaf of a protocol v3 request (`Bearer <leaf id>:<session token>`)."""

BasicLeafDep = Annotated[Leaf, Depends(_basic_leaf)]
"""The leaf of a protocol v1 request (HTTP Basic `<leaf id>:<session token>`)."""


async def require_admin(request: Request, state: StateDep) -> None:
    """401 unless the request carries `Authorization: Bearer <admin token>`."""
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None or not hmac.compare_digest(token.encode(), state.admin_token.encode()):
        raise NotAuthenticatedError("The admin API needs 'Authorization: Bearer <admin token>'.")


def own_branch(leaf: Leaf, branch_id: str) -> None:
    """403 unless `branch_id` is the leaf's own branch."""
    if branch_id != leaf.branch_id:
        raise ForbiddenError(f"Branch {branch_id!r} is not this leaf's branch.")
