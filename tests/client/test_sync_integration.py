"""The sync facade over real sockets, on the OSS emulator.

The shared matrix (``api`` fixture in conftest) already runs the async test bodies through
the sync :class:`Bucket`; this module covers what only the sync facade has: plain calls from
the test's own thread, 16 threads sharing one bucket, Ctrl-C in the middle of an upload,
calling from inside a running event loop, and that nothing (threads, sockets) outlives
``close()``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from oss_callback import Bucket, Callback, CallbackError, Client, RetryPolicy, ServiceError
from oss_callback.testing import CallbackReceiver, OSSEmulator

PART = 100 * 1024


def _client(emu: OSSEmulator, **kwargs: Any) -> Client:
    return Client(emu.endpoint, emu.access_key_id, emu.access_key_secret, region=emu.region,
                  retry=RetryPolicy.no_wait(), **kwargs)


@pytest.fixture
def sync_bucket(oss_emulator: OSSEmulator, oss_bucket: str) -> Iterator[Bucket]:
    with _client(oss_emulator) as client:
        yield client.get_bucket(oss_bucket)


def _connections_to(port: int) -> int:
    """This process's TCP connections whose remote end is ``port`` (client-side sockets)."""
    return sum(
        1 for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


def _settle(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.02)


needs_main_thread = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread() or sys.platform == "win32",
    reason="SIGINT is delivered to the main thread (POSIX)",
)


def test_put_get_head_delete(sync_bucket: Bucket, oss_emulator: OSSEmulator,
                             tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 17)
    result = sync_bucket.put_object("dir/obj.bin", data,
                                    headers={"Content-Type": "application/x-test",
                                             "x-oss-meta-owner": "sync"})
    stored = oss_emulator.head_object(sync_bucket.name, "dir/obj.bin")
    assert stored is not None and result.crc64 == stored.crc64
    assert sync_bucket.get_object("dir/obj.bin") == data
    head = sync_bucket.head_object("dir/obj.bin")
    assert (head.size, head.content_type, dict(head.metadata)) == (
        len(data), "application/x-test", {"owner": "sync"})
    sync_bucket.get_object_to_file("dir/obj.bin", tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == data
    assert sync_bucket.object_exists("dir/obj.bin")
    sync_bucket.delete_object("dir/obj.bin")
    assert not sync_bucket.object_exists("dir/obj.bin")
    with pytest.raises(ServiceError) as info:
        sync_bucket.get_object("dir/obj.bin")
    assert info.value.code == "NoSuchKey"


def test_callback_success_and_failure(sync_bucket: Bucket, oss_emulator: OSSEmulator,
                                      callback_receiver: CallbackReceiver) -> None:
    cb = Callback(url=callback_receiver.url + "/notify",
                  body="bucket=${bucket}&object=${object}&size=${size}")
    result = sync_bucket.put_object("cb/ok", b"hello", callback=cb)
    assert (result.callback_status, result.callback_body) == (200, b'{"Status":"OK"}')
    (received,) = callback_receiver.wait_for(1)
    assert b"object=cb%2Fok" in received.body or b"object=cb/ok" in received.body

    callback_receiver.respond(status=500, body=b"nope")
    with pytest.raises(CallbackError) as info:
        sync_bucket.put_object("cb/failed", b"stored anyway", callback=cb)
    assert info.value.result.key == "cb/failed"
    assert info.value.result.etag
    assert oss_emulator.get_object(sync_bucket.name, "cb/failed") == b"stored anyway"


def test_sixteen_threads_share_one_bucket_over_sockets(
    oss_emulator: OSSEmulator, oss_bucket: str, callback_receiver: CallbackReceiver
) -> None:
    cb = Callback(url=callback_receiver.url, body="object=${object}")
    payloads = {f"threads/{i:03d}": os.urandom(1000 + i * 37) for i in range(96)}
    with _client(oss_emulator, max_connections=8) as client:
        bucket = client.get_bucket(oss_bucket)

        def work(key: str) -> tuple[str, bytes]:
            result = bucket.put_object(key, payloads[key],
                                       callback=cb if key.endswith("0") else None)
            assert result.key == key
            return key, bucket.get_object(key)

        with ThreadPoolExecutor(16) as pool:
            results = dict(pool.map(work, payloads))
        assert _connections_to(oss_emulator.port) <= 8  # one bounded pool, shared
    assert results == payloads
    for key, data in payloads.items():
        assert oss_emulator.get_object(oss_bucket, key) == data
    assert len(callback_receiver.wait_for(sum(k.endswith("0") for k in payloads))) == 10


def test_no_thread_or_socket_outlives_close(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    with _client(oss_emulator) as warm:
        warm.get_bucket(oss_bucket).put_object("warm", b"x")
    _settle(lambda: _connections_to(oss_emulator.port) == 0)
    threads = threading.active_count()
    assert _connections_to(oss_emulator.port) == 0
    client = _client(oss_emulator)
    bucket = client.get_bucket(oss_bucket)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: bucket.put_object(f"k{i}", b"v" * i), range(32)))
    assert _connections_to(oss_emulator.port) >= 1  # kept alive in the pool
    client.close()
    _settle(lambda: threading.active_count() == threads)
    assert threading.active_count() == threads
    assert _connections_to(oss_emulator.port) == 0  # the pool's sockets were closed


async def test_called_from_inside_a_running_loop(oss_emulator: OSSEmulator,
                                                 oss_bucket: str) -> None:
    # What a notebook does: call the sync API from async code on the loop's own thread.
    with _client(oss_emulator) as client:
        bucket = client.get_bucket(oss_bucket)
        bucket.put_object("nb", b"notebook")
        assert bucket.get_object("nb") == b"notebook"


def test_progress_hook_that_raises_stops_the_upload(sync_bucket: Bucket,
                                                    oss_emulator: OSSEmulator) -> None:
    boom = RuntimeError("user said stop")
    threads: set[str] = set()

    def progress(done: int, total: int | None) -> None:
        threads.add(threading.current_thread().name)
        if done >= 1024 * 1024:
            raise boom

    with pytest.raises(RuntimeError) as info:
        sync_bucket.put_object("stopped", os.urandom(4 * 1024 * 1024), progress=progress)
    assert info.value is boom
    assert threads == {"oss-callback-portal"}
    assert oss_emulator.head_object(sync_bucket.name, "stopped") is None


def test_resumable_upload_with_callback(sync_bucket: Bucket, oss_emulator: OSSEmulator,
                                        callback_receiver: CallbackReceiver,
                                        tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(4 * PART + 5))
    cb = Callback(url=callback_receiver.url, body="object=${object}&size=${size}")
    result = sync_bucket.resumable_upload("big", src, callback=cb, part_size=PART,
                                          concurrency=3, checkpoint_file=tmp_path / "ck")
    assert result.upload_id is not None
    assert result.callback_body == b'{"Status":"OK"}'
    assert oss_emulator.get_object(sync_bucket.name, "big") == src.read_bytes()


@needs_main_thread
def test_ctrl_c_cancels_a_resumable_upload_which_then_resumes(
    sync_bucket: Bucket, oss_emulator: OSSEmulator, tmp_path: Path
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(4 * PART))
    ckpt = tmp_path / "upload.ckpt"
    oss_emulator.faults.add(operation="UploadPart", query_equals=("partNumber", "2"), delay=10,
                            times=1)
    main = threading.main_thread().ident
    assert main is not None
    fired = threading.Event()

    def progress(done: int, total: int | None) -> None:
        # Part 2 is on its way (part 1 is done and checkpointed): press Ctrl-C.
        if done > PART and not fired.is_set():
            fired.set()
            threading.Timer(0.05, signal.pthread_kill, (main, signal.SIGINT)).start()

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        sync_bucket.resumable_upload("resumed", src, part_size=PART, concurrency=1,
                                     checkpoint_file=ckpt, progress=progress)
    assert time.monotonic() - t0 < 5  # did not wait for the stalled part (10 s) to finish
    assert ckpt.exists()
    (upload_id,) = oss_emulator.list_uploads(sync_bucket.name)
    parts_before = [r for r in oss_emulator.requests
                    if r.operation == "UploadPart" and r.status == 200]
    assert [dict(r.query)["partNumber"] for r in parts_before] == ["1"]

    result = sync_bucket.resumable_upload("resumed", src, part_size=PART, concurrency=1,
                                          checkpoint_file=ckpt)
    assert result.upload_id == upload_id  # resumed the same upload
    sent = sorted(dict(r.query)["partNumber"] for r in oss_emulator.requests
                  if r.operation == "UploadPart" and r.status == 200)
    assert sent == ["1", "2", "3", "4"]  # part 1 once, before the interruption
    assert oss_emulator.get_object(sync_bucket.name, "resumed") == src.read_bytes()
    assert not ckpt.exists()
