"""Leaf credentials from a file or the environment: the v3 and v1 shapes, and what each wire cannot carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import Settings
from gateway.upstream.credentials import CredentialsError, from_mapping, from_settings

V3 = {
    "id": "l1",
    "name": "leaf",
    "session_token": "s:t",
    "tree_id": "t1",
    "branch_id": "b1",
    "owner_id": "o1",
}


def test_credentials_file_v3_and_v1_shapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A v3 credentials file is read as is; a v1 one (leaf_id, leaf_session_token) needs tree and branch ids."""
    v3 = tmp_path / "v3.json"
    v3.write_text(json.dumps(V3))
    creds = from_settings(Settings(_env_file=None, bk_credentials_file=v3))
    assert creds is not None
    assert (creds.id, creds.session_token, creds.branch_id) == ("l1", "s:t", "b1")
    assert "s:t" not in repr(creds)
    v1 = tmp_path / "v1.json"
    v1.write_text(
        json.dumps(
            {
                "leaf_name": "leaf",
                "leaf_id": "l2",
                "leaf_session_token": "tok",
                "response_host": "h",
            }
        )
    )
    with pytest.raises(CredentialsError, match="tree_id, branch_id"):
        from_settings(Settings(_env_file=None, bk_credentials_file=v1))
    monkeypatch.setenv("BK_TREE_ID", "t2")
    monkeypatch.setenv("BK_BRANCH_ID", "b2")
    creds = from_settings(Settings(_env_file=None, bk_credentials_file=v1))
    assert creds is not None
    assert (creds.id, creds.name, creds.session_token, creds.branch_id) == (
        "l2",
        "leaf",
        "tok",
        "b2",
    )


def test_v1_credentials_need_no_ids_but_a_response_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With BK_DIALECT=v1 the v1 client's file is enough (ids come from authenticate); a missing
    response_host is named, and BK_RESPONSE_HOST supplies or overrides it."""
    monkeypatch.setenv("BK_HOST", "https://api.example")
    monkeypatch.setenv("BK_DIALECT", "v1")
    v1 = tmp_path / "v1.json"
    v1.write_text(json.dumps({"leaf_name": "n", "leaf_id": "l", "leaf_session_token": "t"}))
    monkeypatch.setenv("BK_CREDENTIALS_FILE", str(v1))
    with pytest.raises(CredentialsError, match="lacks response_host"):
        from_settings(Settings(_env_file=None))
    monkeypatch.setenv("BK_RESPONSE_HOST", "rabbit.example")
    creds = from_settings(Settings(_env_file=None))
    assert creds is not None
    assert (creds.id, creds.tree_id, creds.branch_id, creds.response_host) == (
        "l",
        "",
        "",
        "rabbit.example",
    )
    assert Settings(_env_file=None).bk_amqp_port == 5672


def test_credentials_from_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """BK_LEAF_ID, BK_SESSION_TOKEN, ... make credentials without a file; none set means none."""
    assert from_settings(Settings(_env_file=None)) is None
    for key, value in {
        "BK_LEAF_ID": "l3",
        "BK_LEAF_NAME": "n",
        "BK_SESSION_TOKEN": "x",
        "BK_TREE_ID": "t",
        "BK_BRANCH_ID": "b",
    }.items():
        monkeypatch.setenv(key, value)
    creds = from_settings(Settings(_env_file=None))
    assert creds is not None
    assert creds.id == "l3"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"leaf_session_token": ""}, "lacks leaf_session_token"),
        ({"leaf_id": "a:b"}, "leaf_id contains ':'"),
        ({"leaf_session_token": "tök€n"}, "leaf_session_token has characters outside Latin-1"),
        ({"response_host": "amqp://rabbit.example:5672"}, "bare host name"),
        ({"response_host": "rabbit.example:5672"}, "bare host name"),
    ],
)
def test_v1_credentials_that_the_v1_wire_cannot_carry_are_refused(
    change: dict[str, str], fragment: str
) -> None:
    """v1 credentials go into HTTP Basic and an AMQP host: what those cannot carry is refused at
    login with a sentence naming the v1 key, never sent and refused later with a misleading 401."""
    data = {
        "leaf_name": "n",
        "leaf_id": "l",
        "leaf_session_token": "t",
        "response_host": "rabbit.example",
        **change,
    }
    with pytest.raises(CredentialsError, match=fragment):
        from_mapping(data, "The request body", "v1")


@pytest.mark.parametrize(
    ("key", "value"),
    [("id", "é1"), ("id", "l\x01"), ("session_token", "a b"), ("session_token", "t\n")],
)
def test_v3_credentials_that_the_bearer_header_cannot_carry_are_refused(
    key: str, value: str
) -> None:
    """A v3 id or token outside visible ASCII is refused, naming the key, instead of failing the login."""
    with pytest.raises(CredentialsError, match=f"{key} must be visible ASCII"):
        from_mapping({**V3, key: value}, "The request body")


def _leaves_file(tmp_path: Path, count: int) -> Path:
    """An aggregator's leaves.json with `count` leaves named leaf-1 ..."""
    leaves = [{**V3, "id": f"l{i}", "name": f"leaf-{i}"} for i in range(1, count + 1)]
    path = tmp_path / "leaves.json"
    path.write_text(json.dumps(leaves))
    return path


@pytest.mark.parametrize(
    ("pick", "expected"), [({"bk_leaf_name": "leaf-2"}, "l2"), ({"bk_leaf_id": "l3"}, "l3")]
)
def test_a_list_of_leaves_with_a_pick(tmp_path: Path, pick: dict[str, Any], expected: str) -> None:
    """BK_CREDENTIALS_FILE may be the aggregator's leaves.json: BK_LEAF_NAME or BK_LEAF_ID picks one."""
    path = _leaves_file(tmp_path, 3)
    creds = from_settings(Settings(_env_file=None, bk_credentials_file=path, **pick))
    assert creds is not None
    assert creds.id == expected
    assert creds.name == f"leaf-{expected[1:]}"


@pytest.mark.parametrize(
    ("count", "pick", "message"),
    [
        (
            3,
            {},
            "BK_CREDENTIALS_FILE lists 3 leaves (leaf-1, leaf-2, leaf-3): set BK_LEAF_NAME "
            "(e.g. BK_LEAF_NAME=leaf-1) or BK_LEAF_ID to pick one.",
        ),
        (
            2,
            {"bk_leaf_name": "leaf-9"},
            "BK_CREDENTIALS_FILE has no leaf matching BK_LEAF_NAME=leaf-9; its leaves are leaf-1, leaf-2.",
        ),
        (0, {}, "BK_CREDENTIALS_FILE holds an empty list: no leaf to start as."),
        (
            12,
            {},
            "(leaf-1, leaf-2, leaf-3, leaf-4, leaf-5, leaf-6, leaf-7, leaf-8, leaf-9, leaf-10 and 2 more)",
        ),
    ],
)
def test_a_list_of_leaves_without_a_pick(
    tmp_path: Path, count: int, pick: dict[str, Any], message: str
) -> None:
    """A list without a pick (or a pick that matches nothing) is one sentence naming the leaves."""
    path = _leaves_file(tmp_path, count)
    with pytest.raises(CredentialsError) as raised:
        from_settings(Settings(_env_file=None, bk_credentials_file=path, **pick))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
