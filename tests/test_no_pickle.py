"""The project never loads untrusted bytes with pickle."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Loading calls only: writing an object array (numpy.save(..., allow_pickle=True)) builds test input.
FORBIDDEN = re.compile(
    r"allow_pickle\s*=\s*True|\bpickle\.loads?\(|\bUnpickler\b|\bnp\.load\([^)]*allow_pickle=True"
)


def test_no_pickle_loading_in_the_product() -> None:
    """No module of the gateway or its benchmarks calls pickle.load(s), an Unpickler, or allow_pickle=True."""
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("gateway", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if FORBIDDEN.search(line)
    ]
    assert offenders == []
