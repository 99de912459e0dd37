"""Our verdicts against the official branchkey clients from PyPI: 3.0.1 (NPZ) and 2.6.2 (v1 object .npy)."""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.weights import (
    ErrorCode,
    ValidationPolicy,
    WeightsError,
    inspect_payload,
    npz_to_object_npy,
    object_npy_to_npz,
)
from tests.support.peers import Peer, peer_or_fail

# Building a peer virtualenv on the first run takes longer than the suite's 120 s per-test limit.
pytestmark = [pytest.mark.peers, pytest.mark.timeout(600)]

V3 = "3.0.1"
V1 = "2.6.2"
KIND = "__bk_payload_kind__"
LENIENT = ValidationPolicy.lenient()
STRICT = ValidationPolicy()

Array = np.ndarray[Any, Any]
Builder = Callable[[Path], None]


# ---------------------------------------------------------------- scripts run inside the peers

# Validates every file with the 3.0.1 client, after writing the SDK's own files when asked to.
# The constructor would call the API, so the instance is made with object.__new__: the writers and
# validate_weight_shape use no instance state.
_V3_SCRIPT = r"""
import json, sys, warnings
import numpy as np
from branchkey.client import Client

job = json.load(sys.stdin)
client = object.__new__(Client)
paths = dict(job["paths"])
sdk = job["sdk_dir"]
if sdk:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.int64)
    paths["sdk-save-weights"] = client.save_weights(f"{sdk}/weights", 1000, [a, b, np.array(0.5)])
    paths["sdk-save-weights-no-parameters"] = client.save_weights(f"{sdk}/empty", 10, [])
    paths["sdk-save-fields-analytics"] = client.save_fields(
        {
            "target_spacing": np.array([1.0, 0.8, 0.8]),
            "num_channels": 4,
            "labels": ["liver", "tumour"],
            "flagged": True,
            "codes": np.array([b"ab", b"c"]),
            "histogram": np.arange(12, dtype=np.uint16).reshape(3, 4),
        },
        file_path=f"{sdk}/fields",
    )
    paths["sdk-save-fields-learning-layer-x"] = client.save_fields(
        {"layer_x": a, "layer_norm": b},
        kind="federated_learning",
        file_path=f"{sdk}/fields_layer_x",
        weighting=12,
    )
    paths["sdk-save-fields-learning-named"] = client.save_fields(
        {"bn1.weight": a, "bn1.bias": b},
        kind="federated_learning",
        file_path=f"{sdk}/fields_named",
        weighting=12,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dropped NaN is reported with a UserWarning, by design
        paths["sdk-save-analytics"] = client.save_analytics(
            {"age": [30, 41, float("nan"), 55], "volume": np.arange(5, dtype=np.int32)},
            file_path=f"{sdk}/analytics",
        )
verdicts = {}
for name, path in paths.items():
    try:
        with open(path, "rb") as f:
            client.validate_weight_shape(f)
    except Exception as exc:
        verdicts[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "path": path}
    else:
        verdicts[name] = {"ok": True, "error": "", "path": path}
json.dump(verdicts, sys.stdout)
"""

# Writes the v1 cases with numpy.save (pickle is fine here), validates each with the 2.6.2 client,
# and for every file also saves its layers as a plain NPZ so the test process can compare values
# without unpickling anything.
_V1_SCRIPT = r"""
import json, sys
import numpy as np
from branchkey.client import Client

def pair(count, layers):
    out = np.empty(2, dtype=object)
    out[0], out[1] = count, layers
    return out

def seq(dtype, shape=(3,)):
    return (np.arange(int(np.prod(shape))) % 5).astype(dtype).reshape(shape)

a = np.ones((2, 3), dtype=np.float32)
numeric = ["f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?", "c8", "c16"]
zero_d = np.empty((), dtype=object)
zero_d[()] = (5, [a])
triple = np.empty(3, dtype=object)
triple[0], triple[1], triple[2] = 5, [a], None
cases = {
    "valid-mixed": pair(128, [a, np.arange(4, dtype=np.int64)]),
    "valid-all-numeric-dtypes": pair(10, [seq(d, (2, 2)) for d in numeric]),
    "valid-big-endian": pair(3, [seq(">f4"), seq(">i8"), seq(">c16"), seq(">u2")]),
    "valid-fortran-order": pair(
        3, [np.asfortranarray(seq("f8", (2, 3))), np.asfortranarray(seq("i4", (2, 3, 4)))]
    ),
    "valid-0d-and-empty": pair(
        0, [np.array(1.5, dtype=np.float32), np.zeros(0), np.zeros((2, 0, 3), dtype=np.int16)]
    ),
    "valid-huge-count": pair(2**40, [seq("f4")]),
    "negative-count": pair(-5, [a]),
    "numpy-int64-count": pair(np.int64(5), [a]),
    "bool-count": pair(True, [a]),
    "float-count": pair(5.0, [a]),
    "string-count": pair("5", [a]),
    "tuple-of-layers": pair(5, (a,)),
    "empty-list": pair(5, []),
    "first-item-not-array": pair(5, [7, a]),
    "first-item-numpy-scalar": pair(5, [np.float32(1.0), a]),
    "layers-as-ndarray": pair(5, np.zeros((2, 3))),
    "object-array-shape-3": triple,
    "object-array-0d": zero_d,
    "string-layer": pair(5, [np.array(["a", "bc"])]),
    "later-item-not-array": pair(5, [a, "junk"]),
    "object-layer": pair(5, [np.array([1, "a", None], dtype=object)]),
}
folder = json.load(sys.stdin)
client = object.__new__(Client)
out = {}
for name, value in cases.items():
    path = f"{folder}/{name}.npy"
    with open(path, "wb") as f:
        np.save(f, value, allow_pickle=True)
    try:
        with open(path, "rb") as f:
            client.validate_weight_shape(f)
    except Exception as exc:
        verdict = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    else:
        verdict = {"ok": True, "error": ""}
    count = value[0] if value.ndim == 1 else None
    reference = None
    if verdict["ok"] and all(isinstance(x, np.ndarray) for x in value[1]):
        reference = f"{folder}/{name}.layers.npz"
        np.savez(reference, *value[1])
    out[name] = {
        **verdict,
        "path": path,
        "count": count if type(count) is int else repr(count),
        "reference": reference,
    }
json.dump(out, sys.stdout)
"""

# Validates our v1 files with the 2.6.2 client, then loads them the way a v1 server would and saves
# what came back (types, count, layers) for the test process to compare.
_V1_LOAD_SCRIPT = r"""
import json, sys
import numpy as np
from branchkey.client import Client

client = object.__new__(Client)
out = {}
for name, path in json.load(sys.stdin).items():
    try:
        with open(path, "rb") as f:
            client.validate_weight_shape(f)
    except Exception as exc:
        out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        continue
    # Runs in the peer's own virtualenv, on files this test wrote: the same load the v1 client does.
    pair = np.load(path, allow_pickle=True)
    reference = path + ".layers.npz"
    np.savez(reference, *pair[1])
    out[name] = {
        "ok": True,
        "error": "",
        "types": [type(pair[0]).__name__, type(pair[1]).__name__],
        "count": pair[0],
        "reference": reference,
    }
json.dump(out, sys.stdout)
"""


# ---------------------------------------------------------------- building files in this process


def _npy(array: Array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)  # object arrays too: some cases are pickled on purpose
    return buffer.getvalue()


def _npz(members: dict[str, Array | bytes]) -> Builder:
    """An archive: arrays become `<key>.npy`, bytes are stored raw under the name as given."""

    def build(path: Path) -> None:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, value in members.items():
                if isinstance(value, bytes):
                    archive.writestr(key, value)
                else:
                    archive.writestr(f"{key}.npy", _npy(value))

    return build


def _raw(data: bytes) -> Builder:
    def build(path: Path) -> None:
        path.write_bytes(data)

    return build


def _object_pair(count: object, layers: object) -> Array:
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = count, layers
    return pair


W = np.array([10.0])
L0 = np.arange(6, dtype=np.float32).reshape(2, 3)
L1 = np.zeros(4)


def _learning(**extra: Array | bytes) -> Builder:
    """weighting, layer_0 and layer_1, with members added or replaced (raw `<key>.npy` replaces `<key>`)."""
    base: dict[str, Array | bytes] = {"weighting": W, "layer_0": L0, "layer_1": L1}
    for key in extra:
        base.pop(key.removesuffix(".npy"), None)
    return _npz({**base, **extra})


def _analytics(members: dict[str, Array | bytes]) -> Builder:
    return _npz({"weighting": np.array([0.0]), **members, KIND: np.array("federated_analytics")})


def _objects(*items: object) -> Array:
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array


@dataclass(frozen=True)
class Case:
    """One file, its origin and the verdict we expect (None: accepted)."""

    name: str
    build: Builder | None
    """None: the 3.0.1 client's own writer makes the file, inside the peer."""
    expect: ErrorCode | None


# Every rule the 3.0.1 client applies, one fault per rejected case. The client and our lenient
# policy must agree on each, and our code must name the rule.
SHARED = [
    # Learning (L1-L4).
    Case("learning-minimal", _learning(), None),
    Case("learning-weighting-0d", _npz({"weighting": np.array(5.0), "layer_0": L0}), None),
    Case("learning-weighting-1x1", _npz({"weighting": np.array([[5.0]]), "layer_0": L0}), None),
    Case("learning-weighting-int64", _npz({"weighting": np.array([7]), "layer_0": L0}), None),
    Case(
        "learning-big-endian-fortran-layers",
        _npz(
            {
                "weighting": W,
                "layer_0": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
                "layer_1": np.arange(3, dtype=">i4"),
            }
        ),
        None,
    ),
    Case("L1-missing-weighting", _npz({"layer_0": L0}), "missing-weighting"),
    Case("L1-empty-zip", _npz({}), "missing-weighting"),
    Case(
        "L2-weighting-two-values", _learning(weighting=np.array([1.0, 2.0])), "weighting-not-single"
    ),
    Case("L2-weighting-empty", _learning(weighting=np.zeros(0)), "weighting-not-single"),
    Case(
        "L2-weighting-not-npy-data",
        _learning(**{"weighting.npy": b"ten, as plain text"}),
        "not-an-array",
    ),
    Case("L3-no-layers", _npz({"weighting": W}), "no-layers"),
    Case("L3-only-other-keys", _npz({"weighting": W, "bias": L1}), "no-layers"),
    Case("L3-layer-norm-only", _npz({"weighting": W, "layer_norm": L1}), None),
    Case("L4-object-layer", _learning(layer_1=_objects(1, "a")), "pickle-forbidden"),
    Case("L4-layer-not-npy-data", _learning(**{"layer_1.npy": b"not an array"}), "not-an-array"),
    Case("layers-with-gaps", _npz({"weighting": W, "layer_0": L0, "layer_7": L1}), None),
    Case("string-layers", _learning(layer_1=np.array(["a", "bc"])), None),
    Case("bytes-layers", _learning(layer_1=np.array([b"a", b"bc"])), None),
    Case("datetime-layer", _learning(layer_1=np.array(["2024-01-01"], dtype="M8[D]")), None),
    Case("zero-d-layers", _npz({"weighting": W, "layer_0": np.array(1.5)}), None),
    Case("nan-weighting", _learning(weighting=np.array([np.nan])), None),
    Case("negative-weighting", _learning(weighting=np.array([-3.0])), None),
    Case("string-weighting", _learning(weighting=np.array(["ten"])), None),
    Case("extra-key", _learning(notes=np.arange(3)), None),
    # The payload kind declaration.
    Case("kind-learning-declared", _learning(**{KIND: np.array("federated_learning")}), None),
    Case("kind-analytics-declared", _analytics({"age_n": np.array([3])}), None),
    Case("kind-1d-array", _learning(**{KIND: np.array(["federated_learning"])}), "unknown-kind"),
    Case("kind-bytes", _learning(**{KIND: np.array(b"federated_learning")}), "unknown-kind"),
    Case("kind-unknown-string", _learning(**{KIND: np.array("federated_magic")}), "unknown-kind"),
    # Analytics (A1-A5).
    Case("A1-no-fields", _analytics({}), "no-fields"),
    Case("A1-kind-only", _npz({KIND: np.array("federated_analytics")}), "no-fields"),
    Case("A2-layer-0-field", _analytics({"layer_0": L1}), "reserved-field-name"),
    Case("A2-layer-01-field", _analytics({"layer_01": L1}), "reserved-field-name"),
    Case("A2-unicode-digit-field", _analytics({"layer_\u0663": L1}), "reserved-field-name"),
    Case("A2-layer-norm-field", _analytics({"layer_norm": L1}), None),
    Case("A3-object-field", _analytics({"f": _objects(1, "a")}), "pickle-forbidden"),
    Case("A3-field-not-npy-data", _analytics({"f.npy": b"not an array"}), "not-an-array"),
    Case("A4-0d-field", _analytics({"f": np.array(3.0)}), "bare-scalar"),
    Case("A4-empty-1d-field", _analytics({"f": np.zeros(0)}), None),
    Case(
        "A5-datetime-field",
        _analytics({"f": np.array(["2024-01-01"], dtype="M8[D]")}),
        "unsupported-dtype",
    ),
    Case(
        "A5-timedelta-field", _analytics({"f": np.array([3], dtype="m8[s]")}), "unsupported-dtype"
    ),
    Case(
        "A5-structured-field",
        _analytics({"f": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")])}),
        "unsupported-dtype",
    ),
    Case(
        "analytics-every-allowed-dtype",
        _analytics(
            {
                "b": np.array([True]),
                "i": np.array([-1, 2], dtype=np.int8),
                "u": np.arange(3, dtype=np.uint64),
                "f": np.ones((2, 2), dtype=np.float16),
                "c": np.array([1 + 2j]),
                "U": np.array(["x", "yz"]),
                "S": np.array([b"x"]),
            }
        ),
        None,
    ),
    Case("analytics-no-weighting", _npz({"f": L1, KIND: np.array("federated_analytics")}), None),
    Case("analytics-weighting-any-size", _analytics({"weighting": np.zeros(3), "f": L1}), None),
    Case("analytics-nan-and-inf", _analytics({"f": np.array([np.nan, np.inf, -np.inf])}), None),
    # Other inputs.
    Case("plain-npy", _raw(_npy(L0)), "not-a-payload"),
    Case("not-numpy-at-all", _raw(b"weights, but as prose\n"), "not-a-payload"),
    Case("object-npy-not-a-pair", _raw(_npy(_objects(5, [L0], None))), "not-object-pair"),
    # Written by the 3.0.1 client itself (spec 5.9.5).
    Case("sdk-save-weights", None, None),
    Case("sdk-save-weights-no-parameters", None, "no-layers"),
    Case("sdk-save-fields-analytics", None, None),
    Case("sdk-save-fields-learning-layer-x", None, None),
    # Spec 5.9.5 "Surprise": named tensors written as a learning payload fail the client's own L3.
    Case("sdk-save-fields-learning-named", None, "no-layers"),
    Case("sdk-save-analytics", None, None),
]


@dataclass(frozen=True)
class Difference:
    """A file the client accepts and we refuse on purpose, with the code we refuse it with."""

    name: str
    code: ErrorCode
    why: str


# Accepted by the 3.0.1 client and by our lenient policy, refused by the default strict policy.
STRICT_ONLY = [
    Difference("string-layers", "not-numeric", "FedAvg cannot average strings"),
    Difference("bytes-layers", "not-numeric", "FedAvg cannot average bytes"),
    Difference("datetime-layer", "not-numeric", "FedAvg cannot average dates"),
    Difference("layers-with-gaps", "layer-numbering", "layer_0 + layer_7 is not a model"),
    Difference("L3-layer-norm-only", "layer-numbering", "no positional layer at all"),
    Difference("sdk-save-fields-learning-layer-x", "layer-numbering", "layer_x is not positional"),
    Difference("extra-key", "unexpected-key", "the platform would silently drop the key"),
    Difference("negative-weighting", "bad-weighting", "a negative weight breaks FedAvg"),
    Difference("nan-weighting", "bad-weighting", "a NaN weight poisons every average"),
    Difference("string-weighting", "bad-weighting", "a weight must be a number"),
]


def _duplicate_layer(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # zipfile warns about the duplicate name we write on purpose
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("weighting.npy", _npy(W))
            archive.writestr("layer_0.npy", _npy(L0))
            archive.writestr("layer_0.npy", _npy(L1))


# Accepted by the 3.0.1 client, refused by us in any mode: every member of an archive is checked
# before anything is trusted. The client never opens extra keys, reads only as many bytes as a
# header promises, keeps the last of two equal names, and tells arrays apart by their magic bytes
# rather than the `.npy` suffix (so, unlike spec 5.9.1 says, a suffix-less `layer_0` holding .npy
# bytes loads as an array and passes L3 and L4).
HOSTILE = [
    Case("object-array-in-extra-key", _learning(extra=_objects(1, "a")), "pickle-forbidden"),
    Case(
        "member-data-longer-than-header",
        _npz({"weighting": W, "layer_0.npy": _npy(L0) + bytes(16)}),
        "shape-mismatch",
    ),
    Case(
        "extra-member-data-shorter-than-header",
        _learning(**{"notes.npy": _npy(np.zeros(4))[:-8]}),
        "shape-mismatch",
    ),
    Case("non-npy-member-name", _learning(**{"README.txt": b"hello"}), "bad-member-name"),
    Case(
        "layer-member-without-npy-suffix",
        _npz({"weighting": W, "layer_0": _npy(L0)}),
        "bad-member-name",
    ),
    Case("unreadable-extra-member", _learning(**{"notes.npy": b"not an array"}), "not-an-array"),
    Case("duplicate-member", _duplicate_layer, "duplicate-member"),
]

# Refused by the 3.0.1 client, accepted by us: inspect_payload reads both dialects, and a v1 file
# (the 2.6.2 client's format, spec 3.6) is parsed without pickle and converted to NPZ on upload.
V1_DIALECT = Case("v1-object-npy", _raw(_npy(_object_pair(42, [L0, L1]))), None)


# ---------------------------------------------------------------- helpers and fixtures


@dataclass(frozen=True)
class Verdict:
    """What a client said about one file."""

    ok: bool
    error: str
    path: Path


def _code(path: Path, policy: ValidationPolicy) -> ErrorCode | None:
    """Our error code for the file, or None when it is accepted."""
    try:
        inspect_payload(path, policy)
    except WeightsError as error:
        return error.code
    return None


def _verdicts(raw: dict[str, dict[str, Any]]) -> dict[str, Verdict]:
    return {
        name: Verdict(ok=bool(v["ok"]), error=str(v["error"]), path=Path(v["path"]))
        for name, v in raw.items()
    }


def _same_arrays(got: Array, want: Array) -> None:
    """Equal shape and values, and the same dtype apart from byte order."""
    assert got.shape == want.shape
    assert got.dtype.newbyteorder("=") == want.dtype.newbyteorder("=")
    np.testing.assert_array_equal(got, want)


def _layers(path: Path, prefix: str) -> list[Array]:
    """The arrays `<prefix>0, <prefix>1, ...` of an NPZ, in order (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        keys = sorted(
            (k for k in data.files if k.startswith(prefix)), key=lambda k: int(k[len(prefix) :])
        )
        return [data[k] for k in keys]


@pytest.fixture(scope="session")
def peer_v3() -> Peer:
    """The official 3.0.1 client in its own virtualenv."""
    return peer_or_fail(V3)


@pytest.fixture(scope="session")
def peer_v1() -> Peer:
    """The official 2.6.2 (protocol v1) client in its own virtualenv."""
    return peer_or_fail(V1)


@pytest.fixture(scope="module")
def v3_verdicts(peer_v3: Peer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Verdict]:
    """The 3.0.1 client's verdict on every v3 case, from one run of the peer."""
    root = tmp_path_factory.mktemp("v3")
    (root / "sdk").mkdir()
    paths: dict[str, str] = {}
    for case in [*SHARED, *HOSTILE, V1_DIALECT]:
        if case.build is not None:
            path = root / f"{case.name}.npz"
            case.build(path)
            paths[case.name] = str(path)
    raw = peer_v3.run_json(_V3_SCRIPT, {"sdk_dir": str(root / "sdk"), "paths": paths})
    verdicts = _verdicts(raw)
    assert set(verdicts) == {c.name for c in [*SHARED, *HOSTILE, V1_DIALECT]}
    return verdicts


@dataclass(frozen=True)
class V1Result:
    """What the 2.6.2 client said about one v1 file written by numpy.save in its venv."""

    verdict: Verdict
    count: Any
    reference: Path | None
    """The file's layers as a plain NPZ (arr_0, arr_1, ...), for files the client accepted."""


@pytest.fixture(scope="module")
def v1_results(peer_v1: Peer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, V1Result]:
    """The 2.6.2 client's verdict on every v1 case, written and checked in one run of the peer."""
    root = tmp_path_factory.mktemp("v1")
    raw: dict[str, dict[str, Any]] = peer_v1.run_json(_V1_SCRIPT, str(root))
    verdicts = _verdicts(raw)
    return {
        name: V1Result(
            verdict=verdicts[name],
            count=raw[name]["count"] if isinstance(raw[name]["count"], int) else None,
            reference=Path(raw[name]["reference"]) if raw[name]["reference"] else None,
        )
        for name in raw
    }


# ---------------------------------------------------------------- 3.0.1: NPZ payloads


@pytest.mark.parametrize("case", SHARED, ids=lambda c: c.name)
def test_lenient_policy_agrees_with_client_3_0_1(
    case: Case, v3_verdicts: dict[str, Verdict]
) -> None:
    """The 3.0.1 client and our lenient policy accept and refuse the same file, and our code names the rule."""
    client = v3_verdicts[case.name]
    assert client.ok is (case.expect is None), client.error
    assert _code(client.path, LENIENT) == case.expect


@pytest.mark.parametrize("difference", STRICT_ONLY, ids=lambda d: d.name)
def test_strict_policy_refuses_what_client_3_0_1_accepts(
    difference: Difference, v3_verdicts: dict[str, Verdict]
) -> None:
    """Each documented strict-only refusal is a file the 3.0.1 client and our lenient policy accept."""
    client = v3_verdicts[difference.name]
    assert client.ok, client.error
    assert _code(client.path, LENIENT) is None
    assert _code(client.path, STRICT) == difference.code, difference.why


@pytest.mark.parametrize("case", HOSTILE, ids=lambda c: c.name)
def test_hostile_input_refused_though_client_3_0_1_accepts(
    case: Case, v3_verdicts: dict[str, Verdict]
) -> None:
    """Bytes the 3.0.1 client never opens are still checked by us, and refused even in lenient mode."""
    client = v3_verdicts[case.name]
    assert client.ok, client.error
    assert _code(client.path, LENIENT) == case.expect
    assert _code(client.path, STRICT) == case.expect


def test_v1_file_refused_by_client_3_0_1_is_read_as_dialect_v1(
    v3_verdicts: dict[str, Verdict],
) -> None:
    """A v1 object .npy fails the 3.0.1 client (pickle refused) but inspect_payload reads it as v1 without pickle."""
    client = v3_verdicts[V1_DIALECT.name]
    assert not client.ok
    assert "allow_pickle" in client.error
    assert _code(client.path, LENIENT) is None
    payload = inspect_payload(client.path, STRICT)
    assert (payload.format, payload.weighting, payload.layer_count) == ("npy-object", 42.0, 2)


def _bundle(column: str) -> list[str]:
    return [f"{column}_{suffix}" for suffix in ("n", "sum", "sumsq", "min", "max", "nan")]


# What the SDK's writers produce, as our strict policy describes it: (kind, weighting, array keys).
SDK_STRICT: dict[str, tuple[str, float, list[str]]] = {
    "sdk-save-weights": ("federated_learning", 1000.0, ["layer_0", "layer_1", "layer_2"]),
    "sdk-save-fields-analytics": (
        "federated_analytics",
        0.0,
        ["target_spacing", "num_channels", "labels", "flagged", "codes", "histogram"],
    ),
    "sdk-save-analytics": ("federated_analytics", 0.0, [*_bundle("age"), *_bundle("volume")]),
}


@pytest.mark.parametrize("name", SDK_STRICT)
def test_sdk_files_pass_strict_policy(name: str, v3_verdicts: dict[str, Verdict]) -> None:
    """What save_weights, save_fields (analytics) and save_analytics write passes our default strict policy."""
    client = v3_verdicts[name]
    assert client.ok, client.error
    payload = inspect_payload(client.path, STRICT)
    assert (payload.kind, payload.weighting) == SDK_STRICT[name][:2]
    assert [info.key for info in payload.arrays] == SDK_STRICT[name][2]


@pytest.mark.parametrize(
    ("name", "code"),
    [
        # Passes the client's prefix test (L3); our strict numbering wants layer_0 .. layer_{n-1}.
        ("sdk-save-fields-learning-layer-x", "layer-numbering"),
        # save_weights(path, w, []) writes a weighting and no layer at all.
        ("sdk-save-weights-no-parameters", "no-layers"),
    ],
)
def test_other_sdk_files_under_strict_policy(
    name: str, code: ErrorCode, v3_verdicts: dict[str, Verdict]
) -> None:
    """save_fields(kind='federated_learning') with layer_x names fails only strict; save_weights with no layers fails both."""
    client = v3_verdicts[name]
    assert client.ok is (code == "layer-numbering"), client.error
    assert _code(client.path, STRICT) == code


def test_save_fields_learning_with_named_tensors_fails_both(
    v3_verdicts: dict[str, Verdict],
) -> None:
    """save_fields(kind='federated_learning') with names like bn1.weight fails the client's own L3 and ours (5.9.5)."""
    client = v3_verdicts["sdk-save-fields-learning-named"]
    assert not client.ok
    assert "No layer arrays found" in client.error
    with np.load(client.path, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(["bn1.weight", "bn1.bias", "weighting", KIND])
    assert _code(client.path, LENIENT) == "no-layers"
    assert _code(client.path, STRICT) == "no-layers"


# ---------------------------------------------------------------- 2.6.2: v1 object .npy


@dataclass(frozen=True)
class V1Case:
    """A v1 file built by the peer, the 2.6.2 client's verdict and ours (lenient)."""

    name: str
    client_ok: bool
    expect: ErrorCode | None
    why: str = ""


V1_VALID = [
    "valid-mixed",
    "valid-all-numeric-dtypes",
    "valid-big-endian",
    "valid-fortran-order",
    "valid-0d-and-empty",
    "valid-huge-count",
]

V1_SHARED = [
    *(V1Case(name, True, None) for name in V1_VALID),
    V1Case(
        "numpy-int64-count",
        False,
        "pickle-forbidden",
        "a numpy integer is pickled through numpy's scalar reconstructor, a global we never resolve",
    ),
    V1Case(
        "bool-count",
        False,
        "not-integer",
        "True is pickled as a bool, refused by the exact type test",
    ),
    V1Case(
        "float-count",
        False,
        "not-integer",
        "a float count is read, then refused by the exact type test",
    ),
    V1Case("string-count", False, "not-integer"),
    V1Case("tuple-of-layers", False, "not-list"),
    V1Case("empty-list", False, "not-ndarray"),
    V1Case("first-item-not-array", False, "not-ndarray"),
    V1Case(
        "first-item-numpy-scalar",
        False,
        "pickle-forbidden",
        "a numpy scalar goes through numpy's scalar reconstructor, as for the count",
    ),
    V1Case("layers-as-ndarray", False, "not-list"),
    V1Case("object-array-shape-3", False, "not-object-pair", "the client fails 'shape != 2'"),
    V1Case(
        "object-array-0d", False, "not-object-pair", "the client fails on shape[0] of a 0-d array"
    ),
]

# Accepted by the 2.6.2 client, which checks only the first layer's type; refused by us in any mode.
V1_DIFFERENCES = [
    V1Case("string-layer", True, "pickle-forbidden", "only numeric dtypes are rebuilt"),
    V1Case("later-item-not-array", True, "not-ndarray", "every layer must be an array"),
    V1Case("object-layer", True, "pickle-forbidden", "a nested object array needs real unpickling"),
]


def test_v1_case_tables_cover_every_peer_file(v1_results: dict[str, V1Result]) -> None:
    """The peer built exactly the v1 files the tables below describe, so none goes unchecked."""
    assert set(v1_results) == {c.name for c in [*V1_SHARED, *V1_DIFFERENCES]} | {"negative-count"}


@pytest.mark.parametrize("case", V1_SHARED, ids=lambda c: c.name)
def test_lenient_policy_agrees_with_client_2_6_2(
    case: V1Case, v1_results: dict[str, V1Result]
) -> None:
    """The 2.6.2 client and our v1 reader agree on each (num_samples, [arrays]) file, and our code names the fault."""
    client = v1_results[case.name].verdict
    assert client.ok is case.client_ok, client.error
    assert _code(client.path, LENIENT) == case.expect, case.why


@pytest.mark.parametrize("case", V1_DIFFERENCES, ids=lambda c: c.name)
def test_v1_files_refused_though_client_2_6_2_accepts(
    case: V1Case, v1_results: dict[str, V1Result]
) -> None:
    """Files the 2.6.2 client passes on its first-layer check alone are refused by us, leniently or strictly."""
    client = v1_results[case.name].verdict
    assert client.ok, client.error
    assert _code(client.path, LENIENT) == case.expect, case.why
    assert _code(client.path, STRICT) == case.expect, case.why


def test_v1_negative_count_refused_only_by_strict_policy(v1_results: dict[str, V1Result]) -> None:
    """A negative sample count passes the 2.6.2 client and our lenient policy, and fails strict as bad-weighting."""
    client = v1_results["negative-count"].verdict
    assert client.ok, client.error
    assert _code(client.path, LENIENT) is None
    assert _code(client.path, STRICT) == "bad-weighting"


@pytest.fixture(scope="module")
def converted_to_npz(
    v1_results: dict[str, V1Result], peer_v3: Peer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Verdict]:
    """The valid v1 files of the 2.6.2 peer, converted by object_npy_to_npz and checked by 3.0.1 in one run."""
    root = tmp_path_factory.mktemp("v1-to-npz")
    paths: dict[str, str] = {}
    for name in V1_VALID:
        converted = root / f"{name}.npz"
        object_npy_to_npz(v1_results[name].verdict.path, converted)
        paths[name] = str(converted)
    return _verdicts(peer_v3.run_json(_V3_SCRIPT, {"sdk_dir": None, "paths": paths}))


@pytest.mark.parametrize("name", V1_VALID)
def test_object_npy_to_npz_output_passes_client_3_0_1(
    name: str, v1_results: dict[str, V1Result], converted_to_npz: dict[str, Verdict]
) -> None:
    """A v1 file numpy.save wrote in the peer converts to an NPZ the 3.0.1 client accepts, with equal arrays."""
    source, client = v1_results[name], converted_to_npz[name]
    assert client.ok, client.error
    assert source.reference is not None
    assert isinstance(source.count, int)
    with np.load(client.path, allow_pickle=False) as data:
        assert data.files[0] == "weighting"
        assert data["weighting"].tolist() == [float(source.count)]
    got, want = _layers(client.path, "layer_"), _layers(source.reference, "arr_")
    assert len(got) == len(want)
    for mine, theirs in zip(got, want, strict=True):
        _same_arrays(mine, theirs)


def _seq(dtype: str, shape: tuple[int, ...] = (5,)) -> Array:
    return (np.arange(int(np.prod(shape))) % 7 - 3).astype(dtype).reshape(shape)


# NPZ inputs for npz_to_object_npy: the layers and a whole sample count.
NPZ_INPUTS: dict[str, tuple[int, list[Array]]] = {
    "floats": (1, [np.linspace(-1, 1, 5, dtype=np.float16), _seq("f4", (2, 3)), _seq("f8")]),
    "signed-ints": (2, [_seq("i1"), _seq("i2"), _seq("i4"), np.array([-(2**63), 2**63 - 1])]),
    "unsigned-ints": (
        3,
        [
            np.array([0, 255], "u1"),
            np.arange(4, dtype="u2"),
            np.arange(3, dtype="u4"),
            np.array([2**64 - 1], "u8"),
        ],
    ),
    "bool": (4, [np.array([True, False, True]), np.zeros((2, 2), dtype=bool)]),
    "complex": (5, [np.array([1 + 2j, -3j], dtype=np.complex64), np.array([[0.5 - 1j]])]),
    "big-endian": (6, [_seq(">f8"), _seq(">i4"), np.array([1 - 1j], ">c8"), _seq(">u2")]),
    "fortran-order": (
        7,
        [np.asfortranarray(_seq("f4", (2, 3))), np.asfortranarray(_seq("i8", (2, 3, 4)))],
    ),
    "zero-d": (8, [np.array(3.5), np.array(-7, dtype=np.int8)]),
    "empty": (
        0,
        [np.zeros(0), np.zeros((3, 0), dtype=np.float32), np.zeros((0, 2, 2), dtype=np.int16)],
    ),
    "large-count": (2**40, [_seq("f4")]),
}


@dataclass(frozen=True)
class Loaded:
    """What the 2.6.2 peer made of one of our v1 files."""

    verdict: Verdict
    types: list[str]
    count: Any
    reference: Path | None


@pytest.fixture(scope="module")
def converted_to_v1(peer_v1: Peer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Loaded]:
    """Every NPZ input converted by npz_to_object_npy, validated and loaded by 2.6.2 in one run."""
    root = tmp_path_factory.mktemp("npz-to-v1")
    paths: dict[str, str] = {}
    for name, (count, layers) in NPZ_INPUTS.items():
        arrays: dict[str, Array | bytes] = {"weighting": np.array([float(count)])}
        arrays.update({f"layer_{i}": layer for i, layer in enumerate(layers)})
        _npz(arrays)(root / f"{name}.npz")
        npz_to_object_npy(root / f"{name}.npz", root / f"{name}.npy")
        paths[name] = str(root / f"{name}.npy")
    raw: dict[str, dict[str, Any]] = peer_v1.run_json(_V1_LOAD_SCRIPT, paths)
    return {
        name: Loaded(
            verdict=Verdict(ok=bool(v["ok"]), error=str(v["error"]), path=Path(paths[name])),
            types=list(v.get("types", [])),
            count=v.get("count"),
            reference=Path(v["reference"]) if v.get("reference") else None,
        )
        for name, v in raw.items()
    }


@pytest.mark.parametrize("name", NPZ_INPUTS)
def test_npz_to_object_npy_output_passes_client_2_6_2(
    name: str, converted_to_v1: dict[str, Loaded]
) -> None:
    """Our v1 file passes the 2.6.2 client and unpickles there to (int, list) with the input's arrays."""
    loaded = converted_to_v1[name]
    count, layers = NPZ_INPUTS[name]
    assert loaded.verdict.ok, loaded.verdict.error
    assert loaded.types == ["int", "list"]
    assert loaded.count == count
    assert loaded.reference is not None
    got = _layers(loaded.reference, "arr_")
    assert len(got) == len(layers)
    for theirs, mine in zip(got, layers, strict=True):
        _same_arrays(theirs, mine)
