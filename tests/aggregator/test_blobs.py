"""The one blob-serving function behind both dialects' download URLs (`npz` for v3, `npy` for v1)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import numpy as np
import pytest
from starlette.requests import Request

from gateway.aggregator.blobs import blob_url, serve_blob
from gateway.aggregator.errors import ForbiddenError, NotFoundError
from gateway.aggregator.formats import BlobFormat
from gateway.aggregator.leaves import dev_leaves
from gateway.aggregator.state import AggregatorState
from gateway.aggregator.store import Store
from gateway.aggregator.websocket import Hub, TicketStore
from gateway.weights import LEARNING
from tests.support.aggregator import settings_for
from tests.support.weights import read_v1, sdk_weights

LAYERS: list[np.ndarray[Any, Any]] = [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.ones(4, dtype=np.float64),
]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[AggregatorState]:
    """A state over a real store holding one upload (weighting 12) of the first dev leaf."""
    settings = settings_for(tmp_path / "agg", dev_leaves=1)
    leaves, _ = dev_leaves(settings.data_dir, 1)
    store = Store(settings.data_dir)
    store.replace_leaves(leaves, "start")
    state = AggregatorState(
        settings=settings,
        store=store,
        tickets=TicketStore(),
        hub=Hub(),
        admin_token="unused",
        blob_key=b"blob-key",
    )
    try:
        yield state
    finally:
        store.close()


def _upload(state: AggregatorState, tmp_path: Path) -> str:
    source = sdk_weights(tmp_path / "upload.npz", 12.0, LAYERS)
    size, digest = source.stat().st_size, hashlib.sha256(source.read_bytes()).digest()
    leaf = state.store.leaves()[0]
    branch = state.store.branch(leaf.branch_id)
    assert branch is not None
    file_id, _ = state.store.add_upload(
        leaf, branch, base64.b64encode(digest).decode(), size, source, LEARNING, 12.0, {}
    )
    return file_id


def _signed(state: AggregatorState, fmt: BlobFormat, file_id: str) -> tuple[str, int, str]:
    scope = {"type": "http", "scheme": "http", "server": ("agg", 80), "path": "/", "headers": []}
    url = urlsplit(blob_url(state, Request(scope), fmt, file_id))
    query = parse_qs(url.query)
    return url.path, int(query["expires"][0]), query["signature"][0]


def test_serves_the_stored_npz_and_a_v1_copy(state: AggregatorState, tmp_path: Path) -> None:
    """`npz` sends the stored file as `<id>.npz`; `npy` sends its v1 copy `<id>.npy` with the weighting as samples."""
    file_id = _upload(state, tmp_path)
    stored = Path(state.store.uploads_dir / f"{file_id}.npz")

    path, expires, signature = _signed(state, "npz", file_id)
    assert path == f"/api/v1/blob/{file_id}"
    npz = anyio.run(serve_blob, state, "npz", file_id, expires, signature)
    assert (Path(npz.path), npz.filename) == (stored, f"{file_id}.npz")

    path, expires, signature = _signed(state, "npy", file_id)
    assert path == f"/v1/blob/{file_id}"
    npy = anyio.run(serve_blob, state, "npy", file_id, expires, signature)
    assert (Path(npy.path), npy.filename) == (stored.with_suffix(".v1.npy"), f"{file_id}.npy")
    samples, layers = read_v1(Path(npy.path))
    assert samples == 12
    assert all(np.array_equal(a, b) for a, b in zip(layers, LAYERS, strict=True))
    assert len(state.file_locks) == 0


def test_signature_binds_format_and_file(state: AggregatorState, tmp_path: Path) -> None:
    """A signature made for one format or file opens nothing else (403); a signed unknown id is 404."""
    file_id = _upload(state, tmp_path)
    _, expires, signature = _signed(state, "npz", file_id)
    with pytest.raises(ForbiddenError, match="/v1/file/download"):
        anyio.run(serve_blob, state, "npy", file_id, expires, signature)
    with pytest.raises(ForbiddenError, match="/api/v1/file/download"):
        anyio.run(serve_blob, state, "npz", "another-id", expires, signature)
    _, expires, signature = _signed(state, "npy", "another-id")
    with pytest.raises(NotFoundError):
        anyio.run(serve_blob, state, "npy", "another-id", expires, signature)


def test_a_non_ascii_signature_is_403(state: AggregatorState, tmp_path: Path) -> None:
    """A signature holding non-ASCII characters is refused with 403 (not a TypeError from compare_digest)."""
    file_id = _upload(state, tmp_path)
    _, expires, signature = _signed(state, "npz", file_id)
    with pytest.raises(ForbiddenError, match="Bad download signature"):
        anyio.run(serve_blob, state, "npz", file_id, expires, "é" + signature[1:])
