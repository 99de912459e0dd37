"""The aggregator's v3 REST API as BranchKey's client and a careful server see it (real sockets)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.aggregator import Running, start
from tests.support.weights import sdk_weights


def wait_for_aggregations(
    agg: Running, client: httpx.Client, count: int, timeout: float = 20
) -> list[dict[str, object]]:
    """Poll the admin API until `count` aggregations are done (or fail the test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = client.get(f"{agg.url}/admin/aggregations", headers=agg.admin).json()["data"]
        if len([a for a in found if a["status"] != "pending"]) >= count:
            return list(found)
        time.sleep(0.05)
    raise AssertionError(f"{count} aggregations did not finish in {timeout} s")


def download(agg: Running, client: httpx.Client, file_id: str, leaf: int = 0) -> bytes:
    """The official client's two-step download."""
    answer = client.get(
        f"{agg.url}/api/v1/file/download/{file_id}", headers={**agg.auth(leaf), "accept": "*/*"}
    )
    assert answer.status_code == 200, answer.text
    blob = client.get(answer.json()["data"]["download_url"])
    assert blob.status_code == 200
    return blob.content


def test_run_status_and_auth(aggregator: Running) -> None:
    """GET run answers 200 with status and number; bad tokens 401, foreign branches 403, '//' paths work."""
    with httpx.Client() as client:
        ok = client.get(
            f"{aggregator.url}/api/v1/run/{aggregator.branch}", headers=aggregator.auth()
        )
        assert ok.status_code == 200
        assert ok.json() == {"data": {"run_status": "start", "run_number": 1}}
        doubled = client.get(
            f"{aggregator.url}//api/v1/run/{aggregator.branch}", headers=aggregator.auth()
        )
        assert doubled.status_code == 200
        leaf = aggregator.leaves[0]
        for header in (f"Bearer {leaf['id']}:wrong", "Bearer nobody:x", "Basic abc", ""):
            bad = client.get(
                f"{aggregator.url}/api/v1/run/{aggregator.branch}",
                headers={"Authorization": header},
            )
            assert bad.status_code == 401
            assert "error" in bad.json()
        other = client.get(f"{aggregator.url}/api/v1/run/not-mine", headers=aggregator.auth())
        assert other.status_code == 403
        assert "error" in other.json()
        missing = client.get(f"{aggregator.url}/api/v1/nothing", headers=aggregator.auth())
        assert missing.status_code == 404
        assert "error" in missing.json()


def test_token_with_colons(tmp_path: Path) -> None:
    """The Bearer value is split on its first colon, so session tokens may contain colons."""
    leaves = [
        {
            "id": "leaf-a",
            "name": "a",
            "session_token": "tok:with:colons",
            "tree_id": "t",
            "branch_id": "b",
            "owner_id": "o",
        }
    ]
    (tmp_path / "leaves.json").write_text(json.dumps(leaves))
    with (
        start(tmp_path / "agg", leaves_file=tmp_path / "leaves.json") as agg,
        httpx.Client() as client,
    ):
        response = client.get(f"{agg.url}/api/v1/run/b", headers=agg.auth())
        assert response.status_code == 200


def test_three_leaves_complete_a_round(aggregator: Running, tmp_path: Path) -> None:
    """Three uploads close the round; the result is the weighted FedAvg, downloadable by every leaf."""
    rng = np.random.default_rng(3)
    weights = [10.0, 20.0, 70.0]
    models: list[list[np.ndarray[Any, Any]]] = [
        [rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal(3)] for _ in weights
    ]
    with httpx.Client() as client:
        for leaf, (w, model) in enumerate(zip(weights, models, strict=True)):
            path = sdk_weights(tmp_path / f"leaf{leaf}.npz", w, model)
            response = aggregator.upload(client, path, leaf)
            assert response.status_code == 201, response.text
            assert set(response.json()["data"]) == {"file_id"}
        (aggregation,) = wait_for_aggregations(aggregator, client, 1)
        assert aggregation["status"] == "done"
        for leaf in range(3):
            with np.load(
                io.BytesIO(download(aggregator, client, str(aggregation["aggregation_id"]), leaf))
            ) as data:
                assert data.files == ["layer_0", "layer_1"]
                for index in range(2):
                    expected = (
                        sum(
                            w * m[index].astype(np.float64)
                            for w, m in zip(weights, models, strict=True)
                        )
                        / 100
                    )
                    np.testing.assert_allclose(
                        data[f"layer_{index}"], expected, rtol=1e-6, atol=1e-6
                    )
        rounds = client.get(f"{aggregator.url}/admin/rounds", headers=aggregator.admin).json()[
            "data"
        ]
        assert rounds[0]["round"] == 1
        assert rounds[0]["leaves"] == []


def test_duplicate_and_replacing_uploads(aggregator: Running, tmp_path: Path) -> None:
    """A re-sent upload returns the same file id and is stored once; a newer one replaces the older."""
    first = sdk_weights(tmp_path / "a.npz", 1, [np.ones(3)])
    second = sdk_weights(tmp_path / "b.npz", 2, [np.zeros(3)])
    with httpx.Client() as client:
        one = aggregator.upload(client, first).json()["data"]["file_id"]
        again = aggregator.upload(client, first).json()["data"]["file_id"]
        assert one == again
        newer = aggregator.upload(client, second).json()["data"]["file_id"]
        assert newer != one
        uploads = client.get(f"{aggregator.url}/admin/uploads", headers=aggregator.admin).json()[
            "data"
        ]
        assert len(uploads) == 2
        assert [u["active"] for u in uploads] == [0, 1]
        assert len(list((aggregator.data_dir / "uploads").iterdir())) == 2
        forced = client.post(
            f"{aggregator.url}/admin/aggregate?wait=true", headers=aggregator.admin
        )
        assert forced.status_code == 200
        result = download(aggregator, client, forced.json()["data"]["aggregation_id"])
        with np.load(io.BytesIO(result)) as data:
            assert data["layer_0"].tolist() == [0.0, 0.0, 0.0]  # only the newer upload counts


def test_integrity_and_validation_errors(tmp_path: Path) -> None:
    """Digest or size mismatch -> 422, malformed headers -> 400, oversize -> 413, bad archive -> 422; nothing kept."""
    with start(tmp_path / "agg", max_upload_bytes=4096) as agg, httpx.Client() as client:
        path = sdk_weights(tmp_path / "w.npz", 1, [np.ones(3)])
        wrong = "sha256=" + "A" * 43 + "="
        assert agg.upload(client, path, x_bk_file_digest=wrong).status_code == 422
        assert agg.upload(client, path, x_bk_file_size="5").status_code == 422
        assert agg.upload(client, path, x_bk_file_digest="md5=abc").status_code == 400
        assert agg.upload(client, path, x_bk_file_size="ten").status_code == 400
        big = sdk_weights(tmp_path / "big.npz", 1, [np.random.default_rng(0).standard_normal(4000)])
        too_big = agg.upload(client, big)
        assert too_big.status_code == 413
        assert "error" in too_big.json()
        bad = tmp_path / "bad.npz"
        np.savez(bad, layer_0=np.ones(2))
        refused = agg.upload(client, bad)
        assert refused.status_code == 422
        assert "weighting" in refused.json()["error"]
        assert list((agg.data_dir / "tmp").iterdir()) == []
        assert list((agg.data_dir / "uploads").iterdir()) == []
        no_file = client.post(
            f"{agg.url}/api/v1/file/upload",
            headers=agg.auth(),
            data={"data": "{}"},
            files={"other": ("x", b"1")},
        )
        assert no_file.status_code == 400


def test_v1_object_npy_upload_is_converted(aggregator: Running, tmp_path: Path) -> None:
    """A v1 object .npy is validated without pickle and stored as an NPZ."""
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = 5, [np.arange(4, dtype=np.float32)]
    path = tmp_path / "v1.npy"
    with path.open("wb") as out:
        np.save(out, pair, allow_pickle=True)
    with httpx.Client() as client:
        response = aggregator.upload(client, path)
        assert response.status_code == 201, response.text
        file_id = response.json()["data"]["file_id"]
        with np.load(io.BytesIO(download(aggregator, client, file_id))) as data:
            assert data["weighting"].tolist() == [5.0]
            assert data["layer_0"].tolist() == [0, 1, 2, 3]


def test_run_gating_and_run_numbers(aggregator: Running, tmp_path: Path) -> None:
    """Uploads are refused with 409 unless the run is started; a start after a stop opens a new run
    number, a start after a pause resumes the same run."""
    path = sdk_weights(tmp_path / "w.npz", 1, [np.ones(3)])
    with httpx.Client() as client:
        assert aggregator.set_run(client, "stop")["run_status"] == "stop"
        refused = aggregator.upload(client, path)
        assert refused.status_code == 409
        assert "not started" in refused.json()["error"]
        assert aggregator.set_run(client, "start")["run_number"] == 2
        assert aggregator.set_run(client, "pause")["run_number"] == 2
        assert aggregator.set_run(client, "start")["run_number"] == 2
        assert aggregator.set_run(client, "stop")["run_number"] == 2
        assert aggregator.set_run(client, "start")["run_number"] == 3
        assert aggregator.upload(client, path).status_code == 201


def test_downloads_are_signed_and_ranged(tmp_path: Path) -> None:
    """Download URLs are absolute, signed and expiring; the blob supports Range; others' files are 403."""
    with start(tmp_path / "agg", blob_url_ttl_s=1.0) as agg, httpx.Client() as client:
        path = sdk_weights(tmp_path / "w.npz", 1, [np.arange(100.0)])
        file_id = agg.upload(client, path).json()["data"]["file_id"]
        url = client.get(f"{agg.url}/api/v1/file/download/{file_id}", headers=agg.auth()).json()[
            "data"
        ]["download_url"]
        assert url.startswith(agg.url + "/")
        part = client.get(url, headers={"Range": "bytes=0-9"})
        assert part.status_code == 206
        assert len(part.content) == 10
        assert client.get(url.replace("signature=", "signature=0")).status_code == 403
        assert (
            client.get(f"{agg.url}/api/v1/file/download/{file_id}", headers=agg.auth(1)).status_code
            == 403
        )
        assert (
            client.get(f"{agg.url}/api/v1/file/download/unknown", headers=agg.auth()).status_code
            == 404
        )
        time.sleep(2.1)
        expired = client.get(url)
        assert expired.status_code == 403
        assert "expired" in expired.json()["error"]


def test_metrics_config_and_ticket(aggregator: Running, tmp_path: Path) -> None:
    """Metrics are stored (body parsed whatever its type), branch config has its shape, tickets are 200 JSON."""
    with httpx.Client() as client:
        aggregator.upload(client, sdk_weights(tmp_path / "w.npz", 1, [np.ones(2)]))
        aggregation_id = client.post(
            f"{aggregator.url}/admin/aggregate?wait=true", headers=aggregator.admin
        ).json()["data"]["aggregation_id"]
        report = aggregator.report(0, aggregation_id, {"acc": 0.9})
        created = client.post(
            f"{aggregator.url}/api/v1/performance/analysis",
            headers=aggregator.auth(),
            content=json.dumps(report),
        )
        assert created.status_code == 201
        stored = client.get(f"{aggregator.url}/admin/metrics", headers=aggregator.admin).json()[
            "data"
        ]
        assert stored[0]["data"] == json.dumps({"acc": 0.9})
        assert stored[0]["mode"] == "test"
        spoofed = client.post(
            f"{aggregator.url}/api/v1/performance/analysis",
            headers=aggregator.auth(1),
            content=json.dumps(report),
        )
        assert spoofed.status_code == 403
        config = client.get(
            f"{aggregator.url}/api/v1/config/branch/{aggregator.branch}", headers=aggregator.auth()
        )
        assert config.status_code == 200
        assert set(config.json()["data"]) == {"branch", "service", "created_at", "updated_at"}
        ticket = client.post(f"{aggregator.url}/api/v1/ws/ticket", headers=aggregator.auth())
        assert ticket.status_code == 200
        assert ticket.headers["content-type"] == "application/json"
        assert set(ticket.json()["data"]) == {"ticket_id", "request_id", "expires_at"}
        assert client.get(f"{aggregator.url}/admin/leaves").status_code == 401


def test_state_survives_restart(tmp_path: Path) -> None:
    """After a restart, tokens, run state and known ids are still there and still download."""
    path = sdk_weights(tmp_path / "w.npz", 1, [np.arange(3.0)])
    with start(tmp_path / "agg") as agg, httpx.Client() as client:
        file_id = agg.upload(client, path).json()["data"]["file_id"]
        aggregation_id = client.post(
            f"{agg.url}/admin/aggregate?wait=true", headers=agg.admin
        ).json()["data"]["aggregation_id"]
        agg.set_run(client, "pause")
    with start(tmp_path / "agg") as again, httpx.Client() as client:
        assert (
            client.get(f"{again.url}/api/v1/run/{again.branch}", headers=again.auth()).json()[
                "data"
            ]["run_status"]
            == "pause"
        )
        with np.load(io.BytesIO(download(again, client, aggregation_id))) as data:
            assert data["layer_0"].tolist() == [0.0, 1.0, 2.0]
        assert len(download(again, client, file_id)) == path.stat().st_size


def test_admin_requires_token(aggregator: Running) -> None:
    """Every admin route refuses requests without the admin token."""
    with httpx.Client() as client:
        for route in ("leaves", "branches", "rounds", "uploads", "aggregations", "metrics"):
            assert (
                client.get(f"{aggregator.url}/admin/{route}", headers=aggregator.auth()).status_code
                == 401
            )
        assert (
            client.post(f"{aggregator.url}/admin/run", json={"status": "stop"}).status_code == 401
        )


def test_deeply_nested_json_bodies_get_400(aggregator: Running) -> None:
    """JSON nested 100 000 levels deep sent to the report and admin routes is a 400, not a 500 (RecursionError)."""
    body = "[" * 100_000 + "]" * 100_000
    with httpx.Client(base_url=aggregator.url, timeout=30) as client:
        report = client.post(
            "/api/v1/performance/analysis", headers=aggregator.auth(), content=body
        )
        admin = client.post("/admin/run", headers=aggregator.admin, content=body)
    assert (report.status_code, admin.status_code) == (400, 400), (report.text, admin.text)
    assert "nested too deeply" in report.json()["error"]


def test_reports_on_unknown_or_foreign_aggregations_get_404(tmp_path: Path) -> None:
    """A performance report names an aggregation of the leaf's own branch: unknown ids and another branch's
    aggregation get 404 (both dialects), and nothing is stored."""
    leaves = [
        {
            "id": f"leaf-{name}",
            "name": name,
            "session_token": f"token-{name}",
            "tree_id": "tree",
            "branch_id": f"branch-{name}",
            "owner_id": "owner",
        }
        for name in ("a", "b")
    ]
    (tmp_path / "leaves.json").write_text(json.dumps(leaves))
    path = tmp_path / "w.npz"
    np.savez(path, weighting=np.array([1.0]), layer_0=np.ones(2))
    with (
        start(tmp_path / "agg", leaves_file=tmp_path / "leaves.json") as agg,
        httpx.Client() as client,
    ):
        assert (
            agg.upload(client, path, 1).status_code == 201
        )  # branch-b's only leaf: its round closes
        foreign = str(wait_for_aggregations(agg, client, 1)[0]["aggregation_id"])
        for aggregation_id in ("agg-1", foreign):
            report = agg.report(0, aggregation_id, {"acc": 0.5})
            v3 = client.post(
                f"{agg.url}/api/v1/performance/analysis",
                headers=agg.auth(0),
                content=json.dumps(report),
            )
            v1 = client.post(
                f"{agg.url}/v1/performance/analysis",
                auth=("leaf-a", "token-a"),
                content=json.dumps(report),
            )
            assert (v3.status_code, v1.status_code) == (404, 404), (v3.text, v1.text)
            assert "No aggregation" in v3.json()["error"]
        mine = agg.report(1, foreign, {"acc": 0.5})
        accepted = client.post(
            f"{agg.url}/api/v1/performance/analysis", headers=agg.auth(1), content=json.dumps(mine)
        )
        assert accepted.status_code == 201
        assert len(client.get(f"{agg.url}/admin/metrics", headers=agg.admin).json()["data"]) == 1
