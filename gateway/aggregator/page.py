"""The admin page at `/` (rounds, leaves, aggregations, run control) and `/admin/overview`, the one
request it refreshes from; the page is plain HTML that asks for the admin token, the data needs it."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from gateway.aggregator.auth import require_admin
from gateway.aggregator.errors import NotFoundError
from gateway.aggregator.records import Upload
from gateway.aggregator.rounds import min_leaves
from gateway.aggregator.state import AggregatorState, StateDep

page = APIRouter(include_in_schema=False)

ASSETS = Path(str(files("gateway") / "static"))
_FILES = {"page.css": "text/css", "page.js": "text/javascript", "admin.js": "text/javascript"}
RECENT_AGGREGATIONS = 50
"""Aggregations the overview lists, newest first."""


@page.get("/")
async def get_admin_page() -> FileResponse:
    """The admin page (it holds no data: its script asks for the admin token)."""
    return FileResponse(
        ASSETS / "admin.html", media_type="text/html", headers={"Cache-Control": "no-cache"}
    )


@page.get("/static/{name}")
async def get_asset(name: str) -> FileResponse:
    """One of the page's files (a fixed list)."""
    if name not in _FILES:
        raise NotFoundError(f"No asset named {name!r}.")
    return FileResponse(
        ASSETS / name, media_type=_FILES[name], headers={"Cache-Control": "public, max-age=3600"}
    )


@page.get("/admin/overview", dependencies=[Depends(require_admin)])
async def get_overview(state: StateDep) -> dict[str, Any]:
    """Branches with their open round, leaves (WebSocket connected or not, last upload), the newest
    aggregations."""
    return await to_thread.run_sync(_overview, state, state.hub.connected_leaves())


def _overview(state: AggregatorState, connected: set[str]) -> dict[str, Any]:
    store = state.store
    last: dict[str, Upload] = {}
    for upload in store.uploads():  # oldest first: the last one per leaf wins
        last[upload.leaf_id] = upload
    branches = []
    for branch in store.branches():
        uploads = store.round_uploads(branch.branch_id, branch.run_number, branch.round)
        branches.append(
            {
                **branch.__dict__,
                "round_leaves": sorted({u.leaf_id for u in uploads}),
                "min_leaves": min_leaves(state, branch.branch_id),
            }
        )
    leaves = [
        {
            **leaf.public(),
            "websocket": leaf.id in connected,
            "last_upload": _upload(last[leaf.id]) if leaf.id in last else None,
        }
        for leaf in store.leaves()
    ]
    aggregations = [a.__dict__ for a in reversed(store.aggregations()[-RECENT_AGGREGATIONS:])]
    for aggregation in aggregations:
        aggregation.pop("path", None)  # a server path means nothing to the page
    return {"branches": branches, "leaves": leaves, "aggregations": aggregations}


def _upload(upload: Upload) -> dict[str, Any]:
    return {
        "file_id": upload.file_id,
        "created_at": upload.created_at,
        "size": upload.size,
        "weighting": upload.weighting,
        "run_number": upload.run_number,
        "round": upload.round,
    }
