"""The generated hostile corpus: exact verdicts, no foreign exceptions, no side effects, and fuzzing."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.weights import (
    ErrorCode,
    Payload,
    ValidationPolicy,
    WeightsError,
    detect_format,
    fedavg,
    inspect_aggregate,
    inspect_npz,
    inspect_object_npy,
    inspect_payload,
    layers_to_npz,
    normalize_aggregate,
    npz_to_layers,
    npz_to_object_npy,
    object_npy_to_npz,
    to_npz,
)
from tests.support.corpus import (
    Case,
    Entry,
    build_corpus,
    case_names,
    entries_of,
    learning,
    npy,
    raw_zip,
    v1_array,
    valid_npz_bytes,
    valid_object_npy_bytes,
)

# Loads each file the way a naive consumer would; run only in a child process, on our own payloads.
_NAIVE_LOADER = """
import sys, zipfile
import numpy as np
for name in sys.argv[1:]:
    try:
        if zipfile.is_zipfile(name):
            with np.load(name, allow_pickle=True) as archive:
                for key in archive.files:
                    archive[key]
        else:
            np.load(name, allow_pickle=True)
    except Exception as exc:
        print(name, type(exc).__name__, exc)
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """The whole corpus, built once for this module."""
    return {c.name: c for c in build_corpus(tmp_path_factory.mktemp("corpus"))}


def _policy(case: Case) -> ValidationPolicy:
    return case.policy or ValidationPolicy()


def _verdict(case: Case, out: Path) -> ErrorCode | None:
    """The code the case's own entry point gives, or None when it accepts the input."""
    try:
        if case.parts:
            layers_to_npz(list(case.parts), case.weighting, out / "parts.npz", case.policy)
        else:
            inspect_payload(case.path, case.policy)
    except WeightsError as error:
        return error.code
    return None


def test_corpus_has_at_least_40_files(corpus: dict[str, Case]) -> None:
    """The corpus holds at least 40 generated files, under unique case names."""
    files = {p for c in corpus.values() for p in (c.path, *c.parts)}
    assert len(files) >= 40
    assert len(corpus) == len(case_names())
    assert all(p.is_file() for p in files)


@pytest.mark.parametrize("name", case_names())
def test_case_gets_its_exact_verdict(name: str, corpus: dict[str, Case], tmp_path: Path) -> None:
    """Each corpus file is refused with exactly its expected code (or accepted), and no payload runs."""
    case = corpus[name]
    got = _verdict(case, tmp_path)
    assert got == case.expect_code, f"{name}: {case.note}"
    if case.marker is not None:
        assert not case.marker.exists(), f"{name}: the payload ran"


def _entry_points(case: Case, out: Path) -> Iterator[tuple[str, Callable[[], object]]]:
    policy = _policy(case)
    limits = policy.limits
    path = case.path
    yield "inspect_payload", lambda: inspect_payload(path, policy)
    yield (
        "inspect_payload(deep)",
        lambda: inspect_payload(path, ValidationPolicy(deep=True, limits=limits)),
    )
    yield (
        "inspect_payload(lenient)",
        lambda: inspect_payload(path, ValidationPolicy.lenient(limits)),
    )
    yield "detect_format", lambda: detect_format(path, limits)
    yield "inspect_npz", lambda: inspect_npz(path, policy)
    yield "inspect_object_npy", lambda: inspect_object_npy(path, policy)
    yield "inspect_aggregate", lambda: inspect_aggregate(path, policy)
    yield "object_npy_to_npz", lambda: object_npy_to_npz(path, out / "from_v1.npz", policy)
    yield "npz_to_object_npy", lambda: _npz_to_object_npy_checked(path, out / "to_v1.npy", policy)
    yield "normalize_aggregate", lambda: normalize_aggregate(path, out / "normalized.npz", limits)
    yield "npz_to_layers", lambda: npz_to_layers(path, out / "layers", policy)
    yield "to_npz", lambda: to_npz(path, out / "to.npz", policy)
    yield "layers_to_npz", lambda: layers_to_npz([path], 3, out / "parts.npz", policy)
    yield "fedavg", lambda: fedavg([path, path], out / "mean.npz", policy)


def _npz_to_object_npy_checked(src: Path, dst: Path, policy: ValidationPolicy) -> Payload:
    """Convert, then require the gateway to accept its own output."""
    payload = npz_to_object_npy(src, dst, policy)
    try:
        inspect_payload(dst, ValidationPolicy.lenient(policy.limits))
    except WeightsError as error:
        raise AssertionError(f"the converted v1 file is refused by the reader: {error!r}") from None
    return payload


@pytest.mark.parametrize("name", case_names())
def test_every_entry_point_succeeds_or_raises_weights_error(
    name: str, corpus: dict[str, Case], tmp_path: Path
) -> None:
    """No public entry point lets an exception other than WeightsError escape, runs a payload, or leaves a partial file."""
    case = corpus[name]
    failures: list[str] = []
    for entry, call in _entry_points(case, tmp_path):
        try:
            call()
        except WeightsError:
            pass
        except Exception:
            failures.append(f"{entry}: {traceback.format_exc(limit=-4)}")
        leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".partial")]
        if leftovers:
            failures.append(f"{entry}: left {leftovers}")
        if case.marker is not None and case.marker.exists():
            failures.append(f"{entry}: the payload ran")
    assert failures == [], "\n".join(failures)


def _deep_accepted_npz(case: Case, out: Path) -> Path | None:
    """The NPZ that deep validation accepted for this case (built from its parts if it has them)."""
    policy = _policy(case)
    deep = dataclasses.replace(policy, deep=True)
    try:
        if case.parts:
            target = out / f"{case.name}.npz"
            layers_to_npz(list(case.parts), case.weighting, target, deep)
            return target
        if detect_format(case.path, policy.limits) == "npz":
            inspect_payload(case.path, deep)
            return case.path
    except Exception:  # refused, or a crash that the entry-point test reports
        return None
    return None


def test_deep_acceptance_means_numpy_can_read_it(corpus: dict[str, Case], tmp_path: Path) -> None:
    """Whatever deep validation accepts as an NPZ (or builds from parts), numpy.load reads without pickle."""
    failures: list[str] = []
    accepted = 0
    for case in corpus.values():
        target = _deep_accepted_npz(case, tmp_path)
        if target is None:
            continue
        accepted += 1
        try:
            with np.load(target, allow_pickle=False) as archive:
                for key in archive.files:
                    archive[key]
        except Exception as exc:
            failures.append(f"{case.name}: {type(exc).__name__}: {exc}")
    assert accepted >= 20
    assert failures == [], "\n".join(failures)


def test_pickle_payloads_would_really_run(tmp_path: Path) -> None:
    """Loaded naively with pickle (in a child process), every marked payload does create its marker."""
    cases = build_corpus(tmp_path)
    live = [c for c in cases if c.live]
    baseline = next(c for c in cases if c.name == "v1_hand_built_baseline")
    assert len(live) >= 15
    result = subprocess.run(
        [sys.executable, "-c", _NAIVE_LOADER, str(baseline.path), *(str(c.path) for c in live)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert str(baseline.path) not in result.stdout, (
        "the hand-built v1 stream must be one numpy loads"
    )
    deadline = time.monotonic() + 10  # subprocess.Popen payloads touch their marker asynchronously
    missing = [c.name for c in live if c.marker is not None and not c.marker.exists()]
    while missing and time.monotonic() < deadline:
        time.sleep(0.05)
        missing = [c.name for c in live if c.marker is not None and not c.marker.exists()]
    assert missing == [], result.stdout + result.stderr


def _layer_with_corrupt_tail(path: Path) -> Path:
    """A deflated layer whose first KiB inflate fine and whose compressed data is garbage later on."""
    rng = np.random.default_rng(7)
    layer = npy(rng.standard_normal(64 * 1024).astype(np.float32))  # 256 KiB, barely compressible
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    packed = bytearray(packer.compress(layer) + packer.flush())
    assert len(packed) > 64 * 1024
    packed[32 * 1024 : 48 * 1024] = bytes(range(256)) * 64
    entries = [
        *entries_of(learning({})),
        Entry(b"layer_0.npy", layer, zipfile.ZIP_DEFLATED, data=bytes(packed)),
    ]
    path.write_bytes(raw_zip(entries))
    return path


def test_default_validation_reads_headers_only(tmp_path: Path) -> None:
    """Default validation never inflates layer data past its header; deep mode does and sees the damage."""
    path = _layer_with_corrupt_tail(tmp_path / "corrupt.npz")
    payload = inspect_payload(path)
    assert [a.key for a in payload.arrays] == ["layer_0"]
    with pytest.raises(WeightsError) as refused:
        inspect_payload(path, ValidationPolicy(deep=True))
    assert refused.value.code in ("crc-mismatch", "invalid-archive")


def test_nan_layers_pass_by_default_and_fail_deep(tmp_path: Path) -> None:
    """A NaN layer (NPZ or v1) is accepted by default and refused as not-finite in deep mode."""
    layers = [np.array([1.0, np.nan], dtype=np.float32), np.array([np.inf + 0j])]
    npz_path = tmp_path / "nan.npz"
    npz_path.write_bytes(
        raw_zip(entries_of(learning({"layer_0": layers[0], "layer_1": layers[1]})))
    )
    v1_path = tmp_path / "nan.npy"
    v1_path.write_bytes(npy(v1_array(3, layers), allow_pickle=True))
    for path in (npz_path, v1_path):
        assert inspect_payload(path).layer_count == 2
        with pytest.raises(WeightsError) as refused:
            inspect_payload(path, ValidationPolicy(deep=True))
        assert refused.value.code == "not-finite"


# ------------------------------------------------------------------ mutation fuzzing

_SEEDS = {
    "npz-compressed": valid_npz_bytes(compress=True),
    "npz-stored": valid_npz_bytes(compress=False),
    "object-npy": valid_object_npy_bytes(),
}
_POLICIES = (ValidationPolicy(), ValidationPolicy(deep=True))
_mutation = st.tuples(
    st.sampled_from(("flip", "set", "cut", "insert", "delete")),
    st.integers(min_value=0, max_value=1 << 20),
    st.binary(min_size=1, max_size=16),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for op, where, blob in mutations:
        at = where % (len(out) + 1)
        if op == "flip" and at < len(out):
            out[at] ^= blob[0] or 0xFF
        elif op == "set":
            out[at : at + len(blob)] = blob
        elif op == "cut":
            del out[at:]
        elif op == "insert":
            out[at:at] = blob
        else:
            del out[at : at + len(blob)]
    return bytes(out)


@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Path]:
    """A scratch folder shared by the fuzz examples (hypothesis forbids function-scoped fixtures)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@pytest.mark.parametrize("seed", sorted(_SEEDS))
@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutations=st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_valid_files_never_escape(
    seed: str, mutations: list[tuple[str, int, bytes]], fuzz_dir: Path
) -> None:
    """Byte flips, truncations and insertions in a valid file give a Payload or a WeightsError, quickly."""
    path = fuzz_dir / f"{seed}-{os.getpid()}"
    path.write_bytes(_mutate(_SEEDS[seed], mutations))
    for policy in _POLICIES:
        started = time.monotonic()
        try:
            result = inspect_payload(path, policy)
        except WeightsError:
            pass
        else:
            assert isinstance(result, Payload)
        assert time.monotonic() - started < 5
