"""The gateway's settings: defaults, validation naming the variable, and the weights policy they map onto."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.settings import Settings, WeightsSettings


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


def test_defaults_are_local_and_offline() -> None:
    """Unset BK_HOST means the embedded aggregator; the gateway binds loopback on 8000."""
    settings = Settings(_env_file=None)
    assert settings.bk_host is None
    assert settings.gateway_host == "127.0.0.1"
    assert settings.gateway_port == 8000
    assert int(settings.gateway_max_upload_bytes) == 8 * 1024**3
    assert settings.bk_dialect == "v3"
    assert settings.ssl_verify() is True


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("BK_DIALECT", "v1", "BK_DIALECT=v1 needs BK_HOST"),
        ("BK_HOST", "app.branchkey.com", "BK_HOST must start with http"),
        ("BK_SSL_VERIFY", "/no/such/ca.pem", "BK_SSL_VERIFY"),
        ("GATEWAY_PORT", "70000", "gateway_port"),
    ],
)
def test_bad_settings_are_explained(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    """A bad variable fails at start-up with a sentence naming it."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://localhost:5173", ["http://localhost:5173"]),
        ("http://a.example:1, https://B.example", ["http://a.example:1", "https://b.example"]),
        ('["http://127.0.0.1:3000"]', ["http://127.0.0.1:3000"]),
        ("", []),
    ],
)
def test_cors_origins_read_a_list_or_commas(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    """GATEWAY_CORS_ORIGINS takes a JSON list or comma-separated origins, compared lower-case."""
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", raw)
    assert Settings(_env_file=None).gateway_cors_origins == expected


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ("http://localhost:5173/", "is not an origin"),
        ("localhost:5173", "is not an origin"),
        ('["http://a"', "not a JSON list"),
        ("null", "needs GATEWAY_TOKEN"),
    ],
)
def test_cors_origins_are_checked(monkeypatch: pytest.MonkeyPatch, raw: str, named: str) -> None:
    """A path, a missing scheme or broken JSON is refused naming the variable; `null` (file pages,
    and sandboxed frames of any site) only with GATEWAY_TOKEN."""
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", raw)
    with pytest.raises(ValidationError, match=named):
        Settings(_env_file=None)
    monkeypatch.setenv("GATEWAY_TOKEN", "a-gateway-token")
    if raw == "null":
        assert Settings(_env_file=None).gateway_cors_origins == ["null"]
