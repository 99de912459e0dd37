"""A leaf's credentials, from a credentials file (v3 or v1 client shape) or BK_* variables."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.settings import Settings

V3_FIELDS = ("id", "name", "session_token", "tree_id", "branch_id", "owner_id")


class CredentialsError(ValueError):
    """Credentials are missing or malformed; the message names what to set."""


@dataclass(frozen=True)
class Credentials:
    """The v3 credential fields (the token is kept out of repr)."""

    id: str
    name: str
    session_token: str = field(repr=False)
    tree_id: str
    branch_id: str
    owner_id: str = ""
    response_host: str = ""

    def public(self) -> dict[str, str]:
        """Everything but the token."""
        return {
            "leaf_id": self.id,
            "leaf_name": self.name,
            "tree_id": self.tree_id,
            "branch_id": self.branch_id,
        }


def from_mapping(
    data: Any, origin: str, dialect: str = "v3", default_response_host: str | None = None
) -> Credentials:
    """Credentials from a JSON object in the v3 shape or the v1 client's shape.

    With the v3 dialect the tree and branch ids must be given (v1-shaped credentials need them added);
    with v1 they come from `/v1/leaf/authenticate`, and the notification host is needed instead
    (`response_host`, else `default_response_host`, i.e. BK_RESPONSE_HOST).
    """
    if not isinstance(data, dict):
        raise CredentialsError(f"{origin} must be a JSON object with the leaf's credentials.")
    data = _v3_names(data)
    if not isinstance(data.get("response_host"), str) or not data["response_host"]:
        data["response_host"] = default_response_host or ""
    required = V3_FIELDS[:3] if dialect == "v1" else V3_FIELDS[:5]
    missing = [k for k in required if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        if dialect == "v1":
            missing = [_V3_TO_V1.get(key, key) for key in missing]
            hint = "give leaf_id, leaf_name and leaf_session_token (the v1 client's credentials)."
        else:
            hint = (
                "give id, name, session_token, tree_id and branch_id "
                "(v1-shaped credentials need tree_id and branch_id added)."
            )
        raise CredentialsError(f"{origin} lacks {', '.join(missing)}: {hint}")
    if dialect == "v1":
        _check_v1(data, origin)
    else:
        _check_v3(data, origin)
    return Credentials(
        id=str(data["id"]),
        name=str(data["name"]),
        session_token=str(data["session_token"]),
        tree_id=str(data.get("tree_id") or ""),
        branch_id=str(data.get("branch_id") or ""),
        owner_id=str(data.get("owner_id") or ""),
        response_host=str(data.get("response_host") or ""),
    )


_V1_TO_V3 = {"leaf_id": "id", "leaf_name": "name", "leaf_session_token": "session_token"}
_V3_TO_V1 = {new: old for old, new in _V1_TO_V3.items()}


def _check_v3(data: dict[str, Any], origin: str) -> None:
    """What protocol v3 can carry: `Authorization: Bearer <id>:<session_token>`, visible ASCII only."""
    for key in ("id", "session_token"):
        value = data[key]
        if not (value.isascii() and value.isprintable()) or " " in value:
            raise CredentialsError(
                f"{origin}: {key} must be visible ASCII without spaces (it is sent in the "
                "Authorization header); copy it from the credentials file BranchKey issued."
            )


def _check_v1(data: dict[str, Any], origin: str) -> None:
    """What protocol v1 can carry: HTTP Basic (latin-1, no ':' in the user) and a broker host name."""
    host = data.get("response_host")
    if not host:
        raise CredentialsError(
            f"{origin} lacks response_host: protocol v1 needs the RabbitMQ host of the "
            "notifications (set response_host in the credentials or BK_RESPONSE_HOST)."
        )
    if not isinstance(host, str) or any(ch in host for ch in "/@ ") or host.count(":") == 1:
        raise CredentialsError(
            f"{origin}: response_host must be a bare host name such as response.branchkey.com "
            "(no scheme, user or port; the port is BK_AMQP_PORT)."
        )
    if ":" in data["id"]:
        raise CredentialsError(
            f"{origin}: leaf_id contains ':', which HTTP Basic cannot carry in a user name."
        )
    for key in ("id", "session_token"):
        try:
            data[key].encode("latin-1")
        except UnicodeEncodeError:
            raise CredentialsError(
                f"{origin}: {_V3_TO_V1[key]} has characters outside Latin-1, which HTTP Basic "
                "(as BranchKey's v1 client sends it) cannot carry."
            ) from None


def _v3_names(data: dict[str, Any]) -> dict[str, Any]:
    """The v1 client's key names (leaf_id, leaf_name, leaf_session_token) as v3 names."""
    renamed = {
        _V1_TO_V3.get(key, key): value for key, value in data.items() if key not in _V1_TO_V3
    }
    for old, new in _V1_TO_V3.items():
        if old in data and new not in data:
            renamed[new] = data[old]
    return renamed


def pick_leaf(leaves: list[Any], name: str | None, leaf_id: str | None) -> Any:
    """The entry of a list of leaves (the aggregator's leaves.json) that BK_LEAF_NAME or BK_LEAF_ID
    names; without either, or with no match, one sentence listing the leaves to choose from."""
    entries = [_v3_names(e) if isinstance(e, dict) else {} for e in leaves]
    names = [str(e.get("name", "?")) for e in entries]
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    if not leaves:
        raise CredentialsError("BK_CREDENTIALS_FILE holds an empty list: no leaf to start as.")
    if not name and not leaf_id:
        raise CredentialsError(
            f"BK_CREDENTIALS_FILE lists {len(leaves)} leaves ({shown}): set BK_LEAF_NAME "
            f"(e.g. BK_LEAF_NAME={names[0]}) or BK_LEAF_ID to pick one."
        )
    found = [
        leaves[i]
        for i, e in enumerate(entries)
        if (not name or e.get("name") == name) and (not leaf_id or e.get("id") == leaf_id)
    ]
    if len(found) != 1:
        wanted = " and ".join(
            f"{var}={value}"
            for var, value in (("BK_LEAF_NAME", name), ("BK_LEAF_ID", leaf_id))
            if value
        )
        count = "no leaf" if not found else f"{len(found)} leaves"
        raise CredentialsError(
            f"BK_CREDENTIALS_FILE has {count} matching {wanted}; its leaves are {shown}."
        )
    return found[0]


def from_settings(settings: Settings) -> Credentials | None:
    """Credentials from BK_CREDENTIALS_FILE, then BK_* variables filling any gaps; None if none are set."""
    data: dict[str, Any] = {}
    if settings.bk_credentials_file is not None:
        try:
            loaded = json.loads(Path(settings.bk_credentials_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CredentialsError(f"BK_CREDENTIALS_FILE cannot be read: {exc}.") from None
        if isinstance(loaded, list):
            loaded = pick_leaf(loaded, settings.bk_leaf_name, settings.bk_leaf_id)
        if not isinstance(loaded, dict):
            raise CredentialsError(
                "BK_CREDENTIALS_FILE must hold one JSON object (a leaf's credentials) or a list "
                "of them (the aggregator's leaves.json) with BK_LEAF_NAME or BK_LEAF_ID set."
            )
        data = dict(loaded)
    overrides = {
        "id": settings.bk_leaf_id,
        "name": settings.bk_leaf_name,
        "session_token": settings.bk_session_token.get_secret_value()
        if settings.bk_session_token
        else None,
        "tree_id": settings.bk_tree_id,
        "branch_id": settings.bk_branch_id,
        "owner_id": settings.bk_owner_id,
        "response_host": settings.bk_response_host,
    }
    data = _v3_names(data)
    for key, value in overrides.items():
        if value:
            data[key] = value
    if not data:
        return None
    return from_mapping(
        data,
        "BK_CREDENTIALS_FILE" if settings.bk_credentials_file else "The BK_* variables",
        settings.bk_dialect,
    )
