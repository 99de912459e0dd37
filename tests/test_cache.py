"""The aggregation download cache without a server: fetched once, ids checked, bounded, evicted."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import numpy as np
import pytest

from gateway.cache import AggregateSource, AggregationCache, Format, Served
from gateway.errors import BadRequestError, GatewayError, UpstreamUnavailableError
from gateway.weights import Limits
from tests.support.aggregator import Running
from tests.support.fake_branchkey import FakeBranchKey, session_with
from tests.support.gateways import gateway_settings, run_gateway, write_credentials
from tests.support.weights import read_v1, sdk_weights, write_v1

LAYERS = [np.arange(4, dtype=np.float32), np.full((2, 2), 0.5, dtype=np.float32)]


def _cache(tmp_path: Path, keep: int = 5, limits: Limits | None = None) -> AggregationCache:
    folder, scratch = tmp_path / "cache", tmp_path / "tmp"
    folder.mkdir(exist_ok=True)
    scratch.mkdir(exist_ok=True)
    return AggregationCache(folder, scratch, limits or Limits(), keep)


def _aggregate(tmp_path: Path, name: str = "agg") -> bytes:
    return sdk_weights(tmp_path / f"{name}.npz", 2.0, LAYERS).read_bytes()


def _assert_layers(path: Path) -> None:
    """`path` is an NPZ of exactly the aggregate's layers."""
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["layer_0", "layer_1"]
        for key, layer in zip(("layer_0", "layer_1"), LAYERS, strict=True):
            np.testing.assert_array_equal(npz[key], layer)


def _open(
    cache: AggregationCache, fake: FakeBranchKey, *ids: str, fmt: Format = Format.npz
) -> list[Served | GatewayError]:
    async def main() -> list[Served | GatewayError]:
        results: list[Served | GatewayError] = []
        async with session_with(fake) as session:
            for aggregation_id in ids:
                try:
                    results.append(await cache.open(session.require, aggregation_id, fmt))
                except GatewayError as error:
                    results.append(error)
        return results

    return anyio.run(main)


def test_an_aggregation_is_fetched_once_and_served_from_disk(tmp_path: Path) -> None:
    """Two downloads of one id make one download call and one blob fetch; both get the blob's sha256."""
    body = _aggregate(tmp_path)
    fake = FakeBranchKey(blobs={"agg-1": body})
    cache = _cache(tmp_path)
    first, second = _open(cache, fake, "agg-1", "agg-1")
    assert isinstance(first, Served)
    assert isinstance(second, Served)
    assert first.sha256 == second.sha256 == hashlib.sha256(first.path.read_bytes()).hexdigest()
    _assert_layers(first.path)
    assert first.path != second.path  # private links: each response removes its own
    assert fake.calls("/api/v1/file/download/") == 1
    assert fake.calls("/blob/") == 1


@pytest.mark.parametrize("bad", [".hidden", "..", "a/b", "a\\b", "x" * 201, "nul\0", ""])
def test_ids_that_could_name_other_files_are_refused(tmp_path: Path, bad: str) -> None:
    """Leading dots, separators, NUL and overlong ids are a 400 before BranchKey is asked."""
    fake = FakeBranchKey(blobs={bad: b"never"})
    [result] = _open(_cache(tmp_path), fake, bad)
    assert isinstance(result, BadRequestError)
    assert fake.requests == []


def test_a_cached_file_needs_no_session(tmp_path: Path) -> None:
    """Once cached, an aggregation is served without asking for the session (logged out is fine)."""
    body = _aggregate(tmp_path)
    fake = FakeBranchKey(blobs={"agg-1": body})
    cache = _cache(tmp_path)
    _open(cache, fake, "agg-1")

    def no_session() -> AggregateSource:
        raise AssertionError("the session was asked for a cached file")

    served = anyio.run(cache.open, no_session, "agg-1", Format.npz)
    _assert_layers(served.path)


def test_concurrent_downloads_of_one_id_fetch_it_once(tmp_path: Path) -> None:
    """Eight concurrent opens of one new id share one fetch (the per-id lock) and free the lock table."""
    fake = FakeBranchKey(blobs={"agg-1": _aggregate(tmp_path)})
    cache = _cache(tmp_path)
    digests: list[str] = []

    async def main() -> None:
        async with session_with(fake) as session, anyio.create_task_group() as group:
            for _ in range(8):

                async def one() -> None:
                    digests.append((await cache.open(session.require, "agg-1", Format.npz)).sha256)

                group.start_soon(one)

    anyio.run(main)
    assert len(set(digests)) == 1
    assert len(digests) == 8
    assert fake.calls("/blob/") == 1
    assert len(cache.locks) == 0


def test_a_blob_over_the_limit_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    """A blob larger than GATEWAY_MAX_UNCOMPRESSED_BYTES is a 502; no cache or scratch file remains."""
    fake = FakeBranchKey(blobs={"agg-1": _aggregate(tmp_path)})
    cache = _cache(tmp_path, limits=Limits(max_total_uncompressed_bytes=64))
    [result] = _open(cache, fake, "agg-1")
    assert isinstance(result, UpstreamUnavailableError)
    assert "GATEWAY_MAX_UNCOMPRESSED_BYTES" in result.detail
    assert list(cache.folder.iterdir()) == []
    assert list(cache.scratch.iterdir()) == []


def test_a_failed_blob_is_an_error_never_a_model(tmp_path: Path) -> None:
    """A 500 from the blob URL is an error, and the id is fetched again next time."""
    body = _aggregate(tmp_path)
    fake = FakeBranchKey(blobs={"agg-1": body}, blob_status=500)
    cache = _cache(tmp_path)
    [failed] = _open(cache, fake, "agg-1")
    assert isinstance(failed, GatewayError)
    assert list(cache.folder.iterdir()) == []
    fake.blob_status = 200
    [served] = _open(cache, fake, "agg-1")
    assert isinstance(served, Served)
    _assert_layers(served.path)


def test_only_the_newest_aggregations_are_kept(tmp_path: Path) -> None:
    """With keep=2, a third aggregation evicts the oldest (both of its formats and digests)."""
    fake = FakeBranchKey(blobs={f"agg-{n}": _aggregate(tmp_path, f"a{n}") for n in (1, 2, 3)})
    cache = _cache(tmp_path, keep=2)
    _open(cache, fake, "agg-1", fmt=Format.npy)
    _open(cache, fake, "agg-2", "agg-3")
    names = sorted(p.name for p in cache.folder.iterdir())
    assert names == ["agg-2.npz", "agg-2.npz.sha256", "agg-3.npz", "agg-3.npz.sha256"]


def test_the_v1_format_is_made_from_the_cached_npz(tmp_path: Path) -> None:
    """`?format=npy` writes the v1 object array from the NPZ (0 samples for a v3 upstream)."""
    fake = FakeBranchKey(blobs={"agg-1": _aggregate(tmp_path)})
    cache = _cache(tmp_path)
    [served] = _open(cache, fake, "agg-1", fmt=Format.npy)
    assert isinstance(served, Served)
    samples, layers = read_v1(served.path)
    assert samples == 0
    np.testing.assert_array_equal(layers[0], LAYERS[0])
    assert fake.calls("/blob/") == 1


def test_a_v1_upstreams_file_keeps_its_sample_count_for_the_v1_format(tmp_path: Path) -> None:
    """A v1 upstream's object `.npy` is cached as the NPZ alone (with its sample count beside it);
    `?format=npy` then writes the v1 file from the NPZ with that count, and eviction removes it."""
    blob = write_v1(tmp_path / "v1.npy", 6, LAYERS).read_bytes()
    fake = FakeBranchKey(blobs={"agg-1": blob, "agg-2": _aggregate(tmp_path)})
    cache = _cache(tmp_path, keep=1)
    [plain] = _open(cache, fake, "agg-1")
    assert isinstance(plain, Served)
    _assert_layers(plain.path)
    names = sorted(p.name for p in cache.folder.iterdir())
    assert names == ["agg-1.npz", "agg-1.npz.samples", "agg-1.npz.sha256"]
    [v1] = _open(cache, fake, "agg-1", fmt=Format.npy)
    assert isinstance(v1, Served)
    samples, layers = read_v1(v1.path)
    assert samples == 6
    np.testing.assert_array_equal(layers[1], LAYERS[1])
    assert fake.calls("/blob/") == 1
    _open(cache, fake, "agg-2")
    assert sorted(p.name for p in cache.folder.iterdir()) == ["agg-2.npz", "agg-2.npz.sha256"]


def test_start_up_removes_partial_files_a_crash_left(aggregator: Running, tmp_path: Path) -> None:
    """A gateway starting over a cache holding `.<name>.<hex>` partials removes them and keeps the cached files."""
    credentials = write_credentials(tmp_path / "leaf.json", aggregator.leaves[0])
    settings = gateway_settings(
        tmp_path / "gw", bk_host=aggregator.url, bk_credentials_file=credentials
    )
    cache = settings.gateway_data_dir / "cache"
    cache.mkdir(parents=True)
    partials = [cache / ".agg-1.npz.0123456789abcdef", cache / ".agg-2.npy.fedcba9876543210"]
    kept = [cache / "agg-1.npz", cache / "agg-1.npz.sha256"]
    for path in partials + kept:
        path.write_bytes(b"x")
    with run_gateway(settings):
        assert [path.exists() for path in partials] == [False, False]
        assert [path.exists() for path in kept] == [True, True]
