"""The architecture check's reference: the layout comparison and the per-branch book on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.layouts import Layout, LayoutBook, check_layout
from gateway.weights import ANALYTICS, LEARNING, ArrayInfo, Payload, PayloadKind, WeightsError


def _payload(*layers: tuple[str, tuple[int, ...]], kind: PayloadKind = LEARNING) -> Payload:
    arrays = tuple(
        ArrayInfo(f"layer_{i}", dtype, shape, False, 0, 0, None)
        for i, (dtype, shape) in enumerate(layers)
    )
    return Payload(format="npz", kind=kind, weighting=1.0, arrays=arrays)


MODEL = _payload(("<f4", (4, 3)), ("<f4", (3,)))
REFERENCE = Layout.of(MODEL, "the latest aggregation (agg-7)")


def _refusal(payload: Payload) -> str:
    with pytest.raises(WeightsError) as refused:
        check_layout(REFERENCE, payload, "br-1")
    assert refused.value.code == "architecture-mismatch"
    return refused.value.message


def test_the_first_differing_layer_is_named() -> None:
    """Shape, dtype and count differences each name the first layer that differs and the reference."""
    assert _refusal(_payload(("<f4", (4, 3)), ("<f4", (5,)))).startswith(
        "The model does not match branch br-1's: layer_1 is <f4 of shape (5,) here but <f4 of "
        "shape (3,) in the latest aggregation (agg-7)."
    )
    assert "layer_0 is <f8 of shape (4, 3) here but <f4" in _refusal(
        _payload(("<f8", (4, 3)), ("<f4", (3,)))
    )
    fewer = _refusal(_payload(("<f4", (4, 3))))
    assert (
        "the model has 1 layers and the latest aggregation (agg-7) has 2: layer_1 is only in that one"
        in fewer
    )
    more = _refusal(_payload(("<f4", (4, 3)), ("<f4", (3,)), ("<f4", (1,))))
    assert "layer_2 is only in this upload" in more


def test_byte_order_and_analytics_are_no_mismatch() -> None:
    """Big-endian layers of the same dtype match; analytics payloads are not checked."""
    check_layout(REFERENCE, _payload((">f4", (4, 3)), (">f4", (3,))), "br-1")
    check_layout(REFERENCE, _payload(("<i8", (9,)), kind=ANALYTICS), "br-1")


def test_the_book_keeps_the_newest_per_branch_on_disk(tmp_path: Path) -> None:
    """Each record replaces its branch's reference, survives a reopen, and only the newest branches are kept."""
    path = tmp_path / "layouts.json"
    book = LayoutBook(path, keep=2)
    book.record("a", MODEL, "the last upload (file f1)")
    book.record("b", _payload(("<f8", (2,))), "the last upload (file f2)")
    book.record("a", _payload(("<f4", (9,))), "the latest aggregation (agg-3)")
    book.record("c", MODEL, "the last upload (file f3)")
    again = LayoutBook(path, keep=2)
    assert again.reference("b") is None  # the oldest of three, beyond keep=2
    assert again.reference("a") == Layout((("<f4", (9,)),), "the latest aggregation (agg-3)")
    assert again.reference("c") == REFERENCE.__class__(
        REFERENCE.layers, "the last upload (file f3)"
    )
    book.record("d", _payload(kind=ANALYTICS), "analytics are not recorded")
    assert book.reference("d") is None


def test_an_unreadable_book_is_ignored(tmp_path: Path) -> None:
    """A damaged layouts.json starts an empty book (the check then waits for the next model)."""
    path = tmp_path / "layouts.json"
    path.write_text("{not json")
    assert LayoutBook(path).reference("a") is None
    path.write_text(json.dumps({"a": {"layers": "oops", "source": 1}}))
    assert LayoutBook(path).reference("a") is None


def test_a_book_that_cannot_be_written_keeps_its_reference_in_memory(tmp_path: Path) -> None:
    """A failed write (here: the folder is gone) is no error: the reference still holds."""
    folder = tmp_path / "data"
    folder.mkdir()
    book = LayoutBook(folder / "layouts.json")
    folder.rmdir()
    book.record("a", MODEL, "the last upload (file f1)")
    assert book.reference("a") == Layout(REFERENCE.layers, "the last upload (file f1)")
