"""Receiving a body: :class:`BodySink` streams it to a temporary file, computing its
CRC-64 (and MD5) on the way, on pooled worker threads ("lanes") so that receiving,
hashing and writing overlap."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from oss_callback.protocol._crc64 import crc64

__all__ = ["BodySink"]

_BATCH_BYTES = 1 << 20  # chunks are coalesced into batches of about this size
_MAX_BACKLOG = 8 << 20  # bytes queued per body before receiving waits for the lanes
_IDLE_WORKER_SECONDS = 30.0  # an idle lane thread exits after this
_IOV_MAX = 1024  # buffers per pwritev call (Linux's IOV_MAX)


class _Worker:
    """A reusable thread that runs lanes, one at a time (idle ones are kept for a while).

    Starting a thread costs the event loop ~0.5 ms (``Thread.start`` waits for it); a
    multipart upload needs two lanes per part, so workers are pooled instead.
    """

    _idle: ClassVar[list[_Worker]] = []
    _idle_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Lane] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="oss-emulator-lane", daemon=True).start()

    @classmethod
    def run(cls, lane: _Lane) -> None:
        """Run ``lane`` on an idle worker, or on a new one."""
        with cls._idle_lock:
            worker = cls._idle.pop() if cls._idle else None
        if worker is None:
            worker = cls()
        worker._jobs.put(lane)

    def _serve(self) -> None:
        while True:
            try:
                lane = self._jobs.get(timeout=_IDLE_WORKER_SECONDS)
            except queue.Empty:
                with self._idle_lock:
                    if self in self._idle:
                        self._idle.remove(self)
                        return
                continue  # just handed out: its lane is on the way
            lane.run()
            del lane
            with self._idle_lock:
                self._idle.append(self)


class _Lane:
    """One step (MD5, or CRC-64 and write) applied to a body's batches, in order, on a worker
    thread.

    Batches arrive through a queue, so the thread takes the GIL only briefly between them;
    hashlib, fastcrc and ``os.pwritev`` all release it for the work itself.  A failed step
    is remembered (and reported by the sink); later batches are then only counted.
    """

    def __init__(self, sink: BodySink, work: Callable[[list[bytes], int], None]) -> None:
        self._sink = sink
        self._work = work
        self._queue: queue.SimpleQueue[tuple[list[bytes], int, int] | None] = queue.SimpleQueue()
        self.done = 0
        self.error: BaseException | None = None
        _Worker.run(self)

    def put(self, chunks: list[bytes], offset: int, size: int) -> None:
        """Queue a batch of ``size`` bytes that starts at ``offset`` of the body."""
        self._queue.put((chunks, offset, size))

    def close(self) -> None:
        """No more batches: the lane ends once the queued ones are done."""
        self._queue.put(None)

    def run(self) -> None:
        """Process batches until :meth:`close` (on a worker thread)."""
        while True:
            item = self._queue.get()
            if item is None:
                break
            chunks, offset, size = item
            if self.error is None:
                try:
                    self._work(chunks, offset)
                except BaseException as exc:  # noqa: BLE001 - BodySink reports it on the loop
                    self.error = exc
            del item, chunks
            self._sink._progress(self, size)
        self._sink._lane_exited()


class BodySink:
    """Streams a request body to a temporary file, computing CRC-64 (and MD5) on the way.

    Small bodies (under one batch) are hashed and written inline, on the event loop.
    Larger ones are cut into ~1 MiB batches (lists of the received chunks, never copied)
    handed to two *lanes* (pooled worker threads): one computes the MD5, the other the
    CRC-64 and writes the batch at its offset (``pwritev``).  Receiving, hashing and
    writing thus overlap; the MD5, the slowest step (~600 MiB/s), is the critical path.
    With ``md5=False`` the MD5 lane is left out (the ``etag="fast"`` mode).  (Measured and
    rejected: 4 MiB batches, one ``b"".join`` per batch, ``posix_fallocate``, and
    ``O_DIRECT`` writes: they help only when the kernel's dirty-page writeback throttles a
    disk, and made overwriting a 1 GiB object on tmpfs 3x slower; the benchmarks keep the
    emulator's data on tmpfs instead.)

    Memory is bounded: when more than ``_MAX_BACKLOG`` bytes are queued but not yet
    processed by every lane, :meth:`write` waits (without blocking the loop) until the
    lanes catch up, so the socket is paused by the server's flow control.
    """

    def __init__(self, path: Path, *, md5: bool = True) -> None:
        self.path = path
        # Not truncated: ``path`` may be a recycled file (:meth:`Store.temp_path`), whose
        # pages are overwritten in place; :meth:`finish` cuts it to the body's size.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        self._md5 = hashlib.md5() if md5 else None  # noqa: S324 - OSS's ETag is an MD5
        self._crc = 0
        self.size = 0
        self._chunks: list[bytes] = []
        self._pending = 0
        self._dispatched = 0
        self._lanes: list[_Lane] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._exited = 0
        self._all_exited: asyncio.Future[None] | None = None

    # -------------------------------------------------------------- worker side

    def _hash_md5(self, chunks: list[bytes], offset: int) -> None:
        assert self._md5 is not None
        for chunk in chunks:
            self._md5.update(chunk)

    def _crc_and_write(self, chunks: list[bytes], offset: int) -> None:
        """The write lane's step (also used inline for small bodies); ``offset < 0``: the end."""
        if offset < 0:
            return
        crc = self._crc
        for chunk in chunks:
            crc = crc64(chunk, crc)
        self._crc = crc
        self._write_at(chunks, offset)

    def _write_at(self, chunks: list[bytes], offset: int) -> None:
        """``pwritev`` the chunks at ``offset`` (no copy), resuming after short writes."""
        buffers: list[bytes | memoryview] = list(chunks)
        while buffers:
            n = os.pwritev(self._fd, buffers[:_IOV_MAX], offset)
            offset += n
            while buffers and n >= len(buffers[0]):
                n -= len(buffers.pop(0))
            if n:
                buffers[0] = memoryview(buffers[0])[n:]

    def _backlog(self) -> int:
        return self._dispatched - min(lane.done for lane in self._lanes)

    def _wake(self, future: asyncio.Future[None] | None) -> None:
        if future is None or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed (server shut down)
            self._loop.call_soon_threadsafe(_resolve, future)

    def _progress(self, lane: _Lane, n: int) -> None:
        """A lane finished a batch (worker thread)."""
        with self._lock:
            lane.done += n
            waiter = self._waiter
            if waiter is None or (self._backlog() > _MAX_BACKLOG // 2 and lane.error is None):
                return
            self._waiter = None
        self._wake(waiter)

    def _lane_exited(self) -> None:
        """A lane's thread is done (worker thread)."""
        with self._lock:
            self._exited += 1
            future = self._all_exited if self._exited == len(self._lanes) else None
        self._wake(future)

    # -------------------------------------------------------------- event loop side

    def _start_lanes(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._md5 is not None:
            self._lanes.append(_Lane(self, self._hash_md5))
        self._lanes.append(_Lane(self, self._crc_and_write))

    def _error(self) -> BaseException | None:
        return next((lane.error for lane in self._lanes if lane.error is not None), None)

    async def write(self, chunk: bytes) -> None:
        """Add a chunk of the body (waits while the lanes are too far behind)."""
        self.size += len(chunk)
        self._chunks.append(chunk)
        self._pending += len(chunk)
        if self._pending >= _BATCH_BYTES:
            await self._flush()

    def _dispatch(self) -> None:
        chunks, self._chunks = self._chunks, []
        size, self._pending = self._pending, 0
        offset = self._dispatched
        if not self._lanes:
            self._start_lanes()
        with self._lock:
            self._dispatched += size
        for lane in self._lanes:
            lane.put(chunks, offset, size)

    async def _flush(self) -> None:
        self._dispatch()
        error = self._error()
        if error is None:
            with self._lock:
                if self._backlog() <= _MAX_BACKLOG:
                    return
                assert self._loop is not None
                self._waiter = waiter = self._loop.create_future()
            await waiter
            error = self._error()
        if error is not None:
            raise error

    async def _stop_lanes(self, *, complete: bool) -> None:
        """Close the lanes (after the end-of-body step if ``complete``) and wait for them."""
        if not self._lanes:
            return
        assert self._loop is not None
        with self._lock:
            self._all_exited = exited = self._loop.create_future()
            if self._exited == len(self._lanes):
                exited.set_result(None)
        if complete:
            self._lanes[-1].put([], -1, 0)
        for lane in self._lanes:
            lane.close()
        await asyncio.shield(exited)

    async def finish(self) -> tuple[int, bytes | None, int]:
        """Write what is left, wait for the lanes, and close the file.

        Returns:
            ``(size, md5 digest or None without MD5, crc64)``.
        """
        try:
            if not self._lanes:  # small body: not worth a thread
                chunks, self._chunks = self._chunks, []
                if self._md5 is not None:
                    self._hash_md5(chunks, 0)
                self._crc_and_write(chunks, 0)
            else:
                if self._chunks:
                    self._dispatch()
                await self._stop_lanes(complete=True)
                error = self._error()
                if error is not None:
                    raise error
            os.ftruncate(self._fd, self.size)
        finally:
            os.close(self._fd)
        return self.size, (self._md5.digest() if self._md5 is not None else None), self._crc

    async def abort(self) -> None:
        """Discard the body and delete the file."""
        try:
            await self._stop_lanes(complete=False)
        finally:
            os.close(self._fd)
            self.path.unlink(missing_ok=True)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)

