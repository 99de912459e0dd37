"""Federated analytics on the aggregator (§5.9.6): bundles combined by suffix, other fields by their operation."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.aggregator import ADMIN, Running, start
from tests.support.gateways import gateway_settings, run_gateway
from tests.support.http import admin_get
from tests.support.waiting import wait_until

Array = np.ndarray[Any, Any]
_KIND = "__bk_payload_kind__"


def save_analytics(path: Path, columns: dict[str, Array], **extra: Array) -> Path:
    """The archive the client's `save_analytics` writes (six keys per column, NaNs omitted), plus `extra` fields."""
    arrays: dict[str, Array] = {}
    for name, values in columns.items():
        data = np.asarray(values, dtype=np.float64)
        kept = data[~np.isnan(data)]
        arrays[f"{name}_n"] = np.array([kept.size], dtype=np.int64)
        arrays[f"{name}_sum"] = np.array([kept.sum()])
        arrays[f"{name}_sumsq"] = np.array([(kept * kept).sum()])
        arrays[f"{name}_min"] = np.array([kept.min()])
        arrays[f"{name}_max"] = np.array([kept.max()])
        arrays[f"{name}_nan"] = np.array([data.size - kept.size], dtype=np.int64)
    arrays.update(extra)
    arrays["weighting"] = np.array([0.0])
    arrays[_KIND] = np.array("federated_analytics")
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path


def _done(agg: Running, client: httpx.Client, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = admin_get(agg.url, ADMIN, "aggregations", client)
        if len([a for a in found if a["status"] != "pending"]) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} aggregations did not finish within 20 s")


def _download(agg: Running, client: httpx.Client, file_id: str) -> dict[str, Array]:
    answer = client.get(f"{agg.url}/api/v1/file/download/{file_id}", headers=agg.auth())
    assert answer.status_code == 200, answer.text
    with np.load(io.BytesIO(client.get(answer.json()["data"]["download_url"]).content)) as data:
        return {key: data[key] for key in data.files}


def _assign(agg: Running, client: httpx.Client, fields: dict[str, str]) -> httpx.Response:
    return client.put(f"{agg.url}/admin/fields", headers=agg.admin, json={"fields": fields})


def test_save_analytics_bundles_are_combined_with_derived_statistics(tmp_path: Path) -> None:
    """Three sites' bundles: n, sum, sumsq and nan summed, min and max taken, and mean, variance, std and
    range derived, equal to the statistics of all the sites' values together."""
    rng = np.random.default_rng(3)
    sites = [rng.normal(10, 2, size) for size in (5, 40, 17)]
    sites[1][[3, 7]] = np.nan
    with start(tmp_path / "agg") as agg, httpx.Client() as client:
        for leaf, values in enumerate(sites):
            path = save_analytics(tmp_path / f"site-{leaf}.npz", {"age": values})
            answer = agg.upload(client, path, leaf)
            assert answer.status_code == 201, answer.text
        [aggregation] = _done(agg, client, 1)
        assert aggregation["status"] == "done", aggregation
        result = _download(agg, client, aggregation["aggregation_id"])
    everything = np.concatenate(sites)
    kept = everything[~np.isnan(everything)]
    assert str(result[_KIND]) == "federated_analytics"
    assert "weighting" not in result
    assert result["age_n"].tolist() == [kept.size]
    assert result["age_nan"].tolist() == [2]
    np.testing.assert_allclose(result["age_sum"], [kept.sum()])
    np.testing.assert_allclose(result["age_sumsq"], [(kept * kept).sum()])
    assert result["age_min"].tolist() == [kept.min()]
    assert result["age_max"].tolist() == [kept.max()]
    np.testing.assert_allclose(result["age_mean"], [kept.mean()])
    np.testing.assert_allclose(result["age_variance"], [kept.var()])
    np.testing.assert_allclose(result["age_std"], [kept.std()])
    np.testing.assert_allclose(result["age_range"], [kept.max() - kept.min()])


def test_other_fields_need_an_operation_assigned_before_upload(tmp_path: Path) -> None:
    """A field without a bundle suffix is refused (422 unassigned_field) until the branch assigns an operation;
    then sum, mean and must_match combine it, and a must_match field that differs is refused."""
    histogram = [np.array([1, 2, 3]), np.array([4, 0, 1]), np.array([0, 0, 2])]
    with start(tmp_path / "agg") as agg, httpx.Client() as client:
        first = save_analytics(
            tmp_path / "0.npz", {}, hist=histogram[0], score=np.array([0.5]), site=np.array(["eu"])
        )
        refused = agg.upload(client, first, 0)
        assert refused.status_code == 422
        assert refused.json()["code"] == "unassigned_field"
        assert "'hist'" in refused.json()["error"]
        bad = _assign(agg, client, {"hist": "median"})
        assert bad.status_code == 400
        assigned = _assign(agg, client, {"hist": "sum", "score": "mean", "site": "must_match"})
        assert assigned.status_code == 200, assigned.text
        assert assigned.json()["data"]["fields"] == {
            "hist": "sum",
            "score": "mean",
            "site": "must_match",
        }
        assert agg.upload(client, first, 0).status_code == 201
        elsewhere = save_analytics(
            tmp_path / "x.npz", {}, hist=histogram[1], score=np.array([1.0]), site=np.array(["us"])
        )
        mismatch = agg.upload(client, elsewhere, 1)
        assert mismatch.status_code == 422
        assert mismatch.json()["code"] == "must-match"
        for leaf, score in ((1, 1.5), (2, 2.5)):
            path = save_analytics(
                tmp_path / f"{leaf}.npz",
                {},
                hist=histogram[leaf],
                score=np.array([score]),
                site=np.array(["eu"]),
            )
            assert agg.upload(client, path, leaf).status_code == 201
        [aggregation] = _done(agg, client, 1)
        result = _download(agg, client, aggregation["aggregation_id"])
    assert result["hist"].tolist() == [5, 2, 6]
    assert result["score"].tolist() == [1.5]
    assert result["site"].tolist() == ["eu"]


def test_the_fields_of_a_run_are_fixed_by_its_first_upload(tmp_path: Path) -> None:
    """A missing field (field_missing), an unknown one, another dtype or shape, or a learning file in an
    analytics round are refused at upload with 422 naming the field."""
    with start(tmp_path / "agg") as agg, httpx.Client() as client:
        ages = np.array([30.0, 41.0])
        assert (
            agg.upload(client, save_analytics(tmp_path / "0.npz", {"age": ages}), 0).status_code
            == 201
        )
        cases = {
            "missing": (save_analytics(tmp_path / "m.npz", {"height": ages}), "field_missing"),
            "unknown": (
                save_analytics(tmp_path / "u.npz", {"age": ages, "height": ages}),
                "unknown_field",
            ),
        }
        for name, (path, code) in cases.items():
            answer = agg.upload(client, path, 1)
            assert answer.status_code == 422, (name, answer.text)
            assert answer.json()["code"] == code, (name, answer.text)
        with np.load(save_analytics(tmp_path / "base.npz", {"age": ages})) as archive:
            base = {key: archive[key] for key in archive.files}
        for name, change, expected in (
            ("shape", {"age_sum": np.array([1.0, 2.0])}, "'age_sum' has shape (2,) but (1,)"),
            ("dtype", {"age_n": np.array([2.0])}, "'age_n' has dtype <f8 but <i8"),
        ):
            np.savez(tmp_path / f"{name}.npz", **{**base, **change})
            answer = agg.upload(client, tmp_path / f"{name}.npz", 1)
            assert answer.status_code == 422, (name, answer.text)
            assert answer.json()["code"] == "field-mismatch"
            assert expected in answer.json()["error"], (name, answer.text)
        learning = tmp_path / "l.npz"
        np.savez(learning, weighting=np.array([1.0]), layer_0=np.ones(2))
        kind = agg.upload(client, learning, 1)
        assert kind.status_code == 422
        assert kind.json()["code"] == "kind-mismatch"


def test_the_gateways_analytics_upload_works_offline(tmp_path: Path) -> None:
    """`curl -F file=@analytics.npz localhost/upload` on a gateway with no BK_HOST: the embedded aggregator
    combines it and the gateway serves the result."""
    path = save_analytics(tmp_path / "stats.npz", {"loss": np.array([0.5, 0.25, 1.0])})
    with (
        run_gateway(gateway_settings(tmp_path / "gw")) as gateway,
        httpx.Client(timeout=30) as client,
    ):
        with path.open("rb") as file:
            answer = client.post(f"{gateway.url}/upload", files={"file": ("stats.npz", file)})
        assert answer.status_code == 201, answer.text

        def announced() -> bool:
            return client.get(f"{gateway.url}/aggregations/latest").status_code == 200

        wait_until(announced, 20, "the analytics aggregation announced by the embedded aggregator")
        latest = client.get(f"{gateway.url}/aggregations/latest").json()
        blob = client.get(f"{gateway.url}/aggregations/{latest['aggregation_id']}")
        assert blob.status_code == 200, blob.text
    with np.load(io.BytesIO(blob.content), allow_pickle=False) as result:
        assert result["loss_n"].tolist() == [3]
        assert result["loss_max"].tolist() == [1.0]
        np.testing.assert_allclose(result["loss_mean"], [1.75 / 3])
