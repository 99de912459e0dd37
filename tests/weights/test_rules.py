"""The protocol's validation rules (L1-L4, A1-A5, payload kind) and the gateway's strict checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.weights import ValidationPolicy, WeightsError, inspect_payload
from tests.support.weights import refusal, sdk_weights, write_npz

LENIENT = ValidationPolicy.lenient()
STRICT = ValidationPolicy()
KIND = "__bk_payload_kind__"
W = np.array([3.0])
LAYER = np.ones((2, 3), dtype=np.float32)


def analytics(**fields: Any) -> dict[str, Any]:
    """Members of an analytics payload with the given fields."""
    return {KIND: np.array("federated_analytics"), **fields}


@pytest.mark.parametrize(
    ("members", "code"),
    [
        pytest.param({"layer_0": LAYER}, "missing-weighting", id="L1-missing-weighting"),
        pytest.param({}, "missing-weighting", id="L1-empty-zip"),
        pytest.param(
            {"weighting": np.array([1.0, 2.0]), "layer_0": LAYER},
            "weighting-not-single",
            id="L2-two-values",
        ),
        pytest.param(
            {"weighting": np.zeros((0,)), "layer_0": LAYER}, "weighting-not-single", id="L2-empty"
        ),
        pytest.param({"weighting": W}, "no-layers", id="L3-no-layers"),
        pytest.param({"weighting": W, "bn1.weight": LAYER}, "no-layers", id="L3-named-tensors"),
        pytest.param(
            {"weighting": W, "layer_0.npy": b"not an array"}, "not-an-array", id="L4-not-npy"
        ),
        pytest.param(
            {KIND: np.array("federated_learnin"), "weighting": W, "layer_0": LAYER},
            "unknown-kind",
            id="kind-unknown",
        ),
        pytest.param(
            {KIND: np.array(["federated_learning"]), "weighting": W, "layer_0": LAYER},
            "unknown-kind",
            id="kind-1d",
        ),
        pytest.param(
            {KIND: np.array(b"federated_learning"), "weighting": W, "layer_0": LAYER},
            "unknown-kind",
            id="kind-bytes",
        ),
        pytest.param(analytics(), "no-fields", id="A1-no-fields"),
        pytest.param(analytics(weighting=W), "no-fields", id="A1-only-weighting"),
        pytest.param(analytics(layer_0=np.ones(2)), "reserved-field-name", id="A2-layer_0"),
        pytest.param(analytics(layer_01=np.ones(2)), "reserved-field-name", id="A2-layer_01"),
        pytest.param(analytics(count=np.array(5)), "bare-scalar", id="A4-bare-scalar"),
        pytest.param(
            analytics(when=np.array(["2020-01-01"], dtype="M8[D]")),
            "unsupported-dtype",
            id="A5-datetime",
        ),
        pytest.param(
            analytics(delta=np.array([1], dtype="m8[s]")), "unsupported-dtype", id="A5-timedelta"
        ),
        pytest.param(
            analytics(rec=np.zeros(2, dtype=[("a", "<i4")])),
            "unsupported-dtype",
            id="A5-structured",
        ),
    ],
)
def test_protocol_rule_refusals(tmp_path: Path, members: dict[str, Any], code: str) -> None:
    """Each protocol rule refuses what BranchKey's client refuses, with the rule's own code, strict or not."""
    path = write_npz(tmp_path / "p.npz", members)
    assert refusal(path, LENIENT) == code
    assert refusal(path, STRICT) == code


@pytest.mark.parametrize(
    "members",
    [
        pytest.param({"weighting": np.array(2.0), "layer_0": LAYER}, id="weighting-0d"),
        pytest.param({"weighting": np.array([[2.0]]), "layer_0": LAYER}, id="weighting-1x1"),
        pytest.param({"weighting": W, "layer_norm": LAYER}, id="L3-prefix-only"),
        pytest.param({"weighting": W, "layer_0": LAYER, "layer_7": LAYER}, id="gap"),
        pytest.param({"weighting": W, "layer_0": np.array(["a", "b"])}, id="string-layer"),
        pytest.param({"weighting": np.array(["x"]), "layer_0": LAYER}, id="string-weighting"),
        pytest.param({"weighting": np.array([-1.0]), "layer_0": LAYER}, id="negative-weighting"),
        pytest.param({"weighting": np.array([np.nan]), "layer_0": LAYER}, id="nan-weighting"),
        pytest.param({"weighting": W, "layer_0": LAYER, "notes": np.array([1])}, id="extra-key"),
        pytest.param(
            {KIND: np.array("federated_learning"), "weighting": W, "layer_0": LAYER},
            id="kind-declared",
        ),
        pytest.param(analytics(layer_norm=np.ones(2), n=np.zeros(0)), id="A-layer_norm-empty"),
        pytest.param(
            analytics(name=np.array(["a"]), raw=np.array([b"x"]), c=np.array([1j])), id="A5-U-S-c"
        ),
        pytest.param(
            analytics(weighting=np.array(["any"]), x=np.ones(1)), id="A-weighting-ignored"
        ),
    ],
)
def test_protocol_accepts_what_client_accepts(tmp_path: Path, members: dict[str, Any]) -> None:
    """With the strict checks off, anything the client's rules pass is accepted."""
    path = write_npz(tmp_path / "p.npz", members)
    assert refusal(path, LENIENT) is None


def test_unicode_digit_counts_as_positional_in_analytics(tmp_path: Path) -> None:
    """A2 uses Python's \\d, so an Arabic-Indic digit makes a reserved name, as on the client."""
    path = write_npz(tmp_path / "p.npz", analytics(layer_٣=np.ones(2)))
    assert refusal(path, LENIENT) == "reserved-field-name"


def test_unicode_digit_layer_passes_prefix_rule_but_not_numbering(tmp_path: Path) -> None:
    """L3 is a prefix test (client accepts); the strict numbering wants ASCII layer_0.."""
    path = write_npz(tmp_path / "p.npz", {"weighting": W, "layer_\u0663": LAYER})
    assert refusal(path, LENIENT) is None
    assert refusal(path, STRICT) == "layer-numbering"


STRICT_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("strict_weighting", {"weighting": np.array([-1.0]), "layer_0": LAYER}, "bad-weighting"),
    ("strict_weighting", {"weighting": np.array([np.inf]), "layer_0": LAYER}, "bad-weighting"),
    ("strict_weighting", {"weighting": np.array([np.nan]), "layer_0": LAYER}, "bad-weighting"),
    ("strict_weighting", {"weighting": np.array(["3"]), "layer_0": LAYER}, "bad-weighting"),
    ("strict_weighting", {"weighting": np.array([1 + 1j]), "layer_0": LAYER}, "bad-weighting"),
    ("strict_layer_dtypes", {"weighting": W, "layer_0": np.array(["a"])}, "not-numeric"),
    (
        "strict_layer_dtypes",
        {"weighting": W, "layer_0": np.array([1], dtype="M8[s]")},
        "not-numeric",
    ),
    (
        "strict_layer_dtypes",
        {"weighting": W, "layer_0": np.zeros(1, dtype=[("a", "<f4")])},
        "not-numeric",
    ),
    (
        "strict_layer_numbering",
        {"weighting": W, "layer_0": LAYER, "layer_2": LAYER},
        "layer-numbering",
    ),
    ("strict_layer_numbering", {"weighting": W, "layer_1": LAYER}, "layer-numbering"),
    (
        "strict_layer_numbering",
        {"weighting": W, "layer_0": LAYER, "layer_01": LAYER},
        "layer-numbering",
    ),
    ("strict_layer_numbering", {"weighting": W, "layer_norm": LAYER}, "layer-numbering"),
    (
        "strict_extra_keys",
        {"weighting": W, "layer_0": LAYER, "notes": np.array([1])},
        "unexpected-key",
    ),
]


@pytest.mark.parametrize(
    ("switch", "members", "code"),
    STRICT_CASES,
    ids=[f"{s}-{c}-{i}" for i, (s, _, c) in enumerate(STRICT_CASES)],
)
def test_strict_checks_and_their_switches(
    tmp_path: Path, switch: str, members: dict[str, Any], code: str
) -> None:
    """Each strict check refuses by default, and turning off its own setting (only) lets the file through."""
    path = write_npz(tmp_path / "p.npz", members)
    assert refusal(path, STRICT) == code
    relaxed: dict[str, Any] = {switch: False}
    assert refusal(path, dataclasses.replace(STRICT, **relaxed)) is None


def test_valid_sdk_file_description(tmp_path: Path) -> None:
    """A save_weights file is described from its headers: kind, weighting, ordered layers, offsets."""
    layers = [np.ones((4, 3), dtype=np.float32), np.arange(3, dtype=">i8"), np.array(2.5)]
    layers += [np.zeros((2, 2), order="F")] + [np.ones(1)] * 8
    path = sdk_weights(tmp_path / "w.npz", 12, layers)
    payload = inspect_payload(path)
    assert payload.format == "npz"
    assert payload.kind == "federated_learning"
    assert payload.weighting == 12.0
    assert [a.key for a in payload.arrays] == [
        f"layer_{i}" for i in range(12)
    ]  # numeric, not string order
    assert payload.arrays[0].shape == (4, 3)
    assert payload.arrays[0].dtype == "<f4"
    assert payload.arrays[1].dtype == ">i8"
    assert payload.arrays[2].shape == ()
    assert payload.arrays[3].fortran_order
    assert payload.arrays[0].nbytes == 48
    assert payload.size == path.stat().st_size
    offsets = [a.member_offset for a in payload.arrays]
    assert all(o is not None and 0 < o < payload.size for o in offsets)


def test_analytics_description(tmp_path: Path) -> None:
    """Analytics payloads list their fields in archive order, with the weighting when numeric."""
    path = write_npz(
        tmp_path / "a.npz",
        {
            "age_n": np.array([3]),
            "age_sum": np.array([9.0]),
            "weighting": np.array([0.0]),
            KIND: np.array("federated_analytics"),
        },
    )
    payload = inspect_payload(path)
    assert payload.kind == "federated_analytics"
    assert [a.key for a in payload.arrays] == ["age_n", "age_sum"]
    assert payload.weighting == 0.0


def test_lenient_lists_ignored_keys(tmp_path: Path) -> None:
    """Without the strict key check, unknown keys are reported as ignored rather than silently dropped."""
    path = write_npz(tmp_path / "p.npz", {"weighting": W, "layer_0": LAYER, "notes": np.array([1])})
    assert inspect_payload(path, LENIENT).ignored == ("notes",)


def test_deep_mode_rejects_non_finite_layers_only_when_on(tmp_path: Path) -> None:
    """NaN and Inf pass the protocol; deep mode refuses them in any float or complex layer."""
    for bad in (
        np.array([1.0, np.nan], dtype=np.float16),
        np.array([np.inf, 0], dtype=np.float64),
        np.array([complex(0, np.nan)]),
    ):
        path = write_npz(tmp_path / "p.npz", {"weighting": W, "layer_0": LAYER, "layer_1": bad})
        assert refusal(path, STRICT) is None
        assert refusal(path, dataclasses.replace(STRICT, deep=True)) == "not-finite"


def test_deep_mode_finds_nan_across_chunk_boundaries(tmp_path: Path) -> None:
    """A NaN placed after the first data chunk, at an odd offset from it, is still found."""
    layer = np.zeros((1 << 20) + 3, dtype=np.float64)
    layer[-2] = np.nan
    path = write_npz(tmp_path / "p.npz", {"weighting": W, "layer_0": layer}, compress=False)
    assert refusal(path, dataclasses.replace(STRICT, deep=True)) == "not-finite"


def test_deep_mode_checks_crc(tmp_path: Path) -> None:
    """A flipped data byte in a stored member passes header-only validation but fails deep mode's CRC."""
    path = write_npz(
        tmp_path / "p.npz", {"weighting": W, "layer_0": np.zeros(1000)}, compress=False
    )
    raw = bytearray(path.read_bytes())
    at = raw.index(b"layer_0.npy") + 11 + 128 + 500  # inside the layer's data
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert refusal(path, STRICT) is None
    assert refusal(path, dataclasses.replace(STRICT, deep=True)) == "crc-mismatch"


def test_error_messages_are_one_actionable_sentence(tmp_path: Path) -> None:
    """Errors carry a stable code and a single sentence that names the problem."""
    path = write_npz(tmp_path / "p.npz", {"layer_0": LAYER})
    with pytest.raises(WeightsError) as caught:
        inspect_payload(path)
    assert caught.value.code == "missing-weighting"
    assert "weighting" in caught.value.message
    assert caught.value.message.endswith(".")
    assert "\n" not in caught.value.message


def test_plain_npy_and_other_files_are_not_payloads(tmp_path: Path) -> None:
    """A lone .npy array or a random file is refused with a message pointing at the accepted forms."""
    single = tmp_path / "one.npy"
    np.save(single, LAYER)
    text = tmp_path / "weights.txt"
    text.write_text("1 2 3")
    assert refusal(single) == "not-a-payload"
    assert refusal(text) == "not-a-payload"
