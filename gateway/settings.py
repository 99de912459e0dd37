"""Settings, read from the environment (or a `.env` file); built once and passed in, never global."""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.weights import Limits, ValidationPolicy

_ORIGIN = re.compile(r"https?://[^/\s:?#@]+(:[0-9]{1,5})?", re.IGNORECASE)
"""A web origin as a browser sends it: scheme, host, optional port; nothing else."""


class WeightsSettings(BaseSettings):
    """How uploads are validated: the strict checks, deep mode and the hostile-input limits."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_file=".env", extra="ignore")

    strict_weighting: bool = Field(True, description="`weighting` must be a finite number >= 0.")
    strict_layer_dtypes: bool = Field(True, description="Learning layers must be numeric.")
    strict_layer_numbering: bool = Field(
        True, description="Learning layers must be exactly layer_0 .. layer_{n-1}."
    )
    strict_extra_keys: bool = Field(
        True, description="A learning archive may hold only weighting, the kind key and layers."
    )
    deep_validation: bool = Field(False, description="Also read all data: the CRC of every member.")
    allow_nonfinite: bool = Field(
        False,
        description="Let layers holding NaN or Inf through (refused by default, checked while "
        "the upload arrives).",
    )
    max_archive_members: int = Field(10_000, ge=1, description="Members of one NPZ archive.")
    max_npy_header_bytes: int = Field(10_000, ge=128, description="Bytes of one .npy header.")
    max_uncompressed_bytes: ByteSize = Field(
        ByteSize(16 * 1024**3), ge=1, description="Uncompressed size of one archive."
    )
    max_compression_ratio: float = Field(
        200.0, gt=1, description="Uncompressed / compressed size of an archive or member."
    )
    max_safetensors_header_bytes: ByteSize = Field(
        ByteSize(8 * 1024**2), ge=1024, description="Bytes of one safetensors JSON header."
    )

    def policy(self) -> ValidationPolicy:
        """The weights module's policy for these settings."""
        return ValidationPolicy(
            strict_weighting=self.strict_weighting,
            strict_layer_dtypes=self.strict_layer_dtypes,
            strict_layer_numbering=self.strict_layer_numbering,
            strict_extra_keys=self.strict_extra_keys,
            deep=self.deep_validation,
            finite=not self.allow_nonfinite,
            limits=Limits(
                max_members=self.max_archive_members,
                max_header_bytes=self.max_npy_header_bytes,
                max_total_uncompressed_bytes=int(self.max_uncompressed_bytes),
                max_compression_ratio=self.max_compression_ratio,
                max_pickle_bytes=int(self.max_uncompressed_bytes),
                max_safetensors_header_bytes=int(self.max_safetensors_header_bytes),
            ),
        )


class Settings(BaseSettings):
    """The gateway's settings: `BK_*` for the upstream session, `GATEWAY_*` for the local side."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    bk_host: str | None = Field(
        None, description="Upstream BranchKey base URL; unset runs the embedded local aggregator."
    )
    bk_dialect: Literal["v3", "v1"] = Field(
        "v3",
        description="Upstream protocol: v3 (`/api/v1`, WebSocket) or v1 (`/v1`, Basic auth, RabbitMQ).",
    )
    bk_credentials_file: Path | None = Field(
        None,
        description="JSON credentials (v3 or v1 client shape), or a list of them (the "
        "aggregator's leaves.json) with BK_LEAF_NAME or BK_LEAF_ID picking one.",
    )
    bk_leaf_id: str | None = Field(
        None, description="Leaf id (fills or overrides the file's; picks one from a list)."
    )
    bk_leaf_name: str | None = Field(None, description="Leaf name (picks one from a list).")
    bk_session_token: SecretStr | None = Field(None, description="Leaf session token.")
    bk_tree_id: str | None = Field(
        None, description="Tree id (v3 with v1-shaped credentials; v1 asks authenticate)."
    )
    bk_branch_id: str | None = Field(
        None, description="Branch id (v3 with v1-shaped credentials; v1 asks authenticate)."
    )
    bk_owner_id: str | None = Field(None, description="Owner id (never sent upstream).")
    bk_response_host: str | None = Field(
        None, description="v1: RabbitMQ host of the notifications (else the credentials' own)."
    )
    bk_amqp_port: int = Field(5672, ge=1, le=65535, description="v1: RabbitMQ port (plain AMQP).")
    bk_amqp_heartbeat_s: int = Field(
        30, ge=1, le=600, description="v1: AMQP heartbeat; a silent broker is dropped after two."
    )
    bk_amqp_prefetch: int = Field(
        32, ge=1, le=10_000, description="v1: notifications in flight before their acks."
    )
    bk_ssl_verify: str = Field("true", description="true, false, or the path of a CA bundle.")
    bk_proxies: dict[str, str] | None = Field(None, description="JSON like the client's `proxies`.")
    bk_wait_for_run: bool = Field(False, description="Uploads wait for the run to start.")
    bk_run_check_interval_s: float = Field(
        30.0,
        gt=0,
        description="Run status poll interval; also the longest a status the notification channel told is trusted.",
    )
    bk_connect_timeout_s: float = Field(10.0, gt=0, description="Upstream connect timeout.")
    bk_read_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Upstream read timeout; also the time BranchKey has to answer an upload it received.",
    )
    bk_max_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Retries of a failed upstream call (3: four attempts, as the client).",
    )
    bk_upstream_deadline_s: float = Field(
        60.0,
        gt=0,
        description="Longest run, ticket, download-URL, authenticate or metrics call, retries included.",
    )
    bk_transfer_min_rate: ByteSize = Field(
        ByteSize(8 * 1024),
        ge=1,
        description="Bytes per second an upload or download must average (see BK_TRANSFER_STALL_S).",
    )
    bk_transfer_stall_s: float = Field(
        60.0,
        gt=0,
        description="Cut a transfer that stalls, or falls this far behind BK_TRANSFER_MIN_RATE.",
    )
    bk_upstream_deduplicates: bool = Field(
        False,
        description="BK_HOST deduplicates identical uploads: resend one whose answer was lost.",
    )
    gateway_host: str = Field("127.0.0.1", description="Interface the gateway binds.")
    gateway_port: int = Field(8000, ge=0, le=65535, description="Port the gateway binds.")
    gateway_data_dir: Path = Field(Path("./gateway-data"), description="Temp files and cache.")
    gateway_max_upload_bytes: ByteSize = Field(
        ByteSize(8 * 1024**3), ge=1, description="Largest upload."
    )
    gateway_token: SecretStr | None = Field(
        None, description="When set, every route but /healthz needs `Bearer <token>`."
    )
    gateway_cors_origins: Annotated[list[str], NoDecode] = Field(
        [],
        description="Web page origins (`http://host:port`, JSON list or comma-separated) that may call "
        "the gateway from a browser; without GATEWAY_TOKEN any loopback origin may too.",
    )
    gateway_access_ttl_s: float = Field(
        600.0,
        gt=0,
        le=86400,
        description="Lifetime of an `?access_token=` from POST /access (EventSource, links).",
    )
    gateway_cache_keep: int = Field(8, ge=1, description="Aggregations kept in the download cache.")
    gateway_events_max_count: int = Field(10_000, ge=10, description="Events kept for replay.")
    gateway_events_max_age_s: float = Field(
        7 * 86400.0, gt=0, description="Oldest event kept for replay."
    )
    gateway_sse_keepalive_s: float = Field(
        15.0, gt=0, le=15, description="SSE keep-alive comment interval."
    )
    gateway_sse_buffer: int = Field(256, ge=1, description="Events buffered per SSE subscriber.")
    bk_ws_ping_interval_s: float = Field(
        20.0,
        gt=0,
        description="Notification channel keep-alive probe interval (WebSocket ping; v1: an AMQP round trip).",
    )
    bk_ws_ping_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Declare the notification channel dead when a probe waits this long.",
    )
    bk_ws_backoff_max_s: float = Field(
        60.0,
        gt=0,
        description="Longest wait between notification-channel reconnects (both dialects).",
    )
    gateway_wait_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest wait: of a `wait=true` upload for the run, of `/exchange` for its aggregation.",
    )
    gateway_check_architecture: bool = Field(
        True,
        description="Refuse a model whose layer count, shapes or dtypes differ from the branch's "
        "latest aggregation the gateway fetched; false for an architecture change.",
    )
    gateway_cut_through: bool = Field(
        True,
        description="Send a v3 upload that carries a Content-Digest on to BranchKey while it "
        "arrives (its last byte held until it is checked); false: always receive it whole first.",
    )
    gateway_max_header_bytes: ByteSize = Field(
        ByteSize(16 * 1024),
        ge=1024,
        le=1024**2,
        description="Request line and headers of one request (431 above).",
    )
    gateway_header_timeout_s: float = Field(
        10.0, gt=0, description="Close a connection whose request headers take longer."
    )
    gateway_log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object per line."
    )
    weights: WeightsSettings = Field(default_factory=WeightsSettings)

    @field_validator("bk_host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None  # noqa: S101 - narrowed above
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                "BK_HOST must start with http:// or https://, e.g. https://app.branchkey.com"
            )
        return value

    @field_validator("bk_ssl_verify")
    @classmethod
    def _check_verify(cls, value: str) -> str:
        if value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower()
        if not Path(value).is_file():
            raise ValueError(
                "BK_SSL_VERIFY must be true, false, or the path of an existing CA bundle file"
            )
        return value

    @field_validator("gateway_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):  # a JSON list, or `a,b`
            if value.strip().startswith("["):
                try:
                    return json.loads(value)
                except json.JSONDecodeError:
                    raise ValueError(
                        "GATEWAY_CORS_ORIGINS is not a JSON list; write it as "
                        '["http://localhost:5173"] or http://localhost:5173,http://127.0.0.1:3000'
                    ) from None
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("gateway_cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "null" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"GATEWAY_CORS_ORIGINS: {origin!r} is not an origin; write scheme://host[:port] "
                    "without a path or trailing slash, e.g. http://localhost:5173"
                )
        return [origin.lower() for origin in value]

    @model_validator(mode="after")
    def _check_null_origin(self) -> Settings:
        if "null" in self.gateway_cors_origins and self.gateway_token is None:
            raise ValueError(
                "GATEWAY_CORS_ORIGINS=null (pages opened from a file) needs GATEWAY_TOKEN: sandboxed "
                "frames of any web site send Origin: null too; serve the page from a loopback port "
                "instead (python3 -m http.server --bind 127.0.0.1 5500)"
            )
        return self

    @model_validator(mode="after")
    def _check_dialect(self) -> Settings:
        if self.bk_dialect == "v1" and self.bk_host is None:
            raise ValueError(
                "BK_DIALECT=v1 needs BK_HOST (the v1 BranchKey API, e.g. https://api.branchkey.com); "
                "without BK_HOST the gateway uses its embedded aggregator, which it speaks v3 to"
            )
        return self

    def ssl_verify(self) -> bool | ssl.SSLContext:
        """`BK_SSL_VERIFY` as httpx's `verify` argument."""
        if self.bk_ssl_verify in ("true", "1", "yes"):
            return True
        if self.bk_ssl_verify in ("false", "0", "no"):
            return False
        return ssl.create_default_context(cafile=self.bk_ssl_verify)
