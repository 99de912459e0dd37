"""The light description of a validated payload: no array data, only what the data looks like."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

PayloadKind = Literal["federated_learning", "federated_analytics"]
PayloadFormat = Literal["npz", "npy-object", "npy", "safetensors"]

LEARNING: PayloadKind = "federated_learning"
ANALYTICS: PayloadKind = "federated_analytics"
KINDS: tuple[PayloadKind, ...] = (LEARNING, ANALYTICS)
KIND_KEY = "__bk_payload_kind__"
WEIGHTING_KEY = "weighting"
LAYER_PREFIX = "layer_"
RESERVED_KEYS = frozenset({WEIGHTING_KEY, KIND_KEY})
# The protocol's own test for positional names (A2): Python's \d and $ semantics, on purpose.
POSITIONAL_LAYER = re.compile(r"^layer_\d+$")
# The gateway's canonical layer name: ASCII digits, no leading zeros.
CANONICAL_LAYER = re.compile(r"layer_(0|[1-9][0-9]*)", re.ASCII)


def layer_key(index: int) -> str:
    """The archive key of the layer at `index`."""
    return f"{LAYER_PREFIX}{index}"


def layer_index(key: str) -> int | None:
    """The index of a canonical `layer_<n>` key, or None."""
    match = CANONICAL_LAYER.fullmatch(key)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ArrayInfo:
    """One array of a payload, described from its header."""

    key: str
    dtype: str
    """numpy dtype string, with byte order (`<f4`, `>i8`, `|b1`, `<U5`)."""
    shape: tuple[int, ...]
    fortran_order: bool
    nbytes: int
    data_offset: int
    """NPZ: offset of the data inside the uncompressed member. `.npy`: offset in the file."""
    member_offset: int | None
    """NPZ: offset of the member's local header in the archive; None for `.npy` input."""


@dataclass(frozen=True)
class Payload:
    """A validated upload: what it is and where its arrays are, never the arrays themselves."""

    format: PayloadFormat
    kind: PayloadKind
    weighting: float | None
    """The aggregation weight, when it is a real number (None for analytics without one)."""
    arrays: tuple[ArrayInfo, ...]
    """Learning: the layers in index order. Analytics: the fields in archive order."""
    ignored: tuple[str, ...] = ()
    """Keys the protocol never opens (only present when the strict key check is off)."""
    size: int = 0
    """Bytes of the file."""

    @property
    def layer_count(self) -> int:
        """Number of arrays."""
        return len(self.arrays)
