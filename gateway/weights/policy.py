"""Limits and switches that decide how strictly a payload is read."""

from __future__ import annotations

from dataclasses import dataclass, field

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    """Hard bounds on hostile input, checked before any array data is read."""

    max_members: int = 10_000
    """Members in one NPZ archive (and arrays in one v1 object array)."""
    max_header_bytes: int = 10_000
    """Bytes of one `.npy` header dictionary (NumPy's own default)."""
    max_total_uncompressed_bytes: int = 16 * GiB
    """Sum of the uncompressed member sizes of one archive."""
    max_compression_ratio: float = 200.0
    """Uncompressed / compressed size, per member and per archive."""
    ratio_floor_bytes: int = 1 * MiB
    """The ratio limit applies only to members (and archives) larger than this when uncompressed."""
    max_small_member_bytes: int = 1 * MiB
    """The `weighting` and payload-kind members, which are read whole, may not be larger."""
    max_pickle_bytes: int = 16 * GiB
    """Size of the pickle stream inside a v1 object `.npy`."""
    max_safetensors_header_bytes: int = 8 * MiB
    """Bytes of one safetensors JSON header (read whole; ~100 bytes a tensor)."""


@dataclass(frozen=True)
class ValidationPolicy:
    """Which checks run on top of the protocol's own rules (L1-L4, A1-A5)."""

    strict_weighting: bool = True
    """`weighting` must be a finite real number >= 0."""
    strict_layer_dtypes: bool = True
    """Learning layers must be numeric (dtype kind b, i, u, f or c)."""
    strict_layer_numbering: bool = True
    """Learning layers must be exactly `layer_0 .. layer_{n-1}`."""
    strict_extra_keys: bool = True
    """A learning archive may hold nothing but `weighting`, the kind key and its layers."""
    deep: bool = False
    """Also read every member's data: the CRC check (and `finite`), with bounded memory."""
    finite: bool = True
    """Float layers must hold no NaN or Inf: checked by the upload conversions (`upload_to_npz`,
    `layers_to_npz`) in the pass that reads every byte, and by deep mode; header-only inspection
    (`inspect_npz`) leaves it to them."""
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def lenient(cls, limits: Limits | None = None) -> ValidationPolicy:
        """Only the protocol's rules and the hostile-input limits: what the official client accepts."""
        return cls(
            strict_weighting=False,
            strict_layer_dtypes=False,
            strict_layer_numbering=False,
            strict_extra_keys=False,
            finite=False,
            limits=limits or Limits(),
        )
