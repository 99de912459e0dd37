"""The leaf's name map on disk and the files derived with it, without a server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import numpy as np
import pytest
from safetensors.numpy import load_file

from gateway.errors import BadRequestError, NameMapConflictError, NoNameMapError
from gateway.names import MAP_FILE, DownloadFormat, NamedDownloads, Names, Plain, wants_names
from gateway.weights import Limits
from gateway.weights.names import NamedTensor, NameMap
from tests.support.weights import write_npz

NAMES = NameMap("safetensors", (NamedTensor("w", "F32", (2, 2)), NamedTensor("b", "F16", (2,))))


def _downloads(tmp_path: Path, keep: int = 2) -> NamedDownloads:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    downloads = NamedDownloads(tmp_path, tmp_path / "tmp", Limits(), keep)
    downloads.load()
    return downloads


def _plain(tmp_path: Path, name: str, scale: float = 1.0) -> Plain:
    path = write_npz(
        tmp_path / f"{name}.npz",
        {"layer_0": np.ones((2, 2), np.float32) * scale, "layer_1": np.arange(2, dtype=np.float16)},
        compress=False,
    )
    return Plain(path, hashlib.sha256(path.read_bytes()).hexdigest())


def test_the_map_survives_a_restart_and_a_layer_upload_forgets_it(tmp_path: Path) -> None:
    """`remember` writes names.json, a new instance reads it back, and None removes it."""
    anyio.run(_downloads(tmp_path).remember, NAMES)
    again = _downloads(tmp_path)
    assert again.current == NAMES
    anyio.run(again.remember, None)
    assert not (tmp_path / MAP_FILE).exists()
    assert _downloads(tmp_path).current is None


def test_a_damaged_map_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A names.json that is not a map (a crash, a hand edit) counts as none, with a warning."""
    for damaged in (
        '{"version": 1, "tensors": 3',
        '{"version": 1, "source": "npz", "tensors": [["w", "<f4", [2]]], "metadata": []}',
        '{"version": 1, "source": "npz", "tensors": [["w", "<f4"]], "metadata": {}}',
    ):
        (tmp_path / MAP_FILE).write_text(damaged)
        assert _downloads(tmp_path).current is None
    assert "not a name map" in caplog.text


def test_files_are_made_once_and_the_newest_kept(tmp_path: Path) -> None:
    """A derived file is written once per (aggregate, map) with a stable digest; only `keep` stay."""
    downloads = _downloads(tmp_path, keep=2)
    anyio.run(downloads.remember, NAMES)

    def open_(plain: Plain) -> str:
        served = anyio.run(downloads.open, plain, "a", DownloadFormat.safetensors, None)
        assert set(load_file(str(served.path))) == {"w", "b"}
        served.path.unlink()
        return served.sha256

    plains = [_plain(tmp_path, f"agg{i}", scale=i + 1) for i in range(3)]
    first = open_(plains[0])
    assert open_(plains[0]) == first
    open_(plains[1])
    open_(plains[2])
    kept = sorted(p.name for p in (tmp_path / "named").iterdir() if p.suffix != ".sha256")
    assert kept == sorted(f"{p.sha256}-{NAMES.digest}.safetensors" for p in plains[1:])


def test_no_map_and_a_misfit_are_409s(tmp_path: Path) -> None:
    """Without names: names/no-map; names of another shape: names/mismatch; npy has no names."""
    downloads = _downloads(tmp_path)
    plain = _plain(tmp_path, "agg")
    with pytest.raises(NoNameMapError):
        anyio.run(downloads.open, plain, "a", DownloadFormat.safetensors, None)
    anyio.run(downloads.remember, NameMap("npz", (NamedTensor("w", "<f4", (4,)),)))
    with pytest.raises(NameMapConflictError):
        anyio.run(downloads.open, plain, "a", DownloadFormat.npz, Names.original)
    assert list((tmp_path / "named").iterdir()) == []
    with pytest.raises(BadRequestError):
        wants_names(DownloadFormat.npy, Names.original)
    assert not wants_names(DownloadFormat.npz, None)
    assert wants_names(DownloadFormat.safetensors, Names.layer)
