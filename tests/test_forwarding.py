"""The upload pipeline without a server: validation, conversion, the run wait and what reaches BranchKey."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import anyio
import numpy as np
import pytest

from gateway._io import sha256_file
from gateway.errors import (
    BadRequestError,
    NoSessionError,
    RunNotStartedError,
    SessionChangedError,
)
from gateway.forwarding import Forwarder, UploadOptions
from gateway.receiving import Received, ReceivedFile, Scratch
from gateway.settings import Settings
from gateway.upstream.session import Session
from tests.support.fake_branchkey import CREDENTIALS, FakeBranchKey, session_with
from tests.support.weights import npy_bytes, sdk_weights

LAYERS = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float32)]


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(_env_file=None, gateway_data_dir=tmp_path / "data", **overrides)  # type: ignore[arg-type]


def _received(path: Path, filename: str) -> Received:
    return Received(file=ReceivedFile(path, sha256_file(path), filename, path.stat().st_size))


def _forward(
    tmp_path: Path,
    fake: FakeBranchKey,
    received: Received,
    options: UploadOptions,
    **settings: object,
) -> object:
    """Forward `received` through a Forwarder whose upstream is `fake`; the result or the error."""
    forwarded: list[int] = []

    async def main() -> object:
        async with session_with(fake) as session:
            forwarder = Forwarder(
                session, _settings(tmp_path, **settings), tmp_path, forwarded.append
            )
            scratch = Scratch(tmp_path)
            try:
                with anyio.fail_after(10):
                    return await forwarder.forward(received, options, scratch)
            except Exception as error:  # the test inspects it
                return error
            finally:
                scratch.cleanup()

    return anyio.run(main)


def test_the_trainers_file_name_reaches_branchkey(tmp_path: Path) -> None:
    """An upload named model.npz is sent upstream as model.npz, and another file keeps its own name."""
    fake = FakeBranchKey()
    weights = sdk_weights(tmp_path / "model.npz", 3.0, LAYERS)
    _forward(tmp_path, fake, _received(weights, "model.npz"), UploadOptions())
    _forward(tmp_path, fake, _received(weights, "round 7.npz"), UploadOptions())
    assert fake.uploaded_filenames() == ["model.npz", "round 7.npz"]


def test_an_unchanged_npz_is_sent_with_its_arrival_digest(tmp_path: Path) -> None:
    """A valid BranchKey NPZ goes up byte for byte; the result reports its sha256, size and layers."""
    fake = FakeBranchKey()
    weights = sdk_weights(tmp_path / "w.npz", 2.0, LAYERS)
    result = _forward(tmp_path, fake, _received(weights, "w.npz"), UploadOptions())
    body = weights.read_bytes()
    assert getattr(result, "sha256", None) == hashlib.sha256(body).digest()
    assert getattr(result, "size", None) == len(body)
    assert body in fake.uploads[0]
    assert getattr(result, "file_id", None) == "file-1"


def test_a_weighting_override_rewrites_the_file(tmp_path: Path) -> None:
    """`?weighting=5` replaces the file's weighting in what is sent (digest of the new file)."""
    fake = FakeBranchKey()
    weights = sdk_weights(tmp_path / "w.npz", 2.0, LAYERS)
    result = _forward(tmp_path, fake, _received(weights, "w.npz"), UploadOptions(weighting="5"))
    payload = getattr(result, "payload", None)
    assert payload is not None
    assert payload.weighting == 5.0
    assert getattr(result, "sha256", b"") != sha256_file(weights)


def test_layer_parts_need_a_weighting(tmp_path: Path) -> None:
    """Per-layer parts without a weighting are refused before anything is sent."""
    fake = FakeBranchKey()
    part = tmp_path / "layer_0.npy"
    part.write_bytes(npy_bytes(LAYERS[0]))
    result = _forward(tmp_path, fake, Received(layers=(part,)), UploadOptions())
    assert isinstance(result, BadRequestError)
    assert "weighting" in result.detail
    assert fake.uploads == []


def test_layer_parts_become_one_branchkey_npz(tmp_path: Path) -> None:
    """layer_0, layer_1 parts and a form weighting are packed into the NPZ that is sent."""
    fake = FakeBranchKey()
    parts = []
    for index, layer in enumerate(LAYERS):
        part = tmp_path / f"layer_{index}.npy"
        part.write_bytes(npy_bytes(layer))
        parts.append(part)
    result = _forward(tmp_path, fake, Received(layers=tuple(parts), weighting="4"), UploadOptions())
    payload = getattr(result, "payload", None)
    assert payload is not None
    assert payload.weighting == 4.0
    assert [a.key for a in payload.arrays] == ["layer_0", "layer_1"]
    assert len(fake.uploads) == 1


def test_wait_timeout_is_capped_by_the_setting(tmp_path: Path) -> None:
    """`wait_timeout=60` with GATEWAY_WAIT_TIMEOUT_S=0.3 gives up after ~0.3 s, not a minute."""
    fake = FakeBranchKey(run_status="stop")
    weights = sdk_weights(tmp_path / "w.npz", 1.0, LAYERS)
    began = time.monotonic()
    options = UploadOptions(wait=True, wait_timeout_s=60)
    result = _forward(
        tmp_path, fake, _received(weights, "w.npz"), options, gateway_wait_timeout_s=0.3
    )
    assert isinstance(result, RunNotStartedError), result
    assert result.extra["run_status"] == "stop"
    assert time.monotonic() - began < 5
    assert fake.uploads == []


def test_a_stopped_run_refuses_at_once_without_wait(tmp_path: Path) -> None:
    """Without ?wait the run is checked once, before any body is read, and the problem says how to wait."""
    fake = FakeBranchKey(run_status="pause")

    async def main() -> RunNotStartedError | None:
        async with session_with(fake) as session:
            forwarder = Forwarder(session, _settings(tmp_path), tmp_path)
            try:
                await forwarder.check_run(UploadOptions(wait=False))
            except RunNotStartedError as error:
                return error
        return None

    error = anyio.run(main)
    assert error is not None
    assert error.extra["run_status"] == "pause"
    assert "wait=true" in error.detail
    assert fake.calls("/api/v1/run/") == 1


def test_a_waiting_trainer_is_not_refused_early(tmp_path: Path) -> None:
    """With ?wait=true the early check lets the upload in (it is held later, after validation)."""
    fake = FakeBranchKey(run_status="stop")

    async def main() -> None:
        async with session_with(fake) as session:
            await Forwarder(session, _settings(tmp_path), tmp_path).check_run(
                UploadOptions(wait=True)
            )

    anyio.run(main)
    assert fake.calls("/api/v1/run/") == 0


def test_a_logged_out_session_sends_nothing(tmp_path: Path) -> None:
    """After logout the pipeline answers no-session, and BranchKey sees no upload."""
    fake = FakeBranchKey()
    weights = sdk_weights(tmp_path / "w.npz", 1.0, LAYERS)

    async def main() -> object:
        async with session_with(fake) as session:
            session.logout()
            forwarder = Forwarder(session, _settings(tmp_path), tmp_path)
            try:
                return await forwarder.forward(
                    _received(weights, "w.npz"), UploadOptions(), Scratch(tmp_path)
                )
            except NoSessionError as error:
                return error

    assert isinstance(anyio.run(main), NoSessionError)
    assert fake.uploads == []


@pytest.mark.parametrize("name", ["weights.npz", "w.NPZ", "noext"])
def test_a_valid_file_is_accepted_whatever_its_name(tmp_path: Path, name: str) -> None:
    """The file name does not decide the format: the content does."""
    fake = FakeBranchKey()
    weights = sdk_weights(tmp_path / "w.npz", 1.0, LAYERS)
    result = _forward(tmp_path, fake, _received(weights, name), UploadOptions())
    assert getattr(result, "file_id", None) == "file-1"


@pytest.mark.parametrize("change", ["logout", "other leaf", "same leaf again"])
def test_a_session_change_while_receiving(tmp_path: Path, change: str) -> None:
    """Logged out or switched to another leaf after the upload began: a session-changed problem and
    nothing sent; a new login of the same leaf sends it with the new session."""
    fake = FakeBranchKey()
    weights = sdk_weights(tmp_path / "w.npz", 1.0, LAYERS)

    async def main() -> object:
        async with session_with(fake) as session:
            forwarder = Forwarder(session, _settings(tmp_path), tmp_path)
            started_with = await forwarder.check_run(UploadOptions())
            if change == "logout":
                session.logout()
            elif change == "other leaf":
                session.adopt(replace(CREDENTIALS, id="leaf-2", name="other-leaf"))
            else:
                session.adopt(replace(CREDENTIALS, session_token="fresh-token"))
            try:
                return await forwarder.forward(
                    _received(weights, "w.npz"), UploadOptions(), Scratch(tmp_path), started_with
                )
            except SessionChangedError as error:
                return error

    result = anyio.run(main)
    if change == "same leaf again":
        assert getattr(result, "file_id", None) == "file-1"
        assert len(fake.uploads) == 1
        return
    assert isinstance(result, SessionChangedError)
    assert result.status == 409
    assert "nothing was sent to BranchKey" in result.detail
    assert ("logged out" if change == "logout" else "to 'other-leaf'") in result.detail
    assert fake.uploads == []


def test_a_logout_while_waiting_for_the_run(tmp_path: Path) -> None:
    """A trainer waiting for the run whose session is logged out meanwhile gets session-changed."""
    fake = FakeBranchKey(run_status="stop")
    weights = sdk_weights(tmp_path / "w.npz", 1.0, LAYERS)

    async def main() -> object:
        async with session_with(fake) as session:
            forwarder = Forwarder(session, _settings(tmp_path), tmp_path)
            options = UploadOptions(wait=True)
            started_with = await forwarder.check_run(options)
            received = _received(weights, "w.npz")
            outcome: object = None
            async with anyio.create_task_group() as group:
                group.start_soon(_logout_soon, session)
                try:
                    outcome = await forwarder.forward(
                        received, options, Scratch(tmp_path), started_with
                    )
                except SessionChangedError as error:
                    outcome = error
            return outcome

    result = anyio.run(main)
    assert isinstance(result, SessionChangedError), result
    assert fake.uploads == []


async def _logout_soon(session: Session) -> None:
    await anyio.sleep(0.2)
    session.logout()
