"""Settings, read from the environment (or a `.env` file); built once and passed in, never global."""

from __future__ import annotations

from pydantic import ByteSize, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.weights import Limits, ValidationPolicy


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
    deep_validation: bool = Field(
        False, description="Also read all data: CRC of every member, no NaN or Inf."
    )
    max_archive_members: int = Field(10_000, ge=1, description="Members of one NPZ archive.")
    max_npy_header_bytes: int = Field(10_000, ge=128, description="Bytes of one .npy header.")
    max_uncompressed_bytes: ByteSize = Field(
        ByteSize(16 * 1024**3), ge=1, description="Uncompressed size of one archive."
    )
    max_compression_ratio: float = Field(
        200.0, gt=1, description="Uncompressed / compressed size of an archive or member."
    )

    def policy(self) -> ValidationPolicy:
        """The weights module's policy for these settings."""
        return ValidationPolicy(
            strict_weighting=self.strict_weighting,
            strict_layer_dtypes=self.strict_layer_dtypes,
            strict_layer_numbering=self.strict_layer_numbering,
            strict_extra_keys=self.strict_extra_keys,
            deep=self.deep_validation,
            limits=Limits(
                max_members=self.max_archive_members,
                max_header_bytes=self.max_npy_header_bytes,
                max_total_uncompressed_bytes=int(self.max_uncompressed_bytes),
                max_compression_ratio=self.max_compression_ratio,
                max_pickle_bytes=int(self.max_uncompressed_bytes),
            ),
        )
