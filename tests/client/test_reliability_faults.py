"""Fault matrix on the emulator, for put_object and resumable_upload, async and sync.

Every injected failure must end in its documented outcome, and the stored object must be
either absent or byte-identical to the source: never partial, never wrong.

* transient faults (5xx, a dropped connection, an answer slower than the timeout, a wrong
  CRC-64, RequestTimeTooSkewed) are retried: success, and the object is exact;
* persistent faults end in a clear error (ServiceError, RequestError, InconsistentError);
  nothing is stored; a resumable upload keeps its checkpoint and its upload, and the rerun
  sends exactly the parts OSS does not have;
* a failing callback (server down, 500, too slow, not JSON) is a CallbackError: the object
  IS stored (``e.result`` describes it), the upload is never retried, and a resumable
  upload's checkpoint is removed so a rerun does not complete twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.facades import Api
from support.reliability_helpers import (
    PART,
    MiB,
    assert_absent_or_identical,
    assert_stored_exactly,
    await_until,
    free_port,
    md5_etag,
    open_api,
    part_numbers,
    records,
    write_file,
)

from oss_callback import (
    Callback,
    CallbackError,
    CallbackUnknownError,
    InconsistentError,
    RequestError,
    RetryPolicy,
    ServiceError,
)
from oss_callback.protocol._crc64 import crc64
from oss_callback.testing import CallbackReceiver, OSSEmulator

pytestmark = pytest.mark.usefixtures("oss_emulator")

BUCKET = "test-bucket"  # the conftest's bucket_name


#: Faults that a retry gets past (the emulator's effect, as Fault keyword arguments).
TRANSIENT: dict[str, dict[str, Any]] = {
    "500": {"status": 500},
    "503": {"status": 503},
    "dropped-connection": {"drop_connection": True},
    "wrong-crc64": {"corrupt_crc": True},
    "RequestTimeTooSkewed": {"status": 403, "code": "RequestTimeTooSkewed"},
}


@pytest.fixture(params=["async", "sync"])
def facade(request: pytest.FixtureRequest) -> str:
    """The facade for tests that build their own client (short timeouts)."""
    return str(request.param)


def checkpoint_doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())["payload"]
    return doc


def checkpoint_parts(path: Path) -> set[int]:
    return {int(p["number"]) for p in checkpoint_doc(path)["parts"]}


# --------------------------------------------------------------------------- put_object


@pytest.mark.parametrize("source", ["bytes", "file"])
@pytest.mark.parametrize("fault", list(TRANSIENT))
async def test_put_object_transient_fault_is_retried_and_the_object_is_exact(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, fault: str, source: str
) -> None:
    path = tmp_path / "src.bin"
    data = write_file(path, 2 * MiB + 123)  # several chunks: a drop lands mid-body
    rule = oss_emulator.faults.add(operation="PutObject", **TRANSIENT[fault])
    if source == "file":
        result = await api.put_object("fault/put.bin", file=path)
    else:
        result = await api.put_object("fault/put.bin", data)
    assert rule.fired == 1
    assert result.etag == md5_etag(data)
    assert result.crc64 == crc64(data)
    assert result.size == len(data)
    assert_stored_exactly(oss_emulator, BUCKET, "fault/put.bin", data)
    await await_until(lambda: len(records(oss_emulator, "PutObject")) >= 2)
    puts = records(oss_emulator, "PutObject")
    assert sorted(r.fault for r in puts) == [False, True]  # retried once, stored by the retry
    (stored,) = [r for r in puts if not r.fault]
    assert stored.status == 200 and stored.body_size == len(data)


@pytest.mark.parametrize(
    ("fault", "spec", "error"),
    [
        ("500", {"status": 500}, ServiceError),
        ("dropped-connection", {"drop_connection": True}, RequestError),
        ("wrong-crc64", {"corrupt_crc": True}, InconsistentError),
    ],
)
async def test_put_object_persistent_fault_is_a_clear_error(
    api: Api, oss_emulator: OSSEmulator, fault: str, spec: dict[str, Any],
    error: type[Exception],
) -> None:
    data = os.urandom(300_000)
    oss_emulator.faults.add(operation="PutObject", times=None, **spec)
    with pytest.raises(error) as info:
        await api.put_object("fault/persistent", data)
    assert "\n" not in str(info.value)
    if isinstance(info.value, ServiceError):
        assert info.value.status == 500 and info.value.code == "InternalError"
        assert info.value.request_id
    if isinstance(info.value, InconsistentError):
        assert info.value.client_crc == crc64(data) != info.value.server_crc
    await await_until(lambda: len(records(oss_emulator, "PutObject")) == 3,
                      what="3 attempts recorded")  # RetryPolicy's default: 3 attempts
    # 500 and drop: nothing stored; a lying CRC header: the bytes stored are still exact
    assert_absent_or_identical(oss_emulator, BUCKET, "fault/persistent", data)
    if fault != "wrong-crc64":
        assert oss_emulator.head_object(BUCKET, "fault/persistent") is None


async def test_unreplayable_body_is_not_retried_after_a_drop(
    api: Api, oss_emulator: OSSEmulator
) -> None:
    chunks = [os.urandom(512 * 1024) for _ in range(4)]

    def stream() -> Iterator[bytes]:
        yield from chunks

    oss_emulator.faults.add(operation="PutObject", drop_connection=True)
    with pytest.raises(RequestError):
        await api.put_object("fault/stream", stream())
    await await_until(lambda: len(records(oss_emulator, "PutObject")) == 1)
    assert len(records(oss_emulator, "PutObject")) == 1  # a generator can't be replayed
    assert oss_emulator.head_object(BUCKET, "fault/stream") is None


async def test_put_object_answer_slower_than_the_timeout_is_retried(
    facade: str, oss_emulator: OSSEmulator, bucket_name: str
) -> None:
    oss_emulator.create_bucket(bucket_name)
    data = os.urandom(400_000)
    oss_emulator.faults.add(operation="PutObject", delay=0.7)
    async with open_api(oss_emulator, bucket_name, facade, timeout=0.3) as api:
        result = await api.put_object("fault/slow", data)
    assert result.crc64 == crc64(data)
    # The timed-out first attempt wakes up later (OSS, too, may finish a request whose
    # client left): it stores nothing, or the very same bytes, never something else.
    await await_until(lambda: any(r.fault for r in records(oss_emulator, "PutObject")),
                      what="the delayed attempt to finish")
    assert [r.status for r in records(oss_emulator, "PutObject") if r.fault] in ([-1], [200])
    assert_stored_exactly(oss_emulator, bucket_name, "fault/slow", data)


async def test_put_object_always_slower_than_the_timeout_is_a_timeout_error(
    facade: str, oss_emulator: OSSEmulator, bucket_name: str
) -> None:
    oss_emulator.create_bucket(bucket_name)
    data = os.urandom(200_000)
    oss_emulator.faults.add(operation="PutObject", delay=0.7, times=None)
    async with open_api(oss_emulator, bucket_name, facade, timeout=0.3,
                        retry=RetryPolicy.no_wait(max_attempts=2)) as api:
        with pytest.raises(RequestError, match="timed out"):
            await api.put_object("fault/never", data)
    await await_until(lambda: len(records(oss_emulator, "PutObject")) == 2,
                      what="both delayed attempts to finish")
    # a timeout is ambiguous (the server may still finish): absent or exact, never partial
    assert_absent_or_identical(oss_emulator, bucket_name, "fault/never", data)


# --------------------------------------------------------------------------- resumable


@pytest.mark.parametrize("fault", list(TRANSIENT))
async def test_resumable_transient_fault_on_one_part_is_retried(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, fault: str
) -> None:
    src = tmp_path / "src.bin"
    data = write_file(src, 5 * PART + 777)  # 6 parts
    ckpt = tmp_path / "ckpt.json"
    rule = oss_emulator.faults.add(operation="UploadPart", query_equals=("partNumber", "3"),
                                   **TRANSIENT[fault])
    result = await api.resumable_upload("fault/parts.bin", src, part_size=PART, concurrency=2,
                                        checkpoint_file=ckpt)
    assert rule.fired == 1
    assert result.crc64 == crc64(data) and result.upload_id
    assert_stored_exactly(oss_emulator, BUCKET, "fault/parts.bin", data)
    sent = part_numbers(records(oss_emulator, "UploadPart"), ok_only=False)
    assert sorted(sent) == [1, 2, 3, 3, 4, 5, 6]  # only the faulted part went twice
    assert not ckpt.exists()
    assert oss_emulator.list_uploads(BUCKET) == []


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"status": 500}, ServiceError),
        ({"drop_connection": True}, RequestError),
        ({"corrupt_crc": True}, InconsistentError),
    ],
    ids=["500", "dropped-connection", "wrong-crc64"],
)
async def test_resumable_persistent_part_failure_keeps_progress_then_resumes(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, spec: dict[str, Any],
    error: type[Exception],
) -> None:
    src = tmp_path / "src.bin"
    data = write_file(src, 5 * PART + 1)  # 6 parts
    ckpt = tmp_path / "ckpt.json"
    key = "fault/resume.bin"
    oss_emulator.faults.add(operation="UploadPart", query_equals=("partNumber", "3"),
                            times=None, **spec)
    with pytest.raises(error):
        await api.resumable_upload(key, src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt)
    # the documented outcome: a clear error, the checkpoint and the upload kept
    assert checkpoint_parts(ckpt) == {1, 2}
    upload_id = checkpoint_doc(ckpt)["upload_id"]
    assert oss_emulator.list_uploads(BUCKET) == [upload_id]
    assert oss_emulator.head_object(BUCKET, key) is None
    held = {p.part_number for p in (await api.list_parts(key, upload_id)).parts}
    assert {1, 2} <= held

    oss_emulator.faults.clear()
    mark = len(oss_emulator.requests)
    result = await api.resumable_upload(key, src, part_size=PART, concurrency=2,
                                        checkpoint_file=ckpt)
    assert result.upload_id == upload_id
    resent = part_numbers(records(oss_emulator, "UploadPart", since=mark))
    # nothing OSS already holds is sent again; every missing part exactly once
    assert sorted(resent) == sorted(set(range(1, 7)) - held)
    assert_stored_exactly(oss_emulator, BUCKET, key, data)
    assert not ckpt.exists()
    assert oss_emulator.list_uploads(BUCKET) == []


async def test_resumable_part_slower_than_the_timeout_keeps_progress(
    facade: str, oss_emulator: OSSEmulator, bucket_name: str, tmp_path: Path
) -> None:
    oss_emulator.create_bucket(bucket_name)
    src = tmp_path / "src.bin"
    data = write_file(src, 4 * PART)
    ckpt = tmp_path / "ckpt.json"
    oss_emulator.faults.add(operation="UploadPart", query_equals=("partNumber", "2"),
                            delay=0.7, times=None)
    async with open_api(oss_emulator, bucket_name, facade, timeout=0.3,
                        retry=RetryPolicy.no_wait(max_attempts=2)) as api:
        with pytest.raises(RequestError, match="timed out"):
            await api.resumable_upload("fault/slow.bin", src, part_size=PART, concurrency=1,
                                       checkpoint_file=ckpt)
        assert checkpoint_parts(ckpt) == {1}
        await await_until(
            lambda: len([r for r in records(oss_emulator, "UploadPart") if r.fault]) == 2,
            what="the delayed attempts to finish")
        # the late attempts may have stored part 2 after all: the rerun must use it then
        upload_id = checkpoint_doc(ckpt)["upload_id"]
        held = {p.part_number for p in (await api.list_parts("fault/slow.bin",
                                                             upload_id)).parts}
        assert 1 in held and held <= {1, 2}
        oss_emulator.faults.clear()
        mark = len(oss_emulator.requests)
        await api.resumable_upload("fault/slow.bin", src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt)
    resent = part_numbers(records(oss_emulator, "UploadPart", since=mark))
    assert resent == sorted({1, 2, 3, 4} - held)
    assert_stored_exactly(oss_emulator, bucket_name, "fault/slow.bin", data)


async def test_no_such_upload_on_complete_keeps_the_checkpoint_and_no_callback_fires(
    api: Api, oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    data = write_file(src, 3 * PART + 5)
    ckpt = tmp_path / "ckpt.json"
    key = "fault/complete.bin"
    cb = Callback(callback_receiver.url + "/done", body="object=${object}&crc=${crc64}")
    oss_emulator.faults.add(operation="CompleteMultipartUpload", status=404, code="NoSuchUpload")
    with pytest.raises(ServiceError) as info:
        await api.resumable_upload(key, src, part_size=PART, checkpoint_file=ckpt, callback=cb)
    assert not isinstance(info.value, CallbackError)
    assert info.value.status == 404 and info.value.code == "NoSuchUpload"
    assert oss_emulator.head_object(BUCKET, key) is None
    assert callback_receiver.received == [] and oss_emulator.callbacks == []
    assert checkpoint_parts(ckpt) == {1, 2, 3, 4}

    mark = len(oss_emulator.requests)
    result = await api.resumable_upload(key, src, part_size=PART, checkpoint_file=ckpt,
                                        callback=cb)
    assert records(oss_emulator, "UploadPart", since=mark) == []  # every part reused
    assert result.callback_status == 200
    assert len(callback_receiver.received) == 1
    assert_stored_exactly(oss_emulator, BUCKET, key, data)
    assert not ckpt.exists()


async def test_lost_complete_answer_is_an_error_and_the_object_is_exact(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    data = write_file(src, 3 * PART)
    ckpt = tmp_path / "ckpt.json"
    # Complete is performed, then the connection drops 10 bytes into the answer
    oss_emulator.faults.add(operation="CompleteMultipartUpload", drop_after_bytes=10)
    with pytest.raises(RequestError):
        await api.resumable_upload("fault/lost.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert_stored_exactly(oss_emulator, BUCKET, "fault/lost.bin", data)
    assert ckpt.exists()  # the outcome is unknown to the client: progress is kept
    await api.resumable_upload("fault/lost.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert_stored_exactly(oss_emulator, BUCKET, "fault/lost.bin", data)
    assert not ckpt.exists()
    assert oss_emulator.list_uploads(BUCKET) == []


async def test_rerun_after_a_lost_complete_answer_does_not_upload_or_notify_again(
    api: Api, oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    data = write_file(src, 6 * PART)
    ckpt = tmp_path / "ckpt.json"
    cb = Callback(callback_receiver.url)
    oss_emulator.faults.add(operation="CompleteMultipartUpload", drop_after_bytes=3)
    with pytest.raises(RequestError):
        await api.resumable_upload("fault/twice.bin", src, part_size=PART, concurrency=2,
                                   checkpoint_file=ckpt, callback=cb)
    assert len(callback_receiver.received) == 1
    mark = len(oss_emulator.requests)
    # The Complete went through but its answer was lost: stored, and the callback ran, but
    # nothing told this side how the callback went, so the rerun can't claim it succeeded.
    with pytest.raises(CallbackUnknownError) as info:
        await api.resumable_upload("fault/twice.bin", src, part_size=PART, concurrency=2,
                                   checkpoint_file=ckpt, callback=cb)
    assert info.value.result.recovered
    assert info.value.result.callback_status is None
    assert_stored_exactly(oss_emulator, BUCKET, "fault/twice.bin", data)
    resent = sum(r.body_size for r in records(oss_emulator, "UploadPart", since=mark))
    assert resent == 0  # nothing is uploaded again
    assert len(callback_receiver.received) == 1  # and the application is told once


async def test_wrong_crc64_after_complete_deletes_the_object(
    api: Api, oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 3 * PART + 1)
    ckpt = tmp_path / "ckpt.json"
    oss_emulator.faults.add(operation="CompleteMultipartUpload", corrupt_crc=True)
    with pytest.raises(InconsistentError, match="CompleteMultipartUpload"):
        await api.resumable_upload("fault/crc.bin", src, part_size=PART, checkpoint_file=ckpt,
                                   callback=Callback(callback_receiver.url))
    # documented: the (possibly wrong) object is deleted, and the upload is over
    assert oss_emulator.head_object(BUCKET, "fault/crc.bin") is None
    assert not ckpt.exists()
    assert oss_emulator.list_uploads(BUCKET) == []
    # OSS calls back before the client can check: the application did hear of it once
    assert len(callback_receiver.received) == 1


async def test_wrong_crc64_after_complete_is_caught_even_when_the_callback_fails(
    api: Api, oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 3 * PART + 1)
    callback_receiver.respond(status=500)
    oss_emulator.faults.add(operation="CompleteMultipartUpload", corrupt_crc=True)
    with pytest.raises(InconsistentError):
        await api.resumable_upload("fault/crc203.bin", src, part_size=PART,
                                   checkpoint_file=tmp_path / "ckpt.json",
                                   callback=Callback(callback_receiver.url))
    assert oss_emulator.head_object(BUCKET, "fault/crc203.bin") is None


# --------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize("operation", ["put_object", "resumable_upload"])
@pytest.mark.parametrize(
    ("how", "says"),
    [("server-down", "connect"), ("http-500", "500"), ("too-slow", "timeout"),
     ("not-json", "json")],
)
async def test_failing_callback_is_a_callback_error_with_the_object_stored(
    api: Api, oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver, tmp_path: Path,
    operation: str, how: str, says: str,
) -> None:
    url = callback_receiver.url + "/hook"
    if how == "server-down":
        url = f"http://127.0.0.1:{free_port()}/hook"
    elif how == "http-500":
        callback_receiver.respond(status=500, body=b'{"error":"boom"}')
    elif how == "too-slow":
        oss_emulator.callback_timeout = 0.3
        callback_receiver.respond(delay=5.0)
    else:
        callback_receiver.respond(body=b"<html>OK</html>", content_type="text/html")
    cb = Callback(url, body="object=${object}&size=${size}&crc=${crc64}")
    src = tmp_path / "src.bin"
    data = write_file(src, 3 * PART + 99)
    ckpt = tmp_path / "ckpt.json"
    key = f"cb/{how}.bin"
    if operation == "put_object":
        upload = api.put_object(key, data, callback=cb)
    else:
        upload = api.resumable_upload(key, src, part_size=PART, concurrency=2,
                                      checkpoint_file=ckpt, callback=cb)
    with pytest.raises(CallbackError) as info:
        await upload
    err = info.value
    assert err.status == 203 and err.code == "CallbackFailed"
    assert says in err.message.lower() and says in str(err).lower()
    assert "was stored" in str(err)
    # the object IS stored, exactly, and e.result says which one
    assert_stored_exactly(oss_emulator, BUCKET, key, data)
    stored = oss_emulator.head_object(BUCKET, key)
    assert stored is not None
    assert err.result.key == key
    assert err.result.etag == stored.etag and err.result.crc64 == crc64(data)
    assert err.result.callback_status == 203
    # a 203 is never retried: one upload request, one callback attempt
    op = "PutObject" if operation == "put_object" else "CompleteMultipartUpload"
    await await_until(lambda: len(records(oss_emulator, op)) >= 1)
    assert len(records(oss_emulator, op)) == 1
    (attempt,) = oss_emulator.callbacks
    assert attempt.error is not None and says in attempt.error.lower()
    if how != "server-down":
        assert len(callback_receiver.received) == 1
    if operation == "resumable_upload":
        assert err.result.upload_id is not None
        assert not ckpt.exists()  # a rerun must not complete (and notify) again
        assert oss_emulator.list_uploads(BUCKET) == []


# --------------------------------------------------------------------------- downloads


@pytest.mark.parametrize(
    ("spec", "error"),
    [({"drop_after_bytes": 1000}, RequestError), ({"corrupt_body": True}, InconsistentError)],
    ids=["cut-mid-body", "corrupted"],
)
async def test_bad_download_leaves_no_file(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path, spec: dict[str, Any],
    error: type[Exception],
) -> None:
    data = os.urandom(300_000)
    await api.put_object("dl/obj", data)
    oss_emulator.faults.add(operation="GetObject", times=None, **spec)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(error):
        await api.get_object_to_file("dl/obj", out / "obj.bin")
    with pytest.raises(error):
        await api.get_object("dl/obj")
    assert list(out.iterdir()) == []  # neither the target nor a temp file
    oss_emulator.faults.clear()
    await api.get_object_to_file("dl/obj", out / "obj.bin")
    assert (out / "obj.bin").read_bytes() == data
