"""resumable_upload resumes only what is provably the same bytes, and never reports an upload
that didn't happen as asked (issue #14, findings 2 and 3), on the emulator.

* A same-size rewrite of an uploaded region with its mtime restored (``os.utime``, as rsync,
  tar and backup tools do) is caught on the rerun, even when the file's identity looks
  unchanged or the checkpoint is from format 1: the stored object is the NEW file, and only
  the changed parts are sent again.
* A lost CompleteMultipartUpload answer is recovered only when the stored object is provably
  this upload's (multipart ETag, size, CRC-64, written after the Initiate, the file's bytes
  unchanged); the result says ``recovered=True``, and with a callback the rerun raises
  ``CallbackUnknownError`` instead of claiming the callback ran. Otherwise a new upload
  starts and its callback fires.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from support.facades import Api
from support.reliability_helpers import (
    PART,
    assert_stored_exactly,
    await_until,
    open_api,
    part_numbers,
    records,
    write_file,
)

from oss_callback import (
    Callback,
    CallbackUnknownError,
    ClientError,
    FileChangedError,
    OSSError,
    RequestError,
    RetryPolicy,
    ServiceError,
)
from oss_callback.client._checkpoint import (
    FileIdentity,
    _checksum,
    read_checkpoint,
    write_checkpoint,
)
from oss_callback.testing import CallbackReceiver, OSSEmulator

pytestmark = pytest.mark.usefixtures("oss_emulator")

BUCKET = "test-bucket"


def rewrite_keeping_mtime(path: Path, offset: int, length: int) -> bytes:
    """Overwrite ``length`` bytes at ``offset`` in place (same size), then restore the
    mtime with ``os.utime`` as rsync/tar do. Returns the file's new content."""
    before = os.stat(path)
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(os.urandom(length))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    return path.read_bytes()


def recorded_parts(ckpt: Path) -> set[int]:
    return {int(p["number"]) for p in json.loads(ckpt.read_text())["payload"]["parts"]}


def upload_id_of(ckpt: Path) -> str:
    return str(json.loads(ckpt.read_text())["payload"]["upload_id"])


def as_format_1(ckpt: Path) -> None:
    """Rewrite a checkpoint as the previous format wrote it: version 1, no ctime, no
    Initiate time (a valid checksum: it must be read, and handled with care)."""
    doc = json.loads(ckpt.read_text())
    payload = doc["payload"]
    del payload["file"]["ctime_ns"]
    del payload["initiated_ms"]
    doc.update(version=1, checksum=_checksum(payload))
    ckpt.write_text(json.dumps(doc))


def part_md5s(data: bytes) -> list[bytes]:
    return [hashlib.md5(data[o:o + PART]).digest() for o in range(0, len(data), PART)]


async def stop_after_parts(api: Api, emu: OSSEmulator, key: str, src: Path, ckpt: Path,
                           parts: int, **kwargs: Any) -> None:
    """Run the upload one part at a time and make it fail (AccessDenied, not retried) once
    ``parts`` parts are stored: on the next part, or on Complete if that was all of them.
    The checkpoint then records exactly those parts, and OSS holds exactly them."""
    if parts * PART < src.stat().st_size:
        rule = emu.faults.add(operation="UploadPart", key=key, times=None, status=403,
                              code="AccessDenied", query_equals=("partNumber", str(parts + 1)))
    else:
        rule = emu.faults.add(operation="CompleteMultipartUpload", key=key, times=None,
                              status=403, code="AccessDenied")
    with pytest.raises(ServiceError, match="AccessDenied"):
        await api.resumable_upload(key, src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt, **kwargs)
    emu.faults.remove(rule)
    assert recorded_parts(ckpt) == set(range(1, parts + 1))


async def completes_recorded(emu: OSSEmulator, count: int) -> None:
    """Wait until the emulator has recorded ``count`` Completes: one whose answer was
    dropped is recorded when the emulator is done with it, maybe after the client moved on."""
    await await_until(lambda: len(records(emu, "CompleteMultipartUpload")) == count,
                      what="the Complete to be recorded")


# --------------------------------------------------------------------------- finding 2


async def test_same_size_rewrite_with_mtime_restored_stores_the_new_bytes(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 8 * PART)
    ckpt = tmp_path / "ckpt.json"
    await stop_after_parts(api, oss_emulator, "rewrite.bin", src, ckpt, 4)
    upload_id = upload_id_of(ckpt)
    # rewrite the end of part 2 and the start of part 3, both already on OSS
    new = rewrite_keeping_mtime(src, 2 * PART - 100, 200)

    mark = len(oss_emulator.requests)
    result = await api.resumable_upload("rewrite.bin", src, part_size=PART, concurrency=2,
                                        checkpoint_file=ckpt)
    assert_stored_exactly(oss_emulator, BUCKET, "rewrite.bin", new)
    # the same upload went on: only the two changed parts and the missing ones were sent
    assert result.upload_id == upload_id and not result.recovered
    assert sorted(part_numbers(records(oss_emulator, "UploadPart", since=mark))) == [
        2, 3, 5, 6, 7, 8]
    assert not ckpt.exists()


async def test_rewrite_is_caught_even_when_the_file_identity_looks_unchanged(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    """Timestamps are coarse on some file systems (and a clock can be set back): a rewrite
    can leave size, mtime, ctime and inode all equal. The kept parts are re-read anyway."""
    src = tmp_path / "src.bin"
    write_file(src, 6 * PART)
    ckpt = tmp_path / "ckpt.json"
    await stop_after_parts(api, oss_emulator, "same-id.bin", src, ckpt, 3)
    new = rewrite_keeping_mtime(src, PART + 10, 10)  # inside part 2
    state = read_checkpoint(str(ckpt))
    assert state is not None
    # what a too-coarse clock would have recorded: the identity of the rewritten file
    write_checkpoint(str(ckpt), attrs.evolve(state, file=FileIdentity.of(str(src))))

    mark = len(oss_emulator.requests)
    await api.resumable_upload("same-id.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert_stored_exactly(oss_emulator, BUCKET, "same-id.bin", new)
    assert sorted(part_numbers(records(oss_emulator, "UploadPart", since=mark))) == [2, 4, 5, 6]


async def test_format_1_checkpoint_is_reverified_not_trusted(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 6 * PART)
    ckpt = tmp_path / "ckpt.json"
    await stop_after_parts(api, oss_emulator, "v1.bin", src, ckpt, 3)
    upload_id = upload_id_of(ckpt)
    as_format_1(ckpt)
    new = rewrite_keeping_mtime(src, 0, 5)  # inside part 1

    mark = len(oss_emulator.requests)
    result = await api.resumable_upload("v1.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert result.upload_id == upload_id  # resumed, not restarted
    assert_stored_exactly(oss_emulator, BUCKET, "v1.bin", new)
    assert sorted(part_numbers(records(oss_emulator, "UploadPart", since=mark))) == [1, 4, 5, 6]


async def test_metadata_only_change_resumes_without_sending_kept_parts_again(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    """chmod changes the ctime, not the bytes: the parts verify, nothing restarts."""
    src = tmp_path / "src.bin"
    data = write_file(src, 5 * PART)
    ckpt = tmp_path / "ckpt.json"
    await stop_after_parts(api, oss_emulator, "chmod.bin", src, ckpt, 2)
    upload_id = upload_id_of(ckpt)
    os.chmod(src, 0o640)

    mark = len(oss_emulator.requests)
    result = await api.resumable_upload("chmod.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert result.upload_id == upload_id
    assert sorted(part_numbers(records(oss_emulator, "UploadPart", since=mark))) == [3, 4, 5]
    assert_stored_exactly(oss_emulator, BUCKET, "chmod.bin", data)


async def test_rewrite_with_mtime_restored_during_the_upload_stops_it_before_complete(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    write_file(src, 5 * PART)
    ckpt = tmp_path / "ckpt.json"
    await anyio.sleep(0.05)  # the rewrite's ctime must differ even on a coarse clock
    new: list[bytes] = []

    def rewrite_part_1_once(done: int, total: int | None) -> None:
        if done >= 2 * PART and not new:
            new.append(rewrite_keeping_mtime(src, 10, 10))

    with pytest.raises(FileChangedError, match="ctime"):
        await api.resumable_upload("during.bin", src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt, progress=rewrite_part_1_once)
    assert oss_emulator.head_object(BUCKET, "during.bin") is None  # never a mix
    mark = len(oss_emulator.requests)
    await api.resumable_upload("during.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert_stored_exactly(oss_emulator, BUCKET, "during.bin", new[0])
    assert part_numbers(records(oss_emulator, "UploadPart", since=mark)) == [1]


# --------------------------------------------------------------------------- finding 3


async def test_lost_complete_answer_is_recovered_and_says_so(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    data = write_file(src, 4 * PART + 7)
    ckpt = tmp_path / "ckpt.json"
    oss_emulator.faults.add(operation="CompleteMultipartUpload", drop_after_bytes=10)
    with pytest.raises(RequestError):
        await api.resumable_upload("lost.bin", src, part_size=PART, checkpoint_file=ckpt)
    upload_id = upload_id_of(ckpt)
    await completes_recorded(oss_emulator, 1)
    mark = len(oss_emulator.requests)

    result = await api.resumable_upload("lost.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert result.recovered
    assert result.upload_id == upload_id
    assert result.callback_status is None and result.callback_body is None
    # the multipart ETag: MD5 of the parts' MD5s, "-N"
    expected = hashlib.md5(b"".join(part_md5s(data))).hexdigest().upper() + "-5"
    assert result.etag == expected == oss_emulator.head_object(BUCKET, "lost.bin").etag  # type: ignore[union-attr]
    assert result.size == len(data)
    sent = {r.operation for r in oss_emulator.requests[mark:]}
    assert sent.isdisjoint({"UploadPart", "InitiateMultipartUpload", "CompleteMultipartUpload"})
    assert_stored_exactly(oss_emulator, BUCKET, "lost.bin", data)
    assert not ckpt.exists()


@pytest.mark.parametrize("callback_status", [200, 502], ids=["callback-ok", "callback-failed"])
async def test_complete_whose_answer_never_arrived_is_not_reported_as_called_back(
    api: Api, oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver, tmp_path: Path,
    callback_status: int,
) -> None:
    """The first run stops while Complete's answer is on its way (as a kill would): OSS
    stored the object and called back (a 502 made the answer a 203). The callback's outcome
    went with the answer: the rerun raises CallbackUnknownError carrying the stored object,
    and calls back no more."""
    src = tmp_path / "src.bin"
    data = write_file(src, 3 * PART)
    ckpt = tmp_path / "ckpt.json"
    cb = Callback(callback_receiver.url + "/done", body="object=${object}")
    callback_receiver.respond(status=callback_status)
    oss_emulator.faults.add(operation="CompleteMultipartUpload", drop_after_bytes=3)
    kind = "async" if api.is_async else "sync"
    async with open_api(oss_emulator, BUCKET, kind,
                        retry=RetryPolicy.no_wait(max_attempts=1)) as first:
        with pytest.raises(RequestError):
            await first.resumable_upload("cb.bin", src, part_size=PART, checkpoint_file=ckpt,
                                         callback=cb)
    upload_id = upload_id_of(ckpt)
    assert len(callback_receiver.received) == 1
    await completes_recorded(oss_emulator, 1)
    mark = len(oss_emulator.requests)

    with pytest.raises(CallbackUnknownError) as info:
        await api.resumable_upload("cb.bin", src, part_size=PART, checkpoint_file=ckpt,
                                   callback=cb)
    error = info.value
    assert isinstance(error, ClientError) and isinstance(error, OSSError)
    assert error.result.recovered and error.result.upload_id == upload_id
    assert error.result.callback_status is None and error.result.callback_body is None
    assert "unknown" in str(error) and "cb.bin" in str(error) and "\n" not in str(error)
    assert_stored_exactly(oss_emulator, BUCKET, "cb.bin", data)
    assert records(oss_emulator, "CompleteMultipartUpload", since=mark) == []
    assert records(oss_emulator, "UploadPart", since=mark) == []
    assert len(callback_receiver.received) == 1  # not called back a second time
    assert not ckpt.exists()


async def test_retried_complete_finding_its_upload_completed_is_recovered_in_the_same_run(
    api: Api, oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    """A 203 whose body is cut off is retried; the retry finds the upload gone
    (NoSuchUpload). That is no reason to fail with NoSuchUpload: the object is this
    upload's, and whether its callback succeeded is unknown."""
    src = tmp_path / "src.bin"
    data = write_file(src, 3 * PART)
    ckpt = tmp_path / "ckpt.json"
    callback_receiver.respond(status=502)
    oss_emulator.faults.add(operation="CompleteMultipartUpload", drop_after_bytes=3)
    with pytest.raises(CallbackUnknownError) as info:
        await api.resumable_upload("retried.bin", src, part_size=PART, checkpoint_file=ckpt,
                                   callback=Callback(callback_receiver.url))
    assert info.value.result.recovered and info.value.result.callback_status is None
    completes = records(oss_emulator, "CompleteMultipartUpload")
    assert [r.error_code for r in completes if not r.fault] == ["NoSuchUpload"]
    assert len(callback_receiver.received) == 1
    assert_stored_exactly(oss_emulator, BUCKET, "retried.bin", data)
    assert not ckpt.exists()


async def test_aborted_upload_beside_an_older_identical_object_restarts_and_calls_back(
    api: Api, oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    """The issue's case: the checkpoint's upload id was aborted (a lifecycle rule) and an
    object with the same bytes, made of the same parts, was already there from an earlier
    upload. It is not this upload's: a new upload stores it with this upload's headers, and
    the callback fires."""
    src = tmp_path / "src.bin"
    data = write_file(src, 4 * PART)
    ckpt = tmp_path / "ckpt.json"
    await api.resumable_upload("same.bin", src, part_size=PART, checkpoint_file=ckpt,
                               headers={"Content-Type": "application/x-old"})
    cb = Callback(callback_receiver.url)
    # a second upload of the same file sends every part, then stops before Complete
    await stop_after_parts(api, oss_emulator, "same.bin", src, ckpt, 4, callback=cb,
                           headers={"Content-Type": "application/x-new"})
    stale = upload_id_of(ckpt)
    await api.abort_multipart_upload("same.bin", stale)  # the lifecycle rule
    state = read_checkpoint(str(ckpt))
    assert state is not None and state.initiated_ms is not None and len(state.parts) == 4
    # The earlier object was written within the same second here; in the issue it is days
    # old. Move the recorded Initiate an hour later, as if this upload had begun then.
    write_checkpoint(str(ckpt), attrs.evolve(state, initiated_ms=state.initiated_ms + 3_600_000))

    result = await api.resumable_upload("same.bin", src, part_size=PART, checkpoint_file=ckpt,
                                        callback=cb,
                                        headers={"Content-Type": "application/x-new"})
    assert not result.recovered
    assert result.upload_id not in (None, stale)
    assert result.callback_status == 200 and len(callback_receiver.received) == 1
    assert oss_emulator.head_object(BUCKET, "same.bin").content_type == "application/x-new"  # type: ignore[union-attr]
    assert_stored_exactly(oss_emulator, BUCKET, "same.bin", data)


async def test_lost_complete_answer_in_a_format_1_checkpoint_is_not_recovered(
    api: Api, oss_emulator: OSSEmulator, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    """A format-1 checkpoint has no Initiate time: the object can't be proven this
    upload's, so the rerun uploads again and calls back (rather than claim success)."""
    src = tmp_path / "src.bin"
    data = write_file(src, 3 * PART)
    ckpt = tmp_path / "ckpt.json"
    cb = Callback(callback_receiver.url)
    oss_emulator.faults.add(operation="CompleteMultipartUpload", drop_after_bytes=3)
    with pytest.raises(RequestError):
        await api.resumable_upload("v1-lost.bin", src, part_size=PART, checkpoint_file=ckpt,
                                   callback=cb)
    stale = upload_id_of(ckpt)
    as_format_1(ckpt)
    result = await api.resumable_upload("v1-lost.bin", src, part_size=PART,
                                        checkpoint_file=ckpt, callback=cb)
    assert not result.recovered and result.upload_id not in (None, stale)
    assert result.callback_status == 200
    await await_until(lambda: len(callback_receiver.received) == 2, what="the second callback")
    assert_stored_exactly(oss_emulator, BUCKET, "v1-lost.bin", data)


async def test_lost_complete_answer_then_rewritten_file_uploads_the_new_bytes(
    api: Api, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    """The object matches the checkpoint, but the file no longer does: storing the OLD
    bytes and reporting success would be wrong. The rerun uploads the new content."""
    src = tmp_path / "src.bin"
    write_file(src, 4 * PART)
    ckpt = tmp_path / "ckpt.json"
    oss_emulator.faults.add(operation="CompleteMultipartUpload", drop_after_bytes=10)
    with pytest.raises(RequestError):
        await api.resumable_upload("moved-on.bin", src, part_size=PART, checkpoint_file=ckpt)
    stale = upload_id_of(ckpt)
    new = rewrite_keeping_mtime(src, 3 * PART, 1)
    result = await api.resumable_upload("moved-on.bin", src, part_size=PART,
                                        checkpoint_file=ckpt)
    assert not result.recovered and result.upload_id not in (None, stale)
    assert_stored_exactly(oss_emulator, BUCKET, "moved-on.bin", new)
    assert not ckpt.exists()
