"""Settings of the local aggregator (flags of `branchkey-gateway aggregator`, or BK_AGGREGATOR_* variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.settings import WeightsSettings
from gateway.weights import ValidationPolicy

RunStatus = Literal["start", "stop", "pause"]
Provisioner = Literal["auto", "management", "rabbitmqctl"]


class AggregatorSettings(BaseSettings):
    """Everything the aggregator needs; built once and passed to `create_aggregator_app`."""

    model_config = SettingsConfigDict(env_prefix="BK_AGGREGATOR_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8080, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    data_dir: Path = Field(
        Path("./aggregator-data"), description="Where uploads, results and state live."
    )
    leaves_file: Path | None = Field(None, description="JSON list of leaf credentials (v3 shape).")
    dev_leaves: int = Field(
        3, ge=1, le=1000, description="Leaves to create when there is no leaves file."
    )
    min_leaves: int | None = Field(
        None,
        ge=1,
        description="Distinct leaves that complete a round (default: all of the branch).",
    )
    initial_run_status: RunStatus = Field("start", description="Run status of a new branch.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token of the /admin API (generated when unset)."
    )
    ticket_ttl_s: float = Field(60.0, gt=0, description="Lifetime of a WebSocket ticket.")
    ping_interval_s: float = Field(30.0, gt=0, description="WebSocket ping interval.")
    ping_timeout_s: float = Field(
        30.0, gt=0, description="Close a peer that does not answer a ping in this time."
    )
    blob_url_ttl_s: float = Field(900.0, gt=0, description="Lifetime of a signed download URL.")
    max_upload_bytes: ByteSize = Field(
        ByteSize(8 * 1024**3), ge=1, description="Largest weights file."
    )
    max_header_bytes: ByteSize = Field(
        ByteSize(16 * 1024),
        ge=1024,
        le=1024**2,
        description="Request line and headers of one request (431 above).",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Close a connection whose request headers take longer."
    )
    max_metadata_bytes: int = Field(64 * 1024, ge=256, description="Largest `data` form field.")
    amqp_url: SecretStr | None = Field(
        None,
        description="Admin AMQP URL of the RabbitMQ broker v1 leaves consume notifications from, "
        "e.g. `amqp://guest:guest@127.0.0.1:5672/` (unset: v1 leaves get HTTP service only).",
    )
    amqp_management_url: str | None = Field(
        None,
        description="RabbitMQ management API used to provision vhosts, users and permissions "
        "(default: `http://<amqp host>:15672`).",
    )
    amqp_provisioner: Provisioner = Field(
        "auto",
        description="How to provision the broker: `management` (HTTP API), `rabbitmqctl` (on PATH), "
        "or `auto` (the management API when it answers, else rabbitmqctl).",
    )
    amqp_queue_max_length: int = Field(
        10_000,
        ge=1,
        description="`x-max-length` of each leaf's queue: beyond it the oldest notifications are dropped.",
    )
    amqp_message_ttl_s: int = Field(
        600,
        ge=1,
        description="`x-message-ttl` of each leaf's queue: a notification not consumed within it is "
        "dropped, so a client that connects later is not handed stale aggregation ids.",
    )
    amqp_publish_attempts: int = Field(
        12,
        ge=1,
        le=100,
        description="Attempts to publish one notification (pauses doubling from 0.5 s up to 10 s, "
        "so the default rides out about 75 s of broker outage) before it is logged as lost.",
    )
    weights: WeightsSettings = Field(default_factory=WeightsSettings)

    def validation_policy(self) -> ValidationPolicy:
        """The official client's rules (L1-L4, A1-A5) with the hostile-input limits of `weights`:
        as BranchKey would check, not the gateway's stricter policy."""
        return ValidationPolicy.lenient(self.weights.policy().limits)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("amqp://", "amqps://")):
            raise ValueError("BK_AGGREGATOR_AMQP_URL must start with amqp:// or amqps://")
        return value
