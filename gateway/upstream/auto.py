"""Picks the configured dialect's siblings: the upstream (`v3.py`, `v1.py`) and its channel."""

from __future__ import annotations

import functools

import httpx

from gateway.events import Events
from gateway.settings import Settings
from gateway.upstream.amqp import AmqpConsumer, AmqpSettings
from gateway.upstream.channel import ConsumerSettings, NotificationConsumer
from gateway.upstream.policy import Policy
from gateway.upstream.protocol import Connect
from gateway.upstream.session import Session
from gateway.upstream.v1 import V1Upstream
from gateway.upstream.v3 import V3Upstream
from gateway.upstream.websocket import WebSocketConsumer


def connector(
    dialect: str, client: httpx.AsyncClient, host: str, policy: Policy | None = None
) -> Connect:
    """Makes a leaf's upstream in `dialect` (`v1`, else `v3`) over the shared `client`."""
    kind = V1Upstream if dialect == "v1" else V3Upstream
    return functools.partial(kind, client, host, policy=policy)


def channel(settings: Settings, session: Session, events: Events) -> NotificationConsumer:
    """The notification consumer of the configured dialect: v3 WebSocket, or v1 AMQP."""
    timing = ConsumerSettings(
        backoff_max_s=settings.bk_ws_backoff_max_s,
        ping_interval_s=settings.bk_ws_ping_interval_s,
        ping_timeout_s=settings.bk_ws_ping_timeout_s,
    )
    if settings.bk_dialect == "v1":
        amqp = AmqpSettings(
            port=settings.bk_amqp_port,
            heartbeat_s=settings.bk_amqp_heartbeat_s,
            prefetch=settings.bk_amqp_prefetch,
        )
        return AmqpConsumer(session, events, amqp, timing)
    return WebSocketConsumer(session, events, settings.ssl_verify(), timing)
