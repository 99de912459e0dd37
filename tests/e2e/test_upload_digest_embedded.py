"""The README's Content-Digest commands, as typed, against the embedded aggregator: a verified
upload lands once, a wrong digest lands nothing and leaves nothing behind."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np

from tests.support.aggregator import ADMIN
from tests.support.gateways import one_leaf_federation
from tests.support.http import admin_get, curl

DIGEST = "D=$(sha256sum {0} | cut -d' ' -f1 | xxd -r -p | base64)"


def _shell_curl(script: str, cwd: Path) -> str:
    """Run `script` in bash (the README's way), returning what curl printed."""
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_the_readme_digest_commands_upload_once_and_a_wrong_one_lands_nothing(
    tmp_path: Path,
) -> None:
    """`curl -F 'file=@w.npz;headers=...'` and the raw `--data-binary` with Content-Digest both
    give 201 and an upload the aggregator stored with the file's digest; a wrong digest is 400
    and the aggregator keeps no upload and no partial file."""
    layer = np.arange(2 << 20, dtype=np.float32)
    digests = set()
    for name, weighting in (("w.npz", 2.0), ("w2.npz", 3.0)):  # two files: the aggregator dedupes
        np.savez(tmp_path / name, weighting=np.array([weighting]), layer_0=layer)
        sha256 = hashlib.sha256((tmp_path / name).read_bytes()).digest()
        digests.add(base64.b64encode(sha256).decode())
    with one_leaf_federation(tmp_path / "fed") as fed, httpx.Client(timeout=30) as client:
        url = fed.gateway.url
        form = (
            f"{DIGEST.format('w.npz')}\ncurl -sS -w '%{{http_code}}' -o /dev/null "
            f'-F "file=@w.npz;headers=\\"Content-Digest: sha-256=:$D:\\"" {url}/upload'
        )
        raw = (
            f"{DIGEST.format('w2.npz')}\ncurl -sS -w '%{{http_code}}' -o /dev/null "
            "--data-binary @w2.npz "
            "-H 'Content-Type: application/octet-stream' "
            f'-H "Content-Digest: sha-256=:$D:" {url}/upload'
        )
        for script in (form, raw):
            assert _shell_curl(script, tmp_path) == "201"
        stored = admin_get(fed.aggregator.url, ADMIN, "uploads", client)
        assert len(stored) == 2
        assert {upload["digest"] for upload in stored} == digests

        wrong = "sha-256=:" + "A" * 43 + "=:"
        answer = curl(
            "-F", "file=@w.npz", "-H", f"Content-Digest: {wrong}", f"{url}/upload", cwd=tmp_path
        )
        assert answer.status == 400
        assert answer.json()["type"] == "/problems/digest-mismatch"
        deadline = time.monotonic() + 10
        leftovers: list[Path] = [tmp_path]
        while leftovers and time.monotonic() < deadline:
            leftovers = list((fed.aggregator.data_dir / "tmp").iterdir())
            time.sleep(0.05)
        assert leftovers == []
        assert len(admin_get(fed.aggregator.url, ADMIN, "uploads", client)) == 2
