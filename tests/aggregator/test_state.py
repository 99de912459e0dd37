"""The per-branch lock table of the aggregator's shared state."""

from __future__ import annotations

from pathlib import Path

import anyio

from gateway.aggregator.state import AggregatorState
from gateway.aggregator.store import Store
from gateway.aggregator.websocket import Hub, TicketStore
from tests.support.aggregator import settings_for


def test_branch_lock_serialises_and_forgets_idle_locks(tmp_path: Path) -> None:
    """Holders of one branch's lock take turns, other branches do not wait, and no idle lock is kept."""
    settings = settings_for(tmp_path)
    store = Store(tmp_path)
    state = AggregatorState(settings, store, TicketStore(), Hub(), "unused", b"key")
    trace: list[str] = []

    async def hold(branch: str, name: str) -> None:
        async with state.branch_lock(branch):
            trace.append(f"{name} in")
            await anyio.sleep(0.05)
            trace.append(f"{name} out")

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(hold, "b1", "first")
            await anyio.sleep(0.01)
            group.start_soon(hold, "b1", "second")
            group.start_soon(hold, "b2", "other")
            await anyio.sleep(0.02)
            assert len(state.branch_locks) == 2

    try:
        anyio.run(main)
    finally:
        store.close()
    assert trace.index("second in") > trace.index("first out")
    assert trace.index("other in") < trace.index("first out")
    assert len(state.branch_locks) == 0
