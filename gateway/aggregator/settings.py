"""Settings of the local aggregator (flags of `branchkey-gateway aggregator`, or BK_AGGREGATOR_* variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.settings import WeightsSettings

RunStatus = Literal["start", "stop", "pause"]


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
    max_metadata_bytes: int = Field(64 * 1024, ge=256, description="Largest `data` form field.")
    weights: WeightsSettings = Field(default_factory=WeightsSettings)
