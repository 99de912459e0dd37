"""NaN and Inf in an array's data, fed in pieces: the check every upload form goes through."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from gateway.weights.errors import WeightsError
from gateway.weights.npy import ArrayHeader


class ValueCheck:
    """Finds the first NaN or infinite element of one array whose data is fed in pieces.

    A piece of `DIRECT_BYTES` or more is checked where it lies: no copy, and numpy's reductions let
    go of the GIL, so the event loop parsing the next bytes is not held up. Smaller pieces, and an
    element split between pieces, are gathered to `BATCH_BYTES` first (checking a few bytes at a
    time costs more in calls than in arithmetic).
    """

    __slots__ = ("bad", "dtype", "items", "key", "pending", "shape")

    DIRECT_BYTES = 64 << 10
    BATCH_BYTES = 1 << 20

    def __init__(self, key: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
        self.key = key
        self.dtype = dtype
        self.shape = shape
        self.items = 0
        """Elements checked so far."""
        self.pending = bytearray()
        """Bytes fed but not yet checked."""
        self.bad: tuple[int, str] | None = None
        """The flat index and the value (`NaN`, `inf`, `-inf`) of the first non-finite element."""

    @staticmethod
    def wanted(dtype: np.dtype[Any]) -> bool:
        """Whether arrays of `dtype` can hold NaN or Inf (float and complex)."""
        return dtype.kind in "fc" and dtype.itemsize > 0

    def feed(self, data: bytes | memoryview) -> None:
        """Check the next piece of the array's data (a small one once a batch is gathered)."""
        if self.bad is not None:
            return
        if len(data) < self.DIRECT_BYTES:
            self.pending += data
            if len(self.pending) >= self.BATCH_BYTES:
                self.flush()
            return
        view = memoryview(data)
        if self.pending:  # complete the split element from this piece, then check the gathered
            need = -len(self.pending) % self.dtype.itemsize
            self.pending += view[:need]
            view = view[need:]
            self.flush()
        usable = len(view) - len(view) % self.dtype.itemsize
        self._check(view[:usable])
        self.pending += view[usable:]

    def flush(self) -> None:
        """Check every whole element gathered so far (call it once the array's data has ended)."""
        usable = len(self.pending) - len(self.pending) % self.dtype.itemsize
        if usable:
            with memoryview(self.pending) as gathered:
                self._check(gathered[:usable])
            del self.pending[:usable]

    def _check(self, data: memoryview) -> None:
        if self.bad is not None or not data:
            return
        values = np.frombuffer(data, dtype=self.dtype)
        if not _all_finite(values):
            index = int(np.flatnonzero(~np.isfinite(values))[0])
            self.bad = (self.items + index, _words(values[index]))
        self.items += values.size

    def error(self) -> WeightsError | None:
        """The refusal, once a non-finite element was seen."""
        if self.bad is None:
            return None
        index, value = self.bad
        where = np.unravel_index(index, self.shape) if self.shape else ()
        at = "" if not self.shape else f" at index {tuple(int(i) for i in where)}"
        return WeightsError(
            "not-finite",
            f"{self.key} holds {value}{at}: a model with NaN or infinite values would poison the "
            "federation's average. Check the training for divergence (a lower learning rate, "
            "gradient clipping), or set GATEWAY_ALLOW_NONFINITE=true to send it anyway.",
        )

    def raise_if_bad(self, *, final: bool = False) -> None:
        """Raise the refusal, if any (`final`: the data has ended, check what is gathered)."""
        if final:
            self.flush()
        error = self.error()
        if error is not None:
            raise error


def _all_finite(values: np.ndarray[Any, Any]) -> bool:
    if values.size == 0:
        return True
    if values.dtype.kind == "f" and values.dtype.itemsize <= 8:
        # min and max propagate NaN and show an infinity: two passes without a temporary array
        # (several times faster than isfinite().all(), which allocates a mask).
        return math.isfinite(values.min()) and math.isfinite(values.max())
    return bool(np.isfinite(values).all())


def _words(value: Any) -> str:
    if np.iscomplexobj(value):
        parts = (float(value.real), float(value.imag))
        bad = next(p for p in parts if not math.isfinite(p))
        return f"a complex value with {_words(np.float64(bad))}"
    number = float(value)
    return "NaN" if math.isnan(number) else ("inf" if number > 0 else "-inf")


def checked_chunks(
    chunks: Iterable[bytes], key: str, header: ArrayHeader, *, check: bool = True
) -> Iterator[bytes]:
    """Pass `chunks` on, refusing the array when one of them holds NaN or Inf (`check` False: as they are)."""
    if not check or not ValueCheck.wanted(header.dtype):
        yield from chunks
        return
    values = ValueCheck(key, header.dtype, header.shape)
    for chunk in chunks:
        values.feed(chunk)
        values.raise_if_bad()
        yield chunk
    values.raise_if_bad(final=True)


def check_array_bytes(key: str, header: ArrayHeader, data: bytes) -> None:
    """Refuse one whole array's data when it holds NaN or Inf."""
    if ValueCheck.wanted(header.dtype):
        values = ValueCheck(key, header.dtype, header.shape)
        values.feed(data)
        values.raise_if_bad(final=True)
