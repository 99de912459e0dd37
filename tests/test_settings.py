"""Settings map onto the weights policy, from the environment, with validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import WeightsSettings


def test_defaults_are_strict_and_shallow() -> None:
    """By default every strict check is on, deep mode off, and the documented limits apply."""
    policy = WeightsSettings(_env_file=None).policy()
    assert policy.strict_weighting
    assert policy.strict_layer_dtypes
    assert policy.strict_layer_numbering
    assert policy.strict_extra_keys
    assert not policy.deep
    assert policy.limits.max_members == 10_000
    assert policy.limits.max_header_bytes == 10_000
    assert policy.limits.max_total_uncompressed_bytes == 16 * 1024**3
    assert policy.limits.max_compression_ratio == 200.0


def test_environment_switches_each_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """GATEWAY_* variables turn each check off, deep mode on, and set the limits (with byte units)."""
    monkeypatch.setenv("GATEWAY_STRICT_WEIGHTING", "false")
    monkeypatch.setenv("GATEWAY_STRICT_LAYER_DTYPES", "0")
    monkeypatch.setenv("GATEWAY_STRICT_LAYER_NUMBERING", "no")
    monkeypatch.setenv("GATEWAY_STRICT_EXTRA_KEYS", "false")
    monkeypatch.setenv("GATEWAY_DEEP_VALIDATION", "true")
    monkeypatch.setenv("GATEWAY_MAX_ARCHIVE_MEMBERS", "50")
    monkeypatch.setenv("GATEWAY_MAX_UNCOMPRESSED_BYTES", "2GiB")
    monkeypatch.setenv("GATEWAY_MAX_COMPRESSION_RATIO", "50")
    policy = WeightsSettings(_env_file=None).policy()
    assert not (policy.strict_weighting)
    assert not (policy.strict_layer_dtypes)
    assert not (policy.strict_layer_numbering)
    assert not (policy.strict_extra_keys)
    assert policy.deep
    assert policy.limits.max_members == 50
    assert policy.limits.max_total_uncompressed_bytes == 2 * 1024**3
    assert policy.limits.max_compression_ratio == 50.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_MAX_ARCHIVE_MEMBERS", "0"),
        ("GATEWAY_MAX_COMPRESSION_RATIO", "1"),
        ("GATEWAY_STRICT_WEIGHTING", "maybe"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    """A bad value fails at start-up with an error that names the setting."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        WeightsSettings(_env_file=None)
    assert name.removeprefix("GATEWAY_").lower() in str(caught.value)
