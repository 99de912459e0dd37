"""The compose stack's credentials: the committed templates and deploy/make_credentials.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.aggregator.leaves import LeavesFileError, load_leaves
from gateway.upstream.credentials import CredentialsError, from_mapping
from tests.packaging.docker import REPO, env_file_values

CREDENTIALS = REPO / "deploy" / "credentials"
MAKE = REPO / "deploy" / "make_credentials.py"
IMAGE_GID = 10001


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def make(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run deploy/make_credentials.py as a user would."""
    return subprocess.run(
        [sys.executable, str(MAKE), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_templates_fail_closed() -> None:
    """Copied unfilled, the templates stop the aggregator and the gateway (empty session tokens) instead of running with a known token."""
    with pytest.raises(LeavesFileError, match="session_token"):
        load_leaves(CREDENTIALS / "leaves.example.json")
    for letter in ("a", "b"):
        with pytest.raises(CredentialsError, match="session_token"):
            from_mapping(_json(CREDENTIALS / f"leaf-{letter}.example.json"), "template")
        assert env_file_values(CREDENTIALS / f"gateway-{letter}.example.env") == {
            "GATEWAY_TOKEN": ""
        }


def test_templates_agree_with_each_other(tmp_path: Path) -> None:
    """Filled in, each gateway's leaf template is one leaf of the aggregator's template, and both load."""
    leaves = _json(CREDENTIALS / "leaves.example.json")
    for number, leaf in enumerate(leaves):
        leaf["session_token"] = f"token-{number}"
    filled = tmp_path / "leaves.json"
    filled.write_text(json.dumps(leaves), encoding="utf-8")
    assert [leaf.id for leaf in load_leaves(filled)] == [leaf["id"] for leaf in leaves]
    for number, letter in enumerate(("a", "b")):
        single = _json(CREDENTIALS / f"leaf-{letter}.example.json")
        single["session_token"] = f"token-{number}"
        assert single == leaves[number]
        assert from_mapping(single, "template").name == f"leaf-{letter}"


def test_v1_template_is_the_v1_clients_shape() -> None:
    """The v1 template is the 2.x client's credentials dict: unfilled it fails closed; filled in, it is
    leaf-a for BK_DIALECT=v1 (no tree or branch id needed) and needs them added for v3."""
    template = _json(CREDENTIALS / "leaf-v1.example.json")
    assert sorted(template) == ["leaf_id", "leaf_name", "leaf_session_token", "response_host"]
    with pytest.raises(CredentialsError, match="session_token"):
        from_mapping(template, "template", "v1")
    template["leaf_session_token"] = "token-0"
    creds = from_mapping(template, "template", "v1")
    assert (creds.id, creds.name) == (_json(CREDENTIALS / "leaf-a.example.json")["id"], "leaf-a")
    assert creds.response_host == "response.branchkey.com"
    with pytest.raises(CredentialsError, match="tree_id, branch_id"):
        from_mapping(template, "template")


def test_make_credentials_writes_a_consistent_private_set(tmp_path: Path) -> None:
    """The generator writes loadable, matching leaves and leaf files with fresh tokens, readable by the image's group only."""
    out = tmp_path / "credentials"
    result = make(out)
    assert result.returncode == 0, result.stderr
    leaves = load_leaves(out / "leaves.json")
    assert len({leaf.branch_id for leaf in leaves}) == 1
    tokens = {leaf.session_token for leaf in leaves}
    for letter, leaf in zip(("a", "b"), leaves, strict=True):
        single = from_mapping(_json(out / f"leaf-{letter}.json"), f"leaf-{letter}.json")
        assert (single.id, single.session_token) == (leaf.id, leaf.session_token)
        tokens.add(env_file_values(out / f"gateway-{letter}.env")["GATEWAY_TOKEN"])
    assert len(tokens) == 4
    assert min(map(len, tokens)) >= 43  # secrets.token_urlsafe(32)
    for path in out.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.suffix == ".env" else 0o640), path.name
        if path.suffix == ".json" and os.geteuid() == 0:
            assert path.stat().st_gid == IMAGE_GID, path.name
    if os.geteuid() != 0:
        assert f"chgrp {IMAGE_GID}" in result.stdout


def test_make_credentials_keeps_existing_ones_unless_forced(tmp_path: Path) -> None:
    """A second run refuses to replace working credentials; --force replaces every token."""
    out = tmp_path / "credentials"
    assert make(out).returncode == 0
    before = (out / "leaves.json").read_text(encoding="utf-8")
    again = make(out)
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert (out / "leaves.json").read_text(encoding="utf-8") == before
    assert make(out, "--force").returncode == 0
    assert (out / "leaves.json").read_text(encoding="utf-8") != before
    assert sorted(p.name for p in out.iterdir()) == [
        "gateway-a.env",
        "gateway-b.env",
        "leaf-a.json",
        "leaf-b.json",
        "leaves.json",
    ]
