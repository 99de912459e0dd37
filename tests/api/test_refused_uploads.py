"""Uploads the gateway must refuse: over the size cap, or hostile files; a 4xx problem, nothing kept, nothing sent."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.settings import WeightsSettings
from gateway.weights import ValidationPolicy
from gateway.weights.writer import NpzWriter
from tests.support.aggregator import ADMIN, Running
from tests.support.corpus import LENIENT, Case, build_corpus
from tests.support.gateways import Gateway, GatewayFactory
from tests.support.http import admin_get, assert_problem, check_problem, curl
from tests.support.weights import sdk_weights

LIMIT = 4096
REFUSED = {400, 413, 422}


def _nothing_left(gateway: Gateway, aggregator: Running) -> None:
    """No temp file stays behind and BranchKey received nothing."""
    assert list(gateway.tmp_dir.iterdir()) == []
    with httpx.Client() as client:
        assert admin_get(aggregator.url, ADMIN, "uploads", client) == []


def test_oversize_uploads_are_413_and_leave_nothing(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """Every upload form over GATEWAY_MAX_UPLOAD_BYTES gets a 413 problem and leaves no file on disk."""
    gateway = gateway_for(0, gateway_max_upload_bytes=LIMIT)
    noise = np.random.default_rng(0).standard_normal(4 * LIMIT // 8)
    big = sdk_weights(tmp_path / "big.npz", 1.0, [noise]).read_bytes()
    assert len(big) > 3 * LIMIT
    layer = tmp_path / "layer.npy"
    np.save(layer, noise)

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    url = f"{gateway.url}/upload"
    octet = {"Content-Type": "application/octet-stream"}
    with httpx.Client(timeout=30) as client:
        answers = [
            client.post(url, files={"file": ("big.npz", big)}),
            client.post(url, content=big, headers=octet),
            client.post(url, content=chunked(), headers=octet),
            client.post(
                url,
                files={"layer_0": ("l0.npy", layer.read_bytes())},
                data={"weighting": "1"},
            ),
        ]
    for answer in answers:
        check_problem(answer, 413, "payload-too-large")
    _nothing_left(gateway, aggregator)


def test_big_file_over_the_cap_still_gets_the_problem(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """curl sending 40 MiB to a 4 MiB cap prints the 413 problem (no broken pipe) and nothing stays on disk."""
    gateway = gateway_for(0, gateway_max_upload_bytes=4 << 20)
    big = tmp_path / "big.npz"
    with NpzWriter(big, compress=False) as writer:
        writer.write_weighting(1.0)
        writer.write_array("layer_0", np.zeros(10 << 20, dtype=np.float32))
    for args in (
        ("-F", "file=@big.npz"),
        ("--data-binary", "@big.npz", "-H", "Content-Type: application/octet-stream"),
    ):
        answer = curl(*args, f"{gateway.url}/upload", cwd=tmp_path)
        assert_problem(
            answer.status,
            answer.headers.get("content-type"),
            answer.json(),
            413,
            "payload-too-large",
        )
    _nothing_left(gateway, aggregator)


def _upload_case(client: httpx.Client, gateway: Gateway, case: Case) -> httpx.Response:
    """Send a corpus case as a `file` part, or as `layer_<n>` parts with its weighting."""
    if case.parts:
        files = {f"layer_{i}": (p.name, p.read_bytes()) for i, p in enumerate(case.parts)}
        return client.post(
            f"{gateway.url}/upload", files=files, data={"weighting": str(case.weighting)}
        )
    return client.post(
        f"{gateway.url}/upload", files={"file": (case.path.name, case.path.read_bytes())}
    )


def _misjudged(answer: httpx.Response, case: Case) -> str | None:
    """Why the answer is not the refusal `case` needs, or None when it is."""
    kind = ""
    if answer.headers.get("content-type") == "application/problem+json":
        kind = answer.json().get("type", "")
    if answer.status_code not in REFUSED or not kind.startswith("/problems/"):
        return f"{case.name}: {answer.status_code} {answer.text[:200]}"
    if answer.status_code == 422 and kind != f"/problems/weights/{case.expect_code}":
        return f"{case.name}: {kind}, expected {case.expect_code}"
    if case.marker is not None and case.marker.exists():
        return f"{case.name}: its pickle payload ran"
    return None


UPLOADABLE = {"plain_npy"}
"""Cases that are no payload for the validator but an upload form of their own: a plain `.npy`
becomes the one-layer model (tests/api/test_upload_npy.py)."""


def _judged_by_the_gateway_policy(case: Case) -> bool:
    """Refused under the gateway's default policy: strict, or lenient (strict checks more)."""
    return (
        case.expect_code is not None
        and case.name not in UPLOADABLE
        and (case.policy is None or case.policy == LENIENT)
    )


def test_hostile_corpus_is_refused_and_never_forwarded(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """Each hostile corpus file sent as `file` (or as layer parts) gets a 4xx problem; nothing reaches BranchKey."""
    assert WeightsSettings(_env_file=None).policy() == ValidationPolicy()
    cases = [c for c in build_corpus(tmp_path / "corpus") if _judged_by_the_gateway_policy(c)]
    assert len(cases) >= 100
    gateway = gateway_for(0)
    wrong: list[str] = []
    began = time.monotonic()
    with httpx.Client(timeout=30) as client:
        for case in cases:
            why = _misjudged(_upload_case(client, gateway, case), case)
            if why is not None:
                wrong.append(why)
    assert wrong == [], "\n".join(wrong)
    assert time.monotonic() - began < 60
    _nothing_left(gateway, aggregator)


TIGHTER = [
    WeightsSettings(_env_file=None, max_archive_members=4),
    WeightsSettings(_env_file=None, max_archive_members=2),
    WeightsSettings(_env_file=None, deep_validation=True),
]


def test_tighter_weights_settings_refuse_their_corpus_cases(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """GATEWAY_MAX_ARCHIVE_MEMBERS and GATEWAY_DEEP_VALIDATION reach the upload check (corpus cases)."""
    corpus = build_corpus(tmp_path / "corpus")
    checked = 0
    wrong: list[str] = []
    with httpx.Client(timeout=30) as client:
        for weights in TIGHTER:
            cases = [c for c in corpus if c.expect_code and c.policy == weights.policy()]
            gateway = gateway_for(0, weights=weights)
            for case in cases:
                why = _misjudged(_upload_case(client, gateway, case), case)
                if why is not None:
                    wrong.append(why)
            checked += len(cases)
            _nothing_left(gateway, aggregator)
    assert wrong == [], "\n".join(wrong)
    assert checked >= 5


def test_a_refused_upload_logs_its_problem(
    gateway_for: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The gateway's log says which request was refused, with the problem type and its detail."""
    gateway = gateway_for(0)
    caplog.set_level(logging.INFO, logger="gateway.requests")
    with httpx.Client() as client:
        answer = client.post(f"{gateway.url}/upload", files={"file": ("w.npz", b"not weights")})
    body = answer.json()
    assert answer.status_code == 422, body
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.requests"]
    assert f"POST /upload refused: 422 {body['type']}: {body['detail']}" in lines
