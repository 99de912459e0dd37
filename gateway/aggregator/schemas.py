"""The aggregator's response bodies as models: they validate what the routes answer and write its OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error: a sentence under `error`, which the official client reads (§2.2)."""

    error: str
    code: str | None = Field(None, description="A stable code, where a client may act on it.")


class RunData(BaseModel):
    """A run as the client reads it."""

    run_status: Literal["start", "stop", "pause"]
    run_number: int


class RunBody(BaseModel):
    """`GET run` (both dialects)."""

    data: RunData


class FileIdData(BaseModel):
    """An accepted upload."""

    file_id: str


class FileIdBody(BaseModel):
    """`POST /file/upload` (201)."""

    data: FileIdData


class DownloadData(BaseModel):
    """Where to fetch a file: an absolute URL, signed and expiring, that needs no credentials."""

    download_url: str


class DownloadBody(BaseModel):
    """`GET /file/download/{file_id}`."""

    data: DownloadData


class MetricData(BaseModel):
    """A stored performance report."""

    id: int


class MetricBody(BaseModel):
    """`POST /performance/analysis` (201)."""

    data: MetricData


class BranchInfo(BaseModel):
    """The branch of a branch configuration."""

    id: str
    name: str
    tree_id: str


class ServiceParameters(BaseModel):
    """The aggregation service's parameters."""

    min_leaves: int


class ServiceInfo(BaseModel):
    """The aggregation service of a branch."""

    algorithm: Literal["fedavg"]
    parameters: ServiceParameters


class BranchConfigData(BaseModel):
    """A branch configuration in its documented shape (§5.5 #6)."""

    branch: BranchInfo
    service: ServiceInfo
    created_at: str
    updated_at: str


class BranchConfigBody(BaseModel):
    """`GET /config/branch/{branch_id}`."""

    data: BranchConfigData


class TicketData(BaseModel):
    """A single-use WebSocket ticket (§5.6.2)."""

    ticket_id: str
    request_id: str
    expires_at: str


class TicketBody(BaseModel):
    """`POST /ws/ticket` (exactly 200, application/json)."""

    data: TicketData


class LeafIds(BaseModel):
    """The ids a v1 client works with."""

    user_id: str
    tree_id: str
    branch_id: str


class LeafIdsBody(BaseModel):
    """`GET /v1/leaf/authenticate`."""

    data: LeafIds


class BranchRecord(BaseModel):
    """A branch, its run and its open round."""

    branch_id: str
    tree_id: str
    run_status: Literal["start", "stop", "pause"]
    run_number: int
    round: int
    created_at: str
    updated_at: str


class BranchRecordBody(BaseModel):
    """One branch."""

    data: BranchRecord


class BranchListBody(BaseModel):
    """Every branch."""

    data: list[BranchRecord]


class LeafRecord(BaseModel):
    """A leaf, without its token."""

    id: str
    name: str
    tree_id: str
    branch_id: str
    owner_id: str


class LeafListBody(BaseModel):
    """Every leaf."""

    data: list[LeafRecord]


class RoundRecord(BaseModel):
    """A branch's open round."""

    branch_id: str
    run_number: int
    round: int
    leaves: list[str]
    min_leaves: int


class RoundListBody(BaseModel):
    """Every branch's open round."""

    data: list[RoundRecord]


class UploadRecord(BaseModel):
    """A stored upload (`active` 0: replaced by a newer one of its leaf in the same round)."""

    file_id: str
    leaf_id: str
    branch_id: str
    run_number: int
    round: int
    digest: str
    size: int
    path: str
    kind: Literal["federated_learning", "federated_analytics"]
    weighting: float | None
    metadata: str
    created_at: str
    active: int


class UploadListBody(BaseModel):
    """Every upload."""

    data: list[UploadRecord]


class AggregationRecord(BaseModel):
    """An aggregation: pending, done (with its file) or failed (with why)."""

    aggregation_id: str
    branch_id: str
    run_number: int
    round: int
    status: Literal["pending", "done", "failed"]
    path: str | None
    size: int | None
    sha256: str | None
    contributors: str
    error: str | None
    created_at: str


class AggregationBody(BaseModel):
    """One aggregation."""

    data: AggregationRecord


class AggregationListBody(BaseModel):
    """Every aggregation."""

    data: list[AggregationRecord]


class MetricRecord(BaseModel):
    """A stored performance report."""

    id: int
    leaf_id: str
    branch_id: str
    tree_id: str
    aggregation_id: str
    mode: str
    data: str
    received_at: str


class MetricListBody(BaseModel):
    """Every performance report."""

    data: list[MetricRecord]


class FieldOperationsData(BaseModel):
    """The operations assigned to a branch's analytics fields."""

    branch_id: str
    fields: dict[str, Literal["sum", "min", "max", "mean", "must_match"]]


class FieldOperationsBody(BaseModel):
    """`GET`/`PUT /admin/fields`."""

    data: FieldOperationsData


def json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its JSON body itself."""
    return {
        "requestBody": {
            "required": required,
            "content": {"application/json": {"schema": schema}},
        }
    }


UPLOAD_REQUEST: dict[str, Any] = {
    "parameters": [
        {
            "name": "x-bk-file-size",
            "in": "header",
            "required": False,
            "description": "The file part's size in bytes (checked against it: 422 if it differs).",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
        {
            "name": "x-bk-file-digest",
            "in": "header",
            "required": False,
            "description": "`sha256=` and the standard base64 of the file part's SHA-256 (422 if it differs).",
            "schema": {"type": "string", "pattern": "^sha256=[A-Za-z0-9+/]{43}=$"},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {
                        "data": {
                            "type": "object",
                            "description": "JSON text (no Content-Type of its own): metadata "
                            "is JSON text (v3, §5.10) or any text (v1).",
                            "properties": {
                                "leaf_name": {"type": "string"},
                                "metadata": {"type": ["string", "object"]},
                            },
                        },
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The weights file: an NPZ (v3, or v1 with a whole "
                            "weighting) or the v1 object .npy.",
                        },
                    },
                },
                "encoding": {"data": {"contentType": "application/json"}},
            }
        },
    },
}
"""The upload's request as the official clients send it (§3.4, §5.5.1); the route reads it itself."""

METRIC_REQUEST: dict[str, Any] = json_body(
    {
        "type": "object",
        "required": ["mode", "aggregation_id", "leaf_id", "branch_id", "tree_id", "data"],
        "properties": {
            "mode": {"type": "string", "enum": ["test", "train", "non-federated"]},
            "aggregation_id": {
                "type": "string",
                "description": "An aggregation of the leaf's branch (404 otherwise).",
            },
            "leaf_id": {
                "type": "string",
                "description": "The authenticated leaf's id (403 otherwise).",
            },
            "branch_id": {"type": "string"},
            "tree_id": {"type": "string"},
            "data": {"description": "The metrics, usually JSON-encoded into a string."},
        },
    }
)
"""A performance report (§3.4, §5.5 #5); parsed as JSON whatever its Content-Type."""

BLOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    206: {
        "description": "The part of the file a Range header asked for.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    403: {
        "model": ErrorBody,
        "description": "A signature that is wrong, for another format, or expired.",
    },
    404: {"model": ErrorBody, "description": "The file is gone."},
    "default": {"model": ErrorBody, "description": "Any other error."},
}
"""A signed blob URL: the file, or an error."""
