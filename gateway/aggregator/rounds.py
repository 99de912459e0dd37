"""The round engine: when a round is complete, closing it, and aggregating it (FedAvg) in the background."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anyio
from anyio import to_thread

from gateway._io import disk_full, sha256_file
from gateway.aggregator.analytics import combine_analytics
from gateway.aggregator.errors import NotFoundError
from gateway.aggregator.records import Branch, Upload
from gateway.aggregator.state import AggregatorState
from gateway.aggregator.websocket import aggregation_message
from gateway.weights import ANALYTICS, fedavg

log = logging.getLogger("gateway.aggregator")


async def get_branch(state: AggregatorState, branch_id: str) -> Branch:
    """The branch with this id, else 404."""
    branch = await to_thread.run_sync(state.store.branch, branch_id)
    if branch is None:
        raise NotFoundError(f"Unknown branch {branch_id!r}.")
    return branch


def min_leaves(state: AggregatorState, branch_id: str) -> int:
    """Distinct leaves that complete a round of this branch (reads the store: call it in a worker thread)."""
    configured = state.settings.min_leaves
    return configured if configured is not None else len(state.store.leaves(branch_id))


async def maybe_close_round(
    state: AggregatorState, branch: Branch, force: bool = False
) -> str | None:
    """Close the branch's current round if it is complete (or forced) and start its aggregation.

    The aggregation id, or None if the round stays open. Call it holding the branch's lock.
    """
    uploads = await to_thread.run_sync(
        state.store.round_uploads, branch.branch_id, branch.run_number, branch.round
    )
    needed = await to_thread.run_sync(min_leaves, state, branch.branch_id)
    if not uploads or (not force and len({u.leaf_id for u in uploads}) < needed):
        return None
    closed = await to_thread.run_sync(
        state.store.close_round, branch.branch_id, branch.run_number, branch.round
    )
    if closed is None:
        return None
    aggregation_id, inputs = closed
    start_aggregation(state, aggregation_id, branch.branch_id, inputs)
    return aggregation_id


def start_aggregation(
    state: AggregatorState, aggregation_id: str, branch_id: str, inputs: list[Upload]
) -> None:
    """Aggregate `inputs` in the lifespan's task group; `state.done[aggregation_id]` is set when it ends."""
    state.done[aggregation_id] = anyio.Event()
    assert state.task_group is not None  # noqa: S101 - set for the app's whole life by the lifespan
    state.task_group.start_soon(_aggregate, state, aggregation_id, branch_id, inputs)


async def _aggregate(
    state: AggregatorState, aggregation_id: str, branch_id: str, inputs: list[Upload]
) -> None:
    result = state.store.results_dir / f"{aggregation_id}.npz"
    started = time.perf_counter()
    try:
        await to_thread.run_sync(_combine, state, branch_id, inputs, result)
        size, digest = await to_thread.run_sync(_size_and_digest, result)
        await to_thread.run_sync(
            state.store.finish_aggregation, aggregation_id, result, size, digest, None
        )
    except Exception as exc:  # a failed round is recorded, never fatal to the server
        await to_thread.run_sync(lambda: result.unlink(missing_ok=True))
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        if disk_full(exc):
            message = "the aggregator's disk is full; free space in its data directory"
        log.warning("aggregation %s of branch %s failed: %s", aggregation_id, branch_id, message)
        try:
            await to_thread.run_sync(
                state.store.finish_aggregation, aggregation_id, None, None, None, message
            )
        except Exception as again:
            if not disk_full(again):
                raise
            log.warning("aggregation %s: its failure could not be recorded either", aggregation_id)
    else:
        log.info(
            "aggregation %s of branch %s: %d leaves in %.2f s",
            aggregation_id,
            branch_id,
            len(inputs),
            time.perf_counter() - started,
        )
        state.notify(branch_id, aggregation_message(aggregation_id))
    finally:
        state.done.pop(aggregation_id, anyio.Event()).set()


def _combine(state: AggregatorState, branch_id: str, inputs: list[Upload], result: Path) -> None:
    """FedAvg for a learning round (the unweighted mean when every weighting is 0); each field by
    its operation for an analytics round."""
    policy = state.settings.validation_policy()
    paths = [Path(u.path) for u in inputs]
    if inputs[0].kind == ANALYTICS:
        assigned = state.store.field_operations(branch_id)
        combine_analytics(paths, result, assigned, policy.limits)
        return
    unweighted = [1.0] * len(inputs) if all(u.weighting == 0 for u in inputs) else None
    fedavg(paths, result, policy, weightings=unweighted)


def _size_and_digest(path: Path) -> tuple[int, str]:
    return path.stat().st_size, sha256_file(path).hex()
