"""The analytics combination itself (pure): operations, their dtypes, derived statistics and name clashes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.aggregator.analytics import combine_analytics, operation_of, operation_refusal
from gateway.aggregator.errors import UnprocessableError
from gateway.weights import Limits

Array = np.ndarray[Any, Any]


def _site(path: Path, **fields: Array) -> Path:
    np.savez(path, __bk_payload_kind__=np.array("federated_analytics"), **fields)  # type: ignore[arg-type]
    return path


def _combine(
    tmp_path: Path, assigned: dict[str, str], *sites: dict[str, Array]
) -> dict[str, Array]:
    paths = [_site(tmp_path / f"{i}.npz", **fields) for i, fields in enumerate(sites)]
    combine_analytics(paths, tmp_path / "out.npz", assigned, Limits())
    with np.load(tmp_path / "out.npz", allow_pickle=False) as result:
        return {key: result[key] for key in result.files}


def test_operation_of_prefers_the_branchs_assignment_then_the_suffix() -> None:
    """An assignment wins; otherwise the bundle suffix decides; a bare suffix or other name has none."""
    assert operation_of("age_min", {}) == "min"
    assert operation_of("age_sumsq", {}) == "sum"
    assert operation_of("age_min", {"age_min": "mean"}) == "mean"
    assert operation_of("_n", {}) is None
    assert operation_of("site", {}) is None


def test_operations_refuse_dtypes_they_cannot_combine() -> None:
    """Strings only match; complex values have no min or max; numbers take every operation."""
    assert operation_refusal("site", "must_match", np.dtype("<U2")) is None
    assert "'sum' cannot combine" in str(operation_refusal("site", "sum", np.dtype("<U2")))
    assert operation_refusal("z", "min", np.dtype(np.complex64)) is not None
    assert operation_refusal("z", "mean", np.dtype(np.complex64)) is None
    assert operation_refusal("flag", "max", np.dtype(bool)) is None


def test_each_operation_and_its_result_dtype(tmp_path: Path) -> None:
    """sum of int32 is int64, mean is float64 and unweighted, min/max keep the dtype, must_match keeps the value."""
    assigned = {
        "count": "sum",
        "score": "mean",
        "low": "min",
        "high": "max",
        "flag": "max",
        "tag": "must_match",
    }
    first = {
        "count": np.array([1, 2], dtype=np.int32),
        "score": np.array([1.0]),
        "low": np.array([5, 9], dtype=np.int16),
        "high": np.array([5, 9], dtype=np.int16),
        "flag": np.array([False]),
        "tag": np.array(["eu"]),
    }
    second = {
        **first,
        "count": np.array([10, 20], dtype=np.int32),
        "score": np.array([4.0]),
        "low": np.array([7, 3], dtype=np.int16),
        "high": np.array([7, 3], dtype=np.int16),
        "flag": np.array([True]),
    }
    result = _combine(tmp_path, assigned, first, second)
    assert (result["count"].tolist(), result["count"].dtype) == ([11, 22], np.dtype(np.int64))
    assert (result["score"].tolist(), result["score"].dtype) == ([2.5], np.dtype(np.float64))
    assert (result["low"].tolist(), result["low"].dtype) == ([5, 3], np.dtype(np.int16))
    assert result["high"].tolist() == [7, 9]
    assert result["flag"].tolist() == [True]
    assert result["tag"].tolist() == ["eu"]


def test_a_must_match_field_that_differs_fails_the_combination(tmp_path: Path) -> None:
    """The round engine never gets here (the upload is refused first), but the combination does not guess."""
    with pytest.raises(UnprocessableError, match="must_match"):
        _combine(
            tmp_path, {"tag": "must_match"}, {"tag": np.array(["eu"])}, {"tag": np.array(["us"])}
        )


def test_a_derived_statistic_never_replaces_a_field_of_that_name(tmp_path: Path) -> None:
    """With a field `age_mean` of its own, the bundle's derived `age_mean` is left out; the others are added."""
    bundle = {
        "age_n": np.array([2]),
        "age_sum": np.array([6.0]),
        "age_sumsq": np.array([20.0]),
        "age_min": np.array([2.0]),
        "age_max": np.array([4.0]),
        "age_mean": np.array([-1.0]),
    }
    result = _combine(tmp_path, {"age_mean": "min"}, bundle)
    assert result["age_mean"].tolist() == [-1.0]
    assert result["age_variance"].tolist() == [1.0]
    assert result["age_range"].tolist() == [2.0]
