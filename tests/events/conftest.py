"""The `live` fixture: an aggregator, gateways and subscribers for one test, stopped in a safe order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live import Live


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    """A harness for live servers, closed after the test."""
    harness = Live(tmp_path)
    try:
        yield harness
    finally:
        harness.close()
