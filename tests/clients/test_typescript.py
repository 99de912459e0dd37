"""The TypeScript client (clients/typescript): types generated from openapi/openapi.json and current,
and a compiled program that completes upload -> event -> download against a live gateway."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.support.gateways import one_leaf_federation

PROJECT = Path(__file__).resolve().parents[2] / "clients" / "typescript"
NODE, NPM = shutil.which("node") or "", shutil.which("npm") or ""
TOKEN = "ts-client-token-0123456789"
VALUES = (np.arange(1, 9, dtype=np.float32) / 4).reshape(4, 2)
"""What the program uploads: (i + 1) / 4 for i in 0..7, shape (4, 2)."""

pytestmark = [
    pytest.mark.skipif(not (NODE and NPM), reason="node and npm are not installed"),
    pytest.mark.timeout(300),
]


def _run(*command: str, env: dict[str, str] | None = None, timeout: float) -> str:
    """Run `command` in the project folder; fail with its output unless it exits 0."""
    done = subprocess.run(
        command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def program() -> Path:
    """`npm ci` (the committed lockfile), then `tsc`: the typed program, type-checked and compiled."""
    _run(NPM, "ci", "--no-audit", "--no-fund", timeout=240)
    _run(NODE, "node_modules/typescript/bin/tsc", "--project", "tsconfig.json", timeout=120)
    return PROJECT / "dist" / "roundtrip.js"


def test_generated_types_match_the_document(program: Path) -> None:
    """src/schema.d.ts is what openapi-typescript makes of openapi/openapi.json today."""
    assert program.exists()
    assert "up to date" in _run(NODE, "generate.mjs", "--check", timeout=60)


def test_upload_event_download(program: Path, tmp_path: Path) -> None:
    """The program uploads a .npy, hears the round's aggregation on /events and downloads it: its
    one layer comes back as uploaded (the only leaf's FedAvg is its own update)."""
    out = tmp_path / "aggregated.npz"
    with one_leaf_federation(tmp_path, token=TOKEN) as federation:
        gateway = federation.gateway
        env = {
            "PATH": str(Path(NODE).parent),
            "GATEWAY_URL": gateway.url,
            "GATEWAY_TOKEN": TOKEN,
            "OUT": str(out),
            "WEIGHTING": "7",
            "WAIT_TIMEOUT_S": "60",
        }
        line = _run(NODE, str(program), env=env, timeout=90).strip().splitlines()[-1]
        report = json.loads(line)
        assert gateway.event_of(report["aggregation_id"]) == report["event"]
    (layer,) = report["layers"]
    assert (layer["key"], layer["dtype"], layer["shape"]) == ("layer_0", "<f4", [4, 2])
    assert report["bytes"] == out.stat().st_size
    if report["etag"] is not None:  # a download streamed while it is first fetched has none yet
        assert report["etag"].strip('"') == hashlib.sha256(out.read_bytes()).hexdigest()
    with np.load(out) as aggregated:
        assert aggregated.files == ["layer_0"]
        np.testing.assert_allclose(aggregated["layer_0"], VALUES)
