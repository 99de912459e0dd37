"""The layer layout of each branch's latest aggregation, kept on disk: the architecture check's reference."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.weights import LEARNING, Payload, WeightsError

log = logging.getLogger("gateway.layouts")

KEEP_BRANCHES = 32
"""Branches remembered (a leaf has one; more only after switching sessions)."""


@dataclass(frozen=True)
class Layout:
    """The layers of a model: (dtype, shape) in layer order, and what it was taken from."""

    layers: tuple[tuple[str, tuple[int, ...]], ...]
    source: str
    """What it was taken from, for messages: `the latest aggregation (<id>)`."""

    @classmethod
    def of(cls, payload: Payload, source: str) -> Layout:
        """The layout of a learning payload, byte order aside (`>f4` and `<f4` are one dtype)."""
        return cls(tuple((_plain(a.dtype), a.shape) for a in payload.arrays), source)


def _plain(dtype: str) -> str:
    return np.dtype(dtype).newbyteorder("<").str


def check_layout(reference: Layout, payload: Payload, branch: str) -> None:
    """Refuse a learning payload whose layer count, shapes or dtypes differ from `reference`,
    naming the first layer that differs."""
    if payload.kind != LEARNING:
        return
    ours = Layout.of(payload, "").layers
    theirs = reference.layers
    problem = None
    for index, (mine, known) in enumerate(zip(ours, theirs, strict=False)):
        if mine != known:
            problem = (
                f"layer_{index} is {mine[0]} of shape {mine[1]} here but {known[0]} of shape "
                f"{known[1]} in {reference.source}"
            )
            break
    if problem is None and len(ours) != len(theirs):
        first = min(len(ours), len(theirs))
        problem = (
            f"the model has {len(ours)} layers and {reference.source} has {len(theirs)}: "
            f"layer_{first} is only in {'this upload' if len(ours) > len(theirs) else 'that one'}"
        )
    if problem is not None:
        raise WeightsError(
            "architecture-mismatch",
            f"The model does not match branch {branch}'s: {problem}. Upload a model of the "
            "branch's architecture; for an intended change set GATEWAY_CHECK_ARCHITECTURE=false "
            "until the first aggregation of the new model.",
        )


class LayoutBook:
    """The reference layout per branch: the latest announced aggregation the gateway fetched, in one
    small JSON file that survives restarts (thread-safe)."""

    def __init__(self, path: Path, keep: int = KEEP_BRANCHES) -> None:
        self.path = path
        self.keep = keep
        self._lock = threading.Lock()
        self._book: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            book = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable layout file %s (%s)", self.path, exc)
            return {}
        return book if isinstance(book, dict) else {}

    def reference(self, branch: str) -> Layout | None:
        """The branch's reference layout, if any model of it was seen."""
        with self._lock:
            entry = self._book.get(branch)
        if not isinstance(entry, dict):
            return None
        try:
            layers = tuple((str(d), tuple(int(n) for n in shape)) for d, shape in entry["layers"])
            return Layout(layers, str(entry["source"]))
        except (KeyError, TypeError, ValueError):
            return None

    def record(self, branch: str, payload: Payload, source: str) -> None:
        """Make a learning payload's layout the branch's reference (written to disk at once)."""
        if payload.kind != LEARNING or not branch:
            return
        layout = Layout.of(payload, source)
        entry = {
            "source": layout.source,
            "layers": [[dtype, list(shape)] for dtype, shape in layout.layers],
            "at": time.time(),
        }
        with self._lock:
            self._book.pop(branch, None)
            self._book[branch] = entry
            while len(self._book) > self.keep:
                self._book.pop(next(iter(self._book)))
            self._save()

    def _save(self) -> None:
        """Write the book; a failure is logged, never raised (the upload or download it follows
        has succeeded, and the reference stays in memory)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(self._book), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not write the layout file %s (%s)", self.path, exc)
