"""Uploads with an RFC 9530 digest: checked in every case, and in v3 sent on to BranchKey while they
arrive, the upstream request cut (never completed) when the file turns out wrong."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.faulty_upstream import Die, FaultyUpstream, Reply, Seen
from tests.support.gateways import Gateway, leaf_gateway
from tests.support.http import check_problem
from tests.support.weights import npy_bytes

CREDENTIALS = {
    "id": "leaf-d",
    "name": "leaf d",
    "session_token": "token-d",
    "tree_id": "tree-d",
    "branch_id": "branch-d",
}
RUN = "/api/v1/run/branch-d"
UPLOAD = "/api/v1/file/upload"
STARTED = Reply(200, {"data": {"run_status": "start", "run_number": 1}})
TAKEN = Reply(201, {"data": {"file_id": "file-d"}})
MiB = 1 << 20
RAW = {"Content-Type": "application/octet-stream"}


def _model(values: int = MiB) -> bytes:
    """A stored NPZ in the SDK's layout (4 MiB of float32 by default)."""
    buffer = io.BytesIO()
    layer = np.arange(values, dtype=np.float32)
    np.savez(buffer, weighting=np.array([3.0]), layer_0=layer)
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


def _file_part(sent: Seen) -> bytes:
    """The `file` part's bytes of an upload BranchKey received."""
    boundary = sent.headers["content-type"].split("boundary=")[1].encode()
    for part in sent.body.split(b"--" + boundary):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return data[: -len(b"\r\n")]
    raise AssertionError("no file part")


class Trainer:
    """A trainer that sends its body in two halves and, between them, waits (up to `patience`
    seconds) for BranchKey to see bytes of the upload: `early` says whether it did."""

    def __init__(
        self, fake: FaultyUpstream, body: bytes, split: int | None = None, patience: float = 10
    ) -> None:
        self.fake, self.body = fake, body
        self.split = len(body) // 2 if split is None else split
        self.patience = patience
        self.early = False

    def __iter__(self) -> Iterator[bytes]:
        yield self.body[: self.split]
        deadline = time.monotonic() + self.patience
        while time.monotonic() < deadline and not self.early:
            self.early = self.fake.arriving("POST", UPLOAD) > 0
            time.sleep(0.02)
        yield self.body[self.split :]


def _post(gateway: Gateway, content: Any, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(timeout=60) as client:
        return client.post(f"{gateway.url}/upload", content=content, headers=headers)


def _form(boundary: str, data: bytes, part_headers: str = "", after: str = "") -> bytes:
    """A multipart body: the `file` part (with extra part headers), then optional fields."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="w.npz"\r\n'
        f"Content-Type: application/octet-stream\r\n{part_headers}\r\n"
    ).encode()
    return head + data + f"\r\n{after}--{boundary}--\r\n".encode()


@pytest.fixture
def fake() -> Iterator[FaultyUpstream]:
    upstream = FaultyUpstream()
    with upstream.running():
        upstream.on("GET", RUN, STARTED)
        upstream.on("POST", UPLOAD, TAKEN)
        yield upstream


@pytest.fixture
def gateway(fake: FaultyUpstream, tmp_path: Path) -> Iterator[Gateway]:
    with leaf_gateway(tmp_path, fake.url, CREDENTIALS) as running:
        yield running


def test_a_raw_upload_with_its_digest_goes_upstream_while_it_arrives(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """Raw body + Content-Digest: BranchKey sees the file before the trainer has sent all of it,
    and receives it whole, with the claimed digest in its integrity headers."""
    model = _model()
    trainer = Trainer(fake, model)
    headers = {**RAW, "Content-Length": str(len(model)), "Content-Digest": _digest(model)}
    answer = _post(gateway, trainer, headers)
    assert answer.status_code == 201, answer.text
    assert trainer.early
    [sent] = fake.requests("POST", UPLOAD)
    assert sent.complete
    assert _file_part(sent) == model
    expected = base64.b64encode(hashlib.sha256(model).digest()).decode()
    assert sent.headers["x-bk-file-digest"] == f"sha256={expected}"
    assert sent.headers["x-bk-file-size"] == str(len(model))
    assert answer.json()["sha256"] == hashlib.sha256(model).hexdigest()


def test_without_a_digest_nothing_goes_upstream_before_the_file_is_whole(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """The same upload without Content-Digest is stored, then forwarded (the control case)."""
    model = _model()
    trainer = Trainer(fake, model, patience=2)
    answer = _post(gateway, trainer, {**RAW, "Content-Length": str(len(model))})
    assert answer.status_code == 201, answer.text
    assert not trainer.early
    [sent] = fake.requests("POST", UPLOAD)
    assert _file_part(sent) == model


def test_repr_digest_counts_as_content_digest(fake: FaultyUpstream, gateway: Gateway) -> None:
    """Repr-Digest (no content coding: the same bytes) starts the upload early as well."""
    model = _model()
    trainer = Trainer(fake, model)
    headers = {**RAW, "Content-Length": str(len(model)), "Repr-Digest": _digest(model)}
    assert _post(gateway, trainer, headers).status_code == 201
    assert trainer.early


def test_a_wrong_digest_is_refused_and_the_upstream_request_never_completes(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """A digest of other bytes: 400 digest-mismatch; BranchKey saw the upload start but never got
    all of it, so it cannot have stored it."""
    model = _model()
    trainer = Trainer(fake, model)
    headers = {**RAW, "Content-Length": str(len(model)), "Content-Digest": _digest(b"other")}
    answer = _post(gateway, trainer, headers)
    problem = check_problem(answer, 400, "digest-mismatch")
    assert "sha256sum" in problem["detail"]
    assert trainer.early
    assert all(not sent.complete for sent in fake.requests("POST", UPLOAD))


def test_an_invalid_file_with_a_right_digest_is_cut_before_it_completes(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """Bytes that are not weights, sent with their own digest: the validation refuses them and
    the upstream request, already under way, is cut before its last byte."""
    junk = bytes(range(256)) * 8192
    trainer = Trainer(fake, junk)
    headers = {**RAW, "Content-Length": str(len(junk)), "Content-Digest": _digest(junk)}
    answer = _post(gateway, trainer, headers)
    assert answer.status_code in (400, 415, 422), answer.text
    assert trainer.early
    [sent] = fake.requests("POST", UPLOAD)
    assert not sent.complete
    assert len(sent.body) < int(sent.headers["content-length"])


def test_a_file_the_gateway_converts_is_sent_converted(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """A plain .npy with its digest: the early request carries the .npy and is cut; BranchKey gets
    the NPZ it was converted to, once."""
    array = npy_bytes(np.arange(MiB, dtype=np.float32))
    headers = {**RAW, "Content-Length": str(len(array)), "Content-Digest": _digest(array)}
    answer = _post(gateway, Trainer(fake, array), headers)
    assert answer.status_code == 201, answer.text
    complete = [sent for sent in fake.requests("POST", UPLOAD) if sent.complete]
    [sent] = complete
    assert _file_part(sent)[:2] == b"PK"
    assert answer.json()["sha256"] == hashlib.sha256(_file_part(sent)).hexdigest()


def test_a_digest_on_the_file_part_sends_a_form_early(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """curl -F 'file=@w.npz;headers="Content-Digest: ..."': the part's own digest, the file's
    size taken from the form's length; BranchKey gets the file whole."""
    model = _model()
    body = _form("b0und", model, f"Content-Digest: {_digest(model)}\r\n")
    trainer = Trainer(fake, body)
    headers = {"Content-Type": "multipart/form-data; boundary=b0und"}
    answer = _post(gateway, trainer, {**headers, "Content-Length": str(len(body))})
    assert answer.status_code == 201, answer.text
    assert trainer.early
    [sent] = fake.requests("POST", UPLOAD)
    assert _file_part(sent) == model


def test_a_request_digest_on_a_form_is_taken_for_the_file(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """curl -F file=@w.npz -H 'Content-Digest: <the file's>': what a trainer knows is the file's
    digest, so the gateway takes it as that and sends early."""
    model = _model()
    body = _form("b0und", model)
    trainer = Trainer(fake, body)
    headers = {
        "Content-Type": "multipart/form-data; boundary=b0und",
        "Content-Length": str(len(body)),
        "Content-Digest": _digest(model),
    }
    answer = _post(gateway, trainer, headers)
    assert answer.status_code == 201, answer.text
    assert trainer.early
    [sent] = fake.requests("POST", UPLOAD)
    assert _file_part(sent) == model


def test_a_whole_body_digest_on_a_form_is_accepted(fake: FaultyUpstream, gateway: Gateway) -> None:
    """Content-Digest of the whole multipart body (RFC 9530's meaning): verified, and the file
    goes upstream with its own digest (the early request, made with the claim, is cut)."""
    model = _model()
    body = _form("b0und", model)
    headers = {
        "Content-Type": "multipart/form-data; boundary=b0und",
        "Content-Length": str(len(body)),
        "Content-Digest": _digest(body),
    }
    answer = _post(gateway, Trainer(fake, body), headers)
    assert answer.status_code == 201, answer.text
    [sent] = [sent for sent in fake.requests("POST", UPLOAD) if sent.complete]
    assert _file_part(sent) == model
    expected = base64.b64encode(hashlib.sha256(model).digest()).decode()
    assert sent.headers["x-bk-file-digest"] == f"sha256={expected}"


def test_a_field_after_the_file_part_falls_back_to_store_and_forward(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """A form whose file is not its last part: the size guessed from the form's length is wrong,
    so the early request is cut and the file goes once it is whole (and the field is honoured)."""
    model = _model()
    field = '--b0und\r\nContent-Disposition: form-data; name="weighting"\r\n\r\n7\r\n'
    body = _form("b0und", model, f"Content-Digest: {_digest(model)}\r\n", after=field)
    headers = {
        "Content-Type": "multipart/form-data; boundary=b0und",
        "Content-Length": str(len(body)),
    }
    answer = _post(gateway, Trainer(fake, body), headers)
    assert answer.status_code == 201, answer.text
    [sent] = [sent for sent in fake.requests("POST", UPLOAD) if sent.complete]
    assert np.load(io.BytesIO(_file_part(sent)))["weighting"].tolist() == [7.0]


def test_a_part_content_length_gives_the_size(fake: FaultyUpstream, gateway: Gateway) -> None:
    """A file part with its own Content-Length (and a field after it) is sent early all the same."""
    model = _model()
    field = '--b0und\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n'
    part_headers = f"Content-Digest: {_digest(model)}\r\nContent-Length: {len(model)}\r\n"
    body = _form("b0und", model, part_headers, after=field)
    trainer = Trainer(fake, body)
    headers = {
        "Content-Type": "multipart/form-data; boundary=b0und",
        "Content-Length": str(len(body)),
    }
    assert _post(gateway, trainer, headers).status_code == 201
    assert trainer.early
    [sent] = fake.requests("POST", UPLOAD)
    assert _file_part(sent) == model


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("sha-256=abc", "base64 between colons"),
        ("sha-256=:AAAA:", "32-byte digest"),
        (f"sha-256=:{hashlib.sha256(b'x').hexdigest()}:", "not hex"),
        ("sha-256", "not a digest entry"),
    ],
)
def test_a_malformed_digest_field_is_400_before_the_body(
    fake: FaultyUpstream, gateway: Gateway, value: str, says: str
) -> None:
    """A digest field that does not parse is refused with how to write it; nothing goes upstream."""
    model = _model(1000)
    answer = _post(gateway, model, {**RAW, "Content-Digest": value})
    problem = check_problem(answer, 400, "bad-request")
    assert says in problem["detail"]
    assert fake.requests("POST", UPLOAD) == []


def test_other_algorithms_are_ignored(gateway: Gateway) -> None:
    """sha-512 only: nothing to use or check (RFC 9530 lets a recipient ignore it); the upload
    goes the usual way."""
    model = _model(1000)
    value = f"sha-512=:{base64.b64encode(hashlib.sha512(b'x').digest()).decode()}:"
    answer = _post(gateway, model, {**RAW, "Content-Digest": value})
    assert answer.status_code == 201, answer.text


def test_disagreeing_content_and_repr_digest_are_400(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """Both fields, naming different digests: refused, as one of them is wrong."""
    model = _model(1000)
    headers = {**RAW, "Content-Digest": _digest(model), "Repr-Digest": _digest(b"x")}
    problem = check_problem(_post(gateway, model, headers), 400, "bad-request")
    assert "Repr-Digest" in problem["detail"]
    assert fake.requests("POST", UPLOAD) == []


def test_a_content_coding_is_refused(fake: FaultyUpstream, gateway: Gateway) -> None:
    """A gzip-coded body is refused up front instead of being read as a broken weights file."""
    answer = _post(gateway, b"\x1f\x8b" + bytes(30), {**RAW, "Content-Encoding": "gzip"})
    problem = check_problem(answer, 415, "unsupported-media-type")
    assert "Content-Encoding" in problem["detail"]
    assert fake.requests("POST", UPLOAD) == []


def test_a_trainer_that_disconnects_leaves_no_complete_upstream_request(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """The trainer stops half way and closes: the early request is cut, never completed."""
    model = _model()
    half = len(model) // 2
    headers = {**RAW, "Content-Length": str(len(model)), "Content-Digest": _digest(model)}
    gone = threading.Event()

    def halves() -> Iterator[bytes]:
        yield model[:half]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and fake.arriving("POST", UPLOAD) == 0:
            time.sleep(0.02)
        gone.set()
        raise OSError("the trainer stops")

    with pytest.raises((OSError, httpx.HTTPError)):
        _post(gateway, halves(), headers)
    assert gone.is_set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not fake.requests("POST", UPLOAD):
        time.sleep(0.05)
    [sent] = fake.requests("POST", UPLOAD)
    assert not sent.complete


def test_with_cut_through_off_the_digest_is_still_checked(
    fake: FaultyUpstream, tmp_path: Path
) -> None:
    """GATEWAY_CUT_THROUGH=false: no early request, but a wrong digest is still a 400."""
    model = _model()
    with leaf_gateway(tmp_path, fake.url, CREDENTIALS, gateway_cut_through=False) as gateway:
        trainer = Trainer(fake, model, patience=2)
        headers = {**RAW, "Content-Length": str(len(model)), "Content-Digest": _digest(model)}
        assert _post(gateway, trainer, headers).status_code == 201
        assert not trainer.early
        wrong = {**headers, "Content-Digest": _digest(b"x")}
        check_problem(_post(gateway, model, wrong), 400, "digest-mismatch")
    assert len(fake.requests("POST", UPLOAD)) == 1


def test_an_early_request_cut_by_branchkey_is_sent_again_from_the_start(
    fake: FaultyUpstream, gateway: Gateway
) -> None:
    """BranchKey drops the connection 256 KiB into the early request: the retry reads the temp
    file from its first byte (while it is still arriving), and BranchKey gets it whole once."""
    fake.on("POST", UPLOAD, Die(256 * 1024), TAKEN)
    model = _model()
    headers = {**RAW, "Content-Length": str(len(model)), "Content-Digest": _digest(model)}
    answer = _post(gateway, Trainer(fake, model), headers)
    assert answer.status_code == 201, answer.text
    cut, whole = fake.requests("POST", UPLOAD)
    assert not cut.complete
    assert whole.complete
    assert _file_part(whole) == model


def test_a_trainer_pausing_longer_than_the_stall_bound_does_not_cut_the_early_request(
    fake: FaultyUpstream, tmp_path: Path
) -> None:
    """BK_TRANSFER_STALL_S bounds BranchKey's slowness, not the trainer's: an early request that
    waits 2.5 s for the trainer's next bytes under a 1 s bound still completes."""
    model = _model()
    half = len(model) // 2
    headers = {**RAW, "Content-Length": str(len(model)), "Content-Digest": _digest(model)}

    def paused() -> Iterator[bytes]:
        yield model[:half]
        time.sleep(2.5)
        yield model[half:]

    with leaf_gateway(tmp_path, fake.url, CREDENTIALS, bk_transfer_stall_s=1) as gateway:
        answer = _post(gateway, paused(), headers)
    assert answer.status_code == 201, answer.text
    [sent] = fake.requests("POST", UPLOAD)
    assert sent.complete
    assert _file_part(sent) == model
