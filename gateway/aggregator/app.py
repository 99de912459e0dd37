"""The local aggregator: a BranchKey-compatible server (protocols v3 and v1) built by `create_aggregator_app`."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio import to_thread
from fastapi import FastAPI

from gateway.aggregator.admin import admin
from gateway.aggregator.amqp import AmqpNotifier, start_amqp
from gateway.aggregator.database import private_folder
from gateway.aggregator.errors import add_exception_handlers
from gateway.aggregator.leaves import dev_leaves, load_leaves
from gateway.aggregator.middleware import CollapseLeadingSlashes, host_origin_refusal
from gateway.aggregator.openapi import install_openapi, operation_ids
from gateway.aggregator.page import page
from gateway.aggregator.records import Leaf
from gateway.aggregator.rounds import start_aggregation
from gateway.aggregator.routes_v1 import v1_api
from gateway.aggregator.routes_v3 import api
from gateway.aggregator.settings import AggregatorSettings
from gateway.aggregator.state import AggregatorState, Launch, attach_launch, attach_state
from gateway.aggregator.store import Store
from gateway.aggregator.websocket import Hub, TicketStore
from gateway.http_limits import SingleHostOrigin

log = logging.getLogger("gateway.aggregator")


def create_aggregator_app(settings: AggregatorSettings, *, embedded: bool = False) -> FastAPI:
    """A BranchKey-compatible aggregation server for `settings` (`embedded`: inside a gateway,
    whose users need no advice on the aggregator's own options).

    `state.launch_of(app)` tells its runner the leaves and the admin token.
    """
    private_folder(settings.data_dir)  # leaves, admin token, database: secrets only its owner reads
    leaves = _load_leaves(settings)
    if settings.admin_token:
        admin_token, generated = settings.admin_token.get_secret_value(), False
    else:
        admin_token, generated = _stored_admin_token(settings.data_dir)

    launch = Launch(leaves, admin_token, admin_token_generated=generated)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        amqp = await _start_amqp(settings, leaves, embedded)
        try:
            async with _serving(app, settings, leaves, admin_token, amqp):
                yield
        finally:
            if amqp is not None:
                await amqp.aclose()

    app = FastAPI(
        title="BranchKey Gateway local aggregator",
        version="3",
        description="A BranchKey-compatible aggregation server: protocol v3 (`/api/v1`), protocol v1 "
        "(`/v1`) and its admin API (`/admin`). Notifications: WebSocket `/api/v1/ws` (v3), RabbitMQ (v1).",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
        generate_unique_id_function=operation_ids,
    )
    app.add_middleware(CollapseLeadingSlashes)
    app.add_middleware(SingleHostOrigin, refusal=host_origin_refusal)
    add_exception_handlers(app)
    app.include_router(api)
    app.include_router(v1_api)
    app.include_router(admin)
    app.include_router(page)
    install_openapi(app)
    attach_launch(app, launch)
    return app


def _load_leaves(settings: AggregatorSettings) -> list[Leaf]:
    if settings.leaves_file is not None:
        return load_leaves(settings.leaves_file)
    leaves, path = dev_leaves(settings.data_dir, settings.dev_leaves)
    log.info("development leaves: %d, credentials in %s", len(leaves), path)
    return leaves


def _stored_admin_token(data_dir: Path) -> tuple[str, bool]:
    """The admin token kept in `<data_dir>/admin-token` (mode 0600) across restarts, and whether it
    was generated just now."""
    path = data_dir / "admin-token"
    if path.exists():
        return path.read_text(encoding="utf-8").strip(), False
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(token + "\n")
    return token, True


async def _start_amqp(
    settings: AggregatorSettings, leaves: list[Leaf], embedded: bool
) -> AmqpNotifier | None:
    if settings.amqp_url is None:
        log.log(
            logging.DEBUG if embedded else logging.INFO,
            "v1 leaves get HTTP service only (no notifications): start with --amqp-url "
            "(BK_AGGREGATOR_AMQP_URL) to publish them over RabbitMQ",
        )
        return None
    # An AmqpSetupError ends the start; the runner reports it in one line (OneLineStartupFailure).
    return await start_amqp(settings, leaves)


@asynccontextmanager
async def _serving(
    app: FastAPI,
    settings: AggregatorSettings,
    leaves: list[Leaf],
    admin_token: str,
    amqp: AmqpNotifier | None,
) -> AsyncIterator[None]:
    """The store, the shared state and the background tasks, for the app's whole life."""
    store = await to_thread.run_sync(Store, settings.data_dir)  # SQLite work stays off the loop
    try:
        await to_thread.run_sync(store.replace_leaves, leaves, settings.initial_run_status)
        blob_key = await to_thread.run_sync(store.secret, "blob-key")
        state = AggregatorState(
            settings=settings,
            store=store,
            tickets=TicketStore(ttl_s=settings.ticket_ttl_s),
            hub=Hub(),
            admin_token=admin_token,
            blob_key=blob_key.encode(),
            amqp=amqp,
        )
        attach_state(app, state)
        async with anyio.create_task_group() as group:
            state.task_group = group
            if amqp is not None:
                group.start_soon(amqp.run)
            for aggregation, inputs in await to_thread.run_sync(store.pending_aggregations):
                log.info("resuming aggregation %s after a restart", aggregation.aggregation_id)
                start_aggregation(state, aggregation.aggregation_id, aggregation.branch_id, inputs)
            yield
            # uvicorn has closed every WebSocket (1012, so clients back off) before this point.
            group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await to_thread.run_sync(store.close)
