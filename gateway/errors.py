"""The gateway's error tree: each error fixes its HTTP status and stable problem `type` code (RFC 9457)."""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "/problems/"


class GatewayError(Exception):
    """Base of every error the gateway answers itself; subclasses fix status, type and title."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal gateway error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The problem document."""
        return {
            "type": PROBLEM_BASE + self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


class BadRequestError(GatewayError):
    """The request is malformed."""

    status, type, title = 400, "bad-request", "Malformed request"


class DigestMismatchError(GatewayError):
    """The upload's bytes do not have the digest its Content-Digest (or Repr-Digest) claims."""

    status, type, title = 400, "digest-mismatch", "The upload does not match its digest"


class NotAuthenticatedError(GatewayError):
    """The gateway token is missing or wrong."""

    status, type, title = 401, "unauthorized", "Gateway token required"


class NoSessionError(GatewayError):
    """There is no leaf session (logged out)."""

    status, type, title = 401, "no-session", "No leaf session"


class NotFoundError(GatewayError):
    """No such aggregation or route."""

    status, type, title = 404, "not-found", "Not found"


class ConflictError(GatewayError):
    """The request refers to state this gateway does not have (e.g. an unknown event id)."""

    status, type, title = 409, "unknown-event-id", "Unknown event id"


class NoNameMapError(GatewayError):
    """A download in the trainer's names, but no named upload was accepted yet."""

    status, type, title = 409, "names/no-map", "No tensor names remembered"


class NameMapConflictError(GatewayError):
    """The remembered tensor names do not fit the aggregation's layers."""

    status, type, title = 409, "names/mismatch", "Tensor names do not fit the aggregation"


class RunNotStartedError(GatewayError):
    """The branch's run is not started, so uploads are refused."""

    status, type, title = 409, "run-not-started", "The run is not started"


class SessionChangedError(GatewayError):
    """The leaf session ended or changed leaf while the upload was received: nothing was sent."""

    status, type, title = 409, "session-changed", "The leaf session changed during the upload"


class PayloadTooLargeError(GatewayError):
    """The upload is over the gateway's size limit."""

    status, type, title = 413, "payload-too-large", "Upload too large"


class UnsupportedMediaTypeError(GatewayError):
    """The upload's content type is not one the gateway reads."""

    status, type, title = 415, "unsupported-media-type", "Unsupported upload format"


class UpstreamRejectedError(GatewayError):
    """BranchKey answered with a client error; its status and `error` text are passed through."""

    status, type, title = 400, "upstream-rejected", "BranchKey refused the request"
    """(The status documented; the answer carries BranchKey's own 4xx status.)"""

    def __init__(self, status: int, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.upstream_status = status

    def body(self) -> dict[str, Any]:
        """The problem document, with the upstream status."""
        return {**super().body(), "status": self.upstream_status}


class UpstreamUnavailableError(GatewayError):
    """BranchKey could not be reached or failed (transport error or 5xx)."""

    status, type, title = 502, "upstream-unavailable", "BranchKey is unavailable"


class NotReadyError(GatewayError):
    """The gateway is not ready (no session, upstream unreachable)."""

    status, type, title = 503, "not-ready", "Not ready"


class UpstreamTimeoutError(GatewayError):
    """BranchKey did not answer in time."""

    status, type, title = 504, "upstream-timeout", "BranchKey timed out"


class AggregationTimeoutError(GatewayError):
    """`/exchange` sent the upload, but no aggregation was announced within the wait."""

    status, type, title = 504, "aggregation-timeout", "No aggregation in time"


class ShuttingDownError(GatewayError):
    """The gateway is stopping; a wait it held was given up."""

    status, type, title = 503, "shutting-down", "The gateway is shutting down"


class InsufficientStorageError(GatewayError):
    """The gateway's disk (GATEWAY_DATA_DIR) is full; nothing was kept or forwarded."""

    status, type, title = 507, "insufficient-storage", "Out of disk space"


PROBLEM_TYPES: tuple[type[GatewayError], ...] = (
    BadRequestError,
    DigestMismatchError,
    NotAuthenticatedError,
    NoSessionError,
    NotFoundError,
    ConflictError,
    NoNameMapError,
    NameMapConflictError,
    RunNotStartedError,
    SessionChangedError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    UpstreamRejectedError,
    UpstreamUnavailableError,
    NotReadyError,
    UpstreamTimeoutError,
    AggregationTimeoutError,
    ShuttingDownError,
    InsufficientStorageError,
)
"""Every gateway problem type, for the OpenAPI description."""
