"""resumable_upload on the emulator: parts, callback on Complete, resume, faults, crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from support.facades import Api
from support.helpers import form_fields

from oss_callback import (
    AsyncBucket,
    Callback,
    CallbackError,
    CheckpointError,
    FileChangedError,
)
from oss_callback.testing import CallbackReceiver

PART = 100 * 1024  # the smallest part OSS allows, to get many parts from small files

pytestmark = pytest.mark.usefixtures("oss_emulator")


def make_file(tmp_path: Path, size: int, name: str = "src.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def ops(emu: Any, operation: str) -> list[Any]:
    return [r for r in emu.requests if r.operation == operation and 200 <= r.status < 300]


async def settled(emu: Any) -> int:
    """The number of records once the emulator has finished what the crash left in flight.

    A request the client abandoned (its answer never read) is recorded when the emulator
    finishes it, possibly after the client has moved on.
    """
    count, quiet = len(emu.requests), 0
    while quiet < 5:
        await anyio.sleep(0.05)
        quiet = quiet + 1 if len(emu.requests) == count else 0
        count = len(emu.requests)
    return count


class Stop(Exception):
    """Raised from a progress callback to simulate a crash mid-upload."""


async def test_multipart_with_callback(
    api: Api, oss_emulator: Any, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    src = make_file(tmp_path, 5 * PART + 1234)
    cb = Callback(callback_receiver.url + "/done",
                  body="object=${object}&size=${size}&etag=${etag}&crc=${crc64}")
    progress: list[tuple[int, int | None]] = []
    result = await api.resumable_upload(
        "big/object.bin", src, callback=cb, part_size=PART, concurrency=3,
        checkpoint_file=tmp_path / "ckpt.json", progress=lambda d, t: progress.append((d, t)),
    )
    assert result.upload_id is not None
    assert result.callback_body == b'{"Status":"OK"}'
    (received,) = callback_receiver.received  # exactly once
    fields = form_fields(received.body)
    assert fields["size"] == str(src.stat().st_size)  # the whole object, not a part
    head = await api.head_object("big/object.bin")
    assert fields["etag"] == head.etag == result.etag
    assert fields["crc"] == str(head.crc64) == str(result.crc64)
    assert await api.get_object("big/object.bin") == src.read_bytes()
    assert len(ops(oss_emulator, "UploadPart")) == 6
    assert not (tmp_path / "ckpt.json").exists()
    assert progress[-1] == (src.stat().st_size, src.stat().st_size)
    assert all(d <= src.stat().st_size for d, _ in progress)


async def test_checkpoint_writes_are_throttled_but_a_failure_flushes_every_part(
    api: Api, oss_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oss_callback.client import _resume as _resumable  # where the checkpoint is written

    writes: list[int] = []
    real_write = _resumable.write_checkpoint  # type: ignore[attr-defined]

    def counting_write(path: str, ckpt: Any) -> None:
        writes.append(len(ckpt.parts))
        real_write(path, ckpt)

    monkeypatch.setattr(_resumable, "write_checkpoint", counting_write)
    src = make_file(tmp_path, 40 * PART)
    ckpt = tmp_path / "ckpt.json"
    await api.resumable_upload("throttled.bin", src, part_size=PART, concurrency=4,
                               checkpoint_file=ckpt)
    # one write after Initiate, one before Complete, and few in between: not one per part
    assert 2 <= len(writes) < 20
    assert writes[0] == 0 and writes[-1] == 40

    writes.clear()

    def stop_after_10_parts(done: int, total: int | None) -> None:
        if done >= 10 * PART:
            raise Stop("simulated failure")

    with pytest.raises(Stop):
        await api.resumable_upload("throttled2.bin", src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt, progress=stop_after_10_parts)
    # the failure wrote the newest state: every part whose answer arrived is recorded
    recorded = {p["number"] for p in json.loads(ckpt.read_text())["payload"]["parts"]}
    assert recorded == set(range(1, len(recorded) + 1))
    assert 9 <= len(recorded) <= 10
    assert writes[-1] == len(recorded)


async def test_small_file_is_one_put_with_the_callback(
    api: Api, oss_emulator: Any, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    src = make_file(tmp_path, 1000)
    result = await api.resumable_upload("small", src, callback=Callback(callback_receiver.url),
                                        part_size=PART, checkpoint_file=tmp_path / "c.json")
    assert result.upload_id is None
    assert len(callback_receiver.received) == 1
    assert ops(oss_emulator, "InitiateMultipartUpload") == []
    assert await api.get_object("small") == src.read_bytes()


async def test_readable_by_oss2(api: Api, oss_emulator: Any, tmp_path: Path,
                                bucket_name: str) -> None:
    import oss2

    src = make_file(tmp_path, 3 * PART + 7)
    await api.resumable_upload("by-oss2", src, part_size=PART,
                               checkpoint_file=tmp_path / "c.json")

    def read() -> bytes:
        auth = oss2.AuthV4(oss_emulator.access_key_id, oss_emulator.access_key_secret)
        b = oss2.Bucket(auth, oss_emulator.endpoint, bucket_name, region=oss_emulator.region,
                        is_path_style=True)
        return bytes(b.get_object("by-oss2").read())

    assert await anyio.to_thread.run_sync(read) == src.read_bytes()


async def test_resume_after_crash_sends_only_missing_parts(
    api: Api, oss_emulator: Any, tmp_path: Path
) -> None:
    src = make_file(tmp_path, 8 * PART)
    ckpt = tmp_path / "ckpt.json"
    seen: list[int] = []

    def crash_after_3_parts(done: int, total: int | None) -> None:
        seen.append(done)
        if done >= 3 * PART:
            raise Stop("simulated crash")

    with pytest.raises(Stop):
        await api.resumable_upload("resume.bin", src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt, progress=crash_after_3_parts)
    state = json.loads(ckpt.read_text())
    done_parts = {p["number"] for p in state["payload"]["parts"]}
    assert 1 <= len(done_parts) <= 3
    assert stat_mode(ckpt) == 0o600
    await settled(oss_emulator)
    before = len(ops(oss_emulator, "UploadPart"))

    progress: list[int] = []
    result = await api.resumable_upload("resume.bin", src, part_size=PART, concurrency=2,
                                        checkpoint_file=ckpt,
                                        progress=lambda d, t: progress.append(d))
    first = {int(dict(r.query)["partNumber"]) for r in ops(oss_emulator, "UploadPart")[:before]}
    resent = ops(oss_emulator, "UploadPart")[before:]
    resent_numbers = {int(dict(r.query)["partNumber"]) for r in resent}
    # only parts the checkpoint did not record are sent again, each once; a part that
    # reached OSS just before the crash (its answer lost) is adopted from ListParts
    assert resent_numbers.isdisjoint(done_parts)
    assert len(resent) == len(resent_numbers) <= 8 - len(done_parts)
    assert resent_numbers | first == set(range(1, 9))
    # progress starts from the resumed offset (recorded and adopted parts)
    assert progress[0] == (8 - len(resent_numbers)) * PART
    assert result.upload_id == state["payload"]["upload_id"]
    assert await api.get_object("resume.bin") == src.read_bytes()
    assert not ckpt.exists()


async def test_changed_file_restarts_cleanly(api: Api, oss_emulator: Any, tmp_path: Path) -> None:
    src = make_file(tmp_path, 4 * PART)
    ckpt = tmp_path / "ckpt.json"
    with pytest.raises(Stop):
        await api.resumable_upload("changed.bin", src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt,
                                   progress=lambda d, t: _raise_at(d, PART))
    old_upload = json.loads(ckpt.read_text())["payload"]["upload_id"]
    src.write_bytes(os.urandom(4 * PART + 5))  # new content, new size
    result = await api.resumable_upload("changed.bin", src, part_size=PART,
                                        checkpoint_file=ckpt)
    assert result.upload_id != old_upload
    assert await api.get_object("changed.bin") == src.read_bytes()
    uploads = await api.list_multipart_uploads()
    assert all(upload_id != old_upload for _, upload_id in uploads)  # stale one aborted


async def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_touched(
    api: Api, oss_emulator: Any, tmp_path: Path
) -> None:
    src = make_file(tmp_path, 3 * PART)
    ckpt = tmp_path / "ckpt.json"
    ckpt.write_text('{"format": "oss_callback.resumable_upload", "version": 1, "checksum": "x"}')
    with pytest.raises(CheckpointError, match="corrupt") as info:
        await api.resumable_upload("c.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert str(ckpt) in str(info.value) and "delete" in str(info.value)
    assert ops(oss_emulator, "InitiateMultipartUpload") == []
    assert ckpt.exists()


async def test_foreign_checkpoint_is_refused(api: Api, tmp_path: Path) -> None:
    src = make_file(tmp_path, 3 * PART)
    ckpt = tmp_path / "ckpt.json"
    with pytest.raises(Stop):
        await api.resumable_upload("one.bin", src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt, progress=lambda d, t: _raise_at(d, PART))
    with pytest.raises(CheckpointError, match="another upload"):
        await api.resumable_upload("two.bin", src, part_size=PART, checkpoint_file=ckpt)


async def test_callback_failure_on_complete_removes_the_checkpoint(
    api: Api, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    src = make_file(tmp_path, 3 * PART)
    ckpt = tmp_path / "ckpt.json"
    callback_receiver.respond(status=502)
    with pytest.raises(CallbackError) as info:
        await api.resumable_upload("cbfail.bin", src, part_size=PART, checkpoint_file=ckpt,
                                   callback=Callback(callback_receiver.url))
    assert info.value.result.upload_id is not None
    assert info.value.result.etag
    assert not ckpt.exists()  # a rerun must not try to complete again
    assert await api.get_object("cbfail.bin") == src.read_bytes()


async def test_injected_5xx_and_dropped_connections_are_retried(
    api: Api, oss_emulator: Any, tmp_path: Path
) -> None:
    src = make_file(tmp_path, 4 * PART)
    oss_emulator.faults.add(operation="UploadPart", nth=2, status=500)
    oss_emulator.faults.add(operation="UploadPart", nth=3, drop_connection=True)
    await api.resumable_upload("faulty.bin", src, part_size=PART, concurrency=2,
                               checkpoint_file=tmp_path / "c.json")
    assert await api.get_object("faulty.bin") == src.read_bytes()
    assert len([r for r in oss_emulator.requests if r.operation == "UploadPart"]) >= 6


async def test_failure_without_checkpoint_aborts_the_upload(
    api: Api, oss_emulator: Any, tmp_path: Path
) -> None:
    src = make_file(tmp_path, 4 * PART)
    oss_emulator.faults.add(operation="UploadPart", nth=2, status=403, code="AccessDenied",
                            times=None)
    with pytest.raises(Exception, match="AccessDenied"):
        await api.resumable_upload("aborted.bin", src, part_size=PART, disable_checkpoint=True)
    assert await api.list_multipart_uploads() == []  # no orphaned parts
    assert not await api.object_exists("aborted.bin")


async def test_file_changing_during_upload_stores_nothing(
    bucket: AsyncBucket, tmp_path: Path
) -> None:
    src = make_file(tmp_path, 4 * PART)

    def grow(done: int, total: int | None) -> None:
        if done >= PART:
            with src.open("ab") as f:
                f.write(b"more")

    with pytest.raises(FileChangedError, match="changed"):
        await bucket.resumable_upload("grows.bin", src, part_size=PART, concurrency=1,
                                      checkpoint_file=tmp_path / "c.json", progress=grow)
    assert not await bucket.object_exists("grows.bin")


async def test_cancellation_leaves_a_resumable_checkpoint(
    bucket: AsyncBucket, oss_emulator: Any, tmp_path: Path
) -> None:
    src = make_file(tmp_path, 6 * PART)
    ckpt = tmp_path / "ckpt.json"
    oss_emulator.faults.add(operation="UploadPart", nth=3, delay=5.0)
    with anyio.move_on_after(1.0) as scope:
        await bucket.resumable_upload("cancel.bin", src, part_size=PART, concurrency=1,
                                      checkpoint_file=ckpt)
    assert scope.cancelled_caught
    state = json.loads(ckpt.read_text())  # valid JSON, consistent
    assert len(state["payload"]["parts"]) == 2
    oss_emulator.faults.clear()
    await bucket.resumable_upload("cancel.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert await bucket.get_object("cancel.bin") == src.read_bytes()


def test_sigkill_mid_upload_then_resume(oss_emulator: Any, bucket_name: str,
                                        tmp_path: Path) -> None:
    oss_emulator.create_bucket(bucket_name)
    src = make_file(tmp_path, 30 * PART)
    ckpt = tmp_path / "ckpt.json"
    marker = tmp_path / "progress"
    script = textwrap.dedent(f"""
        import anyio, sys
        from oss_callback import AsyncClient
        async def main():
            async with AsyncClient({oss_emulator.endpoint!r}, {oss_emulator.access_key_id!r},
                                   {oss_emulator.access_key_secret!r},
                                   region={oss_emulator.region!r}) as c:
                def progress(done, total):
                    open({str(marker)!r}, "w").write(str(done))
                await c.get_bucket({bucket_name!r}).resumable_upload(
                    "killed.bin", {str(src)!r}, part_size={PART}, concurrency=2,
                    checkpoint_file={str(ckpt)!r}, progress=progress)
        anyio.run(main)
    """)
    oss_emulator.faults.add(operation="UploadPart", delay=0.05, times=None)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text() and int(marker.read_text() or 0) >= 8 * PART:
            break
        if proc.poll() is not None:
            pytest.fail(f"uploader exited early with {proc.returncode}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert ckpt.exists()
    oss_emulator.faults.clear()

    async def resume() -> bytes:
        from oss_callback import AsyncClient

        async with AsyncClient(oss_emulator.endpoint, oss_emulator.access_key_id,
                               oss_emulator.access_key_secret, region=oss_emulator.region) as c:
            b = c.get_bucket(bucket_name)
            await b.resumable_upload("killed.bin", src, part_size=PART, checkpoint_file=ckpt)
            return await b.get_object("killed.bin")

    assert anyio.run(resume) == src.read_bytes()
    assert not ckpt.exists()


def _raise_at(done: int, limit: int) -> None:
    if done >= limit:
        raise Stop("simulated crash")


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_upload_id_unknown_to_oss_restarts(api: Api, tmp_path: Path) -> None:
    src = make_file(tmp_path, 4 * PART)
    ckpt = tmp_path / "ckpt.json"
    with pytest.raises(Stop):
        await api.resumable_upload("gone.bin", src, part_size=PART, concurrency=1,
                                   checkpoint_file=ckpt, progress=lambda d, t: _raise_at(d, PART))
    old = json.loads(ckpt.read_text())["payload"]["upload_id"]
    await api.abort_multipart_upload("gone.bin", old)  # e.g. a lifecycle rule cleaned it up
    result = await api.resumable_upload("gone.bin", src, part_size=PART, checkpoint_file=ckpt)
    assert result.upload_id != old
    assert await api.get_object("gone.bin") == src.read_bytes()
