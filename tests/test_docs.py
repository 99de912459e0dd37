"""The README's settings tables match the settings classes."""

from __future__ import annotations

from gateway.docs import README, TABLES, render


def test_readme_settings_tables_are_current() -> None:
    """Every settings table in the README is what the code generates (rewrite with `python -m gateway.docs`)."""
    text = README.read_text(encoding="utf-8")
    for key in TABLES:
        assert f"<!-- settings:{key} -->" in text
    assert render(text) == text


def test_every_setting_is_described() -> None:
    """No setting reaches the README without a sentence saying what it does."""
    text = README.read_text(encoding="utf-8")
    assert "|  |" not in text
    assert "| `BK_HOST` | `unset` |" in text
    assert "| `GATEWAY_STRICT_WEIGHTING` | `true` |" in text
    assert "| `BK_AGGREGATOR_MAX_UPLOAD_BYTES` | `8GiB` |" in text
