"""The aggregator's admin page: open HTML, data only with the admin token (`/admin/overview`)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from tests.support.aggregator import Running
from tests.support.weights import sdk_weights


def test_overview_needs_the_admin_token(aggregator: Running) -> None:
    """The page and its assets load without a token; the overview answers 401 without the admin's."""
    with httpx.Client() as client:
        page = client.get(f"{aggregator.url}/")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        assert client.get(f"{aggregator.url}/static/admin.js").status_code == 200
        assert client.get(f"{aggregator.url}/static/leaves.json").status_code == 404
        refused = client.get(f"{aggregator.url}/admin/overview")
        assert refused.status_code == 401
        assert "admin token" in refused.json()["error"]
        leaf = client.get(f"{aggregator.url}/admin/overview", headers=aggregator.auth(0))
        assert leaf.status_code == 401


def test_overview_lists_rounds_leaves_and_last_uploads(aggregator: Running, tmp_path: Path) -> None:
    """After one upload: the open round names its leaf, that leaf's last upload is shown (no token
    anywhere), the others have none and no WebSocket."""
    path = sdk_weights(tmp_path / "w.npz", 3.0, [np.ones(4, np.float32)])
    with httpx.Client() as client:
        answer = aggregator.upload(client, path, leaf=1)
        assert answer.status_code in (200, 201), answer.text
        overview = client.get(f"{aggregator.url}/admin/overview", headers=aggregator.admin).json()
    (branch,) = overview["branches"]
    assert branch["round_leaves"] == [aggregator.leaves[1]["id"]]
    assert branch["min_leaves"] == 3
    leaves = {leaf["id"]: leaf for leaf in overview["leaves"]}
    uploaded = leaves[aggregator.leaves[1]["id"]]["last_upload"]
    assert uploaded["weighting"] == 3.0
    assert uploaded["size"] == path.stat().st_size
    assert leaves[aggregator.leaves[0]["id"]]["last_upload"] is None
    assert not any(leaf["websocket"] for leaf in leaves.values())
    assert overview["aggregations"] == []
    assert "session_token" not in str(overview)
