"""Fixtures used by several test packages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.aggregator import Running, start


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[Running]:
    """A local aggregator on a free port with three development leaves and default settings."""
    with start(tmp_path / "agg") as running:
        yield running
