"""On-disk storage for the emulator: buckets, objects and multipart uploads.

Layout under the data directory (nothing is ever named after an object key, so any key,
``../x``, ``/etc/passwd``, 1023 bytes of anything, stays inside)::

    buckets/<bucket>.json              bucket marker (bucket names are validated first)
    objects/<h[:2]>/<h>.json           metadata sidecar, h = sha256(bucket NUL key)
    objects/<h[:2]>/<h>-<nonce>.data   the bytes (a new file per write; the sidecar names it)
    objects/<h[:2]>/<h>-<nonce>.<n>.seg   part n of a completed multipart object: its bytes
                                       are the segments in order (nothing is copied at
                                       Complete; ``.data`` is assembled only on request)
    uploads/<upload id>/upload.json    a multipart upload in progress
    uploads/<upload id>/<n>-<nonce>.part / <n>.json
    tmp/                               bodies being received
    spare/                             files of replaced objects, kept for reuse (see below)

An in-memory index mirrors the sidecars (and is rebuilt from them at start), so reads and
listings never touch the metadata files.

Files are recycled: when an object is overwritten or deleted (or a part replaced or an
upload aborted), its files move to ``spare/`` (up to ``_SPARE_FILES`` files and
``_SPARE_BYTES`` bytes; deleted by the first write or delete after ``_SPARE_SECONDS``, and
when the emulator stops) and the next large body is written over one of them, then
truncated to its size.  Overwriting pages the file system already holds costs
a third of filling fresh ones (on tmpfs: 0.22 vs 0.53-0.67 CPU s/GiB here, and far more in
a VM whose host takes freed pages back).  A file is never recycled while a GET reads it
(reads take a *lease* on every file of the object: the GET finishes with the bytes it
started with, as on OSS, even if the object is overwritten or deleted meanwhile), nor after
:meth:`Store.materialize` handed its path out.

"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from oss_callback.protocol._crc64 import crc64, crc64_combine

__all__ = ["BodySink", "PartInfo", "Store", "StoredObject", "Upload"]

_BATCH_BYTES = 1 << 20  # chunks are coalesced into batches of about this size
_MAX_BACKLOG = 8 << 20  # bytes queued per body before receiving waits for the lanes
_IDLE_WORKER_SECONDS = 30.0  # an idle lane thread exits after this
_IOV_MAX = 1024  # buffers per pwritev call (Linux's IOV_MAX)
_COPY_BUFFER = 1 << 20
_SPARE_FILES = 256  # recycled files kept at most...
_SPARE_BYTES = 2 << 30  # ... holding at most this many bytes...
_SPARE_SECONDS = 60.0  # ... for at most this long
_SPARE_MIN = 1 << 20  # bodies smaller than this get a fresh file


def _as_segments(value: Any) -> tuple[tuple[str, int], ...]:
    """Segments as stored (JSON lists) or given, as a tuple of ``(path, size)``."""
    return tuple((str(path), int(size)) for path, size in value)


@attrs.frozen(kw_only=True)
class StoredObject:
    """An object's metadata.

    Attributes:
        bucket: The bucket.
        key: The object key.
        size: Size in bytes.
        etag: The ETag without quotes (upper-case hex MD5, or ``<hex>-<N>`` for multipart).
        crc64: The CRC-64/ECMA-182 of the content (``x-oss-hash-crc64ecma``).
        content_md5: Base64 MD5 of the content (``None`` for multipart objects).
        last_modified: Unix time of the last write.
        content_type: The stored ``Content-Type``.
        metadata: ``x-oss-meta-*`` headers, lower-case names.
        headers: Other stored headers (``cache-control``, ``content-disposition``, ...).
        object_type: ``"Normal"`` or ``"Multipart"``.
        data_file: The data file's path relative to the data directory.  For a
            multipart object (with ``segments``) it exists only once something asked for
            the object as one file (:meth:`Store.materialize`).
        segments: For a completed multipart object, its parts' files (relative paths) and
            sizes, in order: the content is their concatenation.  Empty otherwise.
    """

    bucket: str
    key: str
    size: int
    etag: str
    crc64: int
    content_md5: str | None
    last_modified: float
    content_type: str
    metadata: Mapping[str, str]
    headers: Mapping[str, str]
    object_type: str
    data_file: str
    segments: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=_as_segments)


@attrs.frozen(kw_only=True)
class PartInfo:
    """One uploaded part of a multipart upload.

    ``md5`` is the 16-byte digest behind ``etag``: the part's MD5, or, for a part stored
    by an ``etag="fast"`` emulator without a ``Content-MD5``, its CRC-64 and size.
    """

    number: int
    etag: str
    md5: bytes
    size: int
    crc64: int
    last_modified: float
    data_file: str


@attrs.define(kw_only=True)
class Upload:
    """A multipart upload in progress."""

    upload_id: str
    bucket: str
    key: str
    initiated: float
    content_type: str
    metadata: dict[str, str]
    headers: dict[str, str]
    parts: dict[int, PartInfo] = attrs.field(factory=dict)
    completing: bool = False


def _object_hash(bucket: str, key: str) -> str:
    return hashlib.sha256(f"{bucket}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


@attrs.define
class _Spare:
    """A recycled file in ``spare/``."""

    path: Path
    size: int
    since: float  # time.monotonic() when it was kept


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
            _unlink(self.path)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Store:
    """Buckets, objects and uploads under one data directory (thread-safe)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        self.buckets: dict[str, float] = {}
        self.objects: dict[str, dict[str, StoredObject]] = {}
        self.uploads: dict[str, Upload] = {}
        self._readers: dict[Path, int] = {}  # file -> reads in progress (leases)
        self._doomed: set[Path] = set()  # retired while read: retired again by the last reader
        self._exposed: set[Path] = set()  # handed out by materialize(): never recycled
        self._spares: list[_Spare] = []
        for sub in ("buckets", "objects", "uploads", "tmp", "spare"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._load()

    # ------------------------------------------------------------------ loading / reset

    def _load(self) -> None:
        for marker in (self.root / "buckets").glob("*.json"):
            info = json.loads(marker.read_text(encoding="utf-8"))
            self.buckets[info["name"]] = info["created"]
            self.objects.setdefault(info["name"], {})
        for sidecar in (self.root / "objects").glob("*/*.json"):
            obj = StoredObject(**json.loads(sidecar.read_text(encoding="utf-8")))
            if obj.bucket in self.objects:
                self.objects[obj.bucket][obj.key] = obj
        for upload_json in (self.root / "uploads").glob("*/upload.json"):
            data = json.loads(upload_json.read_text(encoding="utf-8"))
            upload = Upload(**data)
            for part_json in upload_json.parent.glob("[0-9]*.json"):
                p = json.loads(part_json.read_text(encoding="utf-8"))
                p["md5"] = bytes.fromhex(p["md5"])
                upload.parts[p["number"]] = PartInfo(**p)
            self.uploads[upload.upload_id] = upload
        for sub in ("tmp", "spare"):
            for leftover in (self.root / sub).iterdir():
                _unlink(leftover)

    def reset(self) -> None:
        """Delete every bucket, object and upload."""
        with self._lock:
            self.buckets.clear()
            self.objects.clear()
            self.uploads.clear()
            self._spares.clear()
            self._exposed.clear()
            for sub in ("buckets", "objects", "uploads", "spare"):
                shutil.rmtree(self.root / sub, ignore_errors=True)
                (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ buckets

    def create_bucket(self, name: str) -> bool:
        """Create a bucket; False if it already existed."""
        with self._lock:
            if name in self.buckets:
                return False
            created = time.time()
            _write_json(self.root / "buckets" / f"{name}.json", {"name": name, "created": created})
            self.buckets[name] = created
            self.objects[name] = {}
            return True

    def delete_bucket(self, name: str) -> None:
        """Delete an (empty) bucket."""
        with self._lock:
            self.buckets.pop(name, None)
            self.objects.pop(name, None)
            _unlink(self.root / "buckets" / f"{name}.json")

    def bucket_exists(self, name: str) -> bool:
        """Whether the bucket exists."""
        return name in self.buckets

    # ------------------------------------------------------------------ objects

    def temp_path(self, size_hint: int | None = None) -> Path:
        """A new path in the temporary directory for a body of about ``size_hint`` bytes.

        For a body of at least ``_SPARE_MIN`` bytes the path may hold a recycled file: write
        over it without truncating first, then truncate it to the body's size (as
        :class:`BodySink` does).  Otherwise nothing exists at the path.
        """
        path = self.root / "tmp" / uuid.uuid4().hex
        if size_hint is None or size_hint < _SPARE_MIN:
            return path
        with self._lock:
            expired = self._expire_spares()
            # Not one over twice the size: truncating it would throw most of it away.
            usable = [spare for spare in self._spares if spare.size <= 2 * size_hint]
            fits = [spare for spare in usable if spare.size >= size_hint]
            if fits:
                spare = min(fits, key=lambda x: x.size)
            elif usable:
                spare = max(usable, key=lambda x: x.size)
            else:
                spare = None
            if spare is not None:
                self._spares.remove(spare)
                with contextlib.suppress(OSError):  # gone (deleted by hand): a new file then
                    os.replace(spare.path, path)
        for old in expired:
            _unlink(old)
        return path

    # ------------------------------------------------------------------ file lifecycle

    def drop_spares(self) -> None:
        """Delete every recycled file kept for reuse (when the server stops)."""
        with self._lock:
            spares, self._spares = self._spares, []
        for spare in spares:
            _unlink(spare.path)

    def _expire_spares(self) -> list[Path]:
        """Drop spares kept too long (under the lock); returns their paths to unlink."""
        horizon = time.monotonic() - _SPARE_SECONDS
        expired = [spare.path for spare in self._spares if spare.since < horizon]
        if expired:
            self._spares = [spare for spare in self._spares if spare.since >= horizon]
        return expired

    def _retire(self, paths: list[Path]) -> None:
        """``paths`` no longer hold live data: recycle or delete them, unless being read.

        A file that a GET is reading is left in place until the last such read ends.
        """
        unlink: list[Path] = []
        with self._lock:
            unlink.extend(self._expire_spares())
            for path in paths:
                if self._readers.get(path):
                    self._doomed.add(path)
                elif path in self._exposed:
                    self._exposed.discard(path)
                    unlink.append(path)
                elif not self._keep_spare(path):
                    unlink.append(path)
        for path in unlink:
            _unlink(path)  # readers with it open (materialize()'d) keep the inode

    def _keep_spare(self, path: Path) -> bool:
        """Move ``path`` to ``spare/`` if there is room (under the lock); True if done
        (or if there is no such file)."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return True
        held = sum(spare.size for spare in self._spares)
        if size < _SPARE_MIN or len(self._spares) >= _SPARE_FILES or held + size > _SPARE_BYTES:
            return False
        spare = self.root / "spare" / uuid.uuid4().hex
        try:
            os.replace(path, spare)
        except FileNotFoundError:
            return True
        self._spares.append(_Spare(spare, size, time.monotonic()))
        return True

    def _lease(self, obj: StoredObject) -> list[Path]:
        """Keep ``obj``'s files from being recycled or deleted until :meth:`_release`.

        Raises:
            FileNotFoundError: ``obj`` was overwritten or deleted (its files are gone).
        """
        with self._lock:
            current = self.objects.get(obj.bucket, {}).get(obj.key)
            if current is None or current.data_file != obj.data_file:
                raise FileNotFoundError(f"{obj.bucket}/{obj.key} was overwritten or deleted")
            files = self._files(obj)
            for path in files:
                self._readers[path] = self._readers.get(path, 0) + 1
        return files

    def _release(self, files: list[Path]) -> None:
        """End a :meth:`_lease`; files retired meanwhile are retired now."""
        retire: list[Path] = []
        with self._lock:
            for path in files:
                left = self._readers[path] - 1
                if left:
                    self._readers[path] = left
                    continue
                del self._readers[path]
                if path in self._doomed:
                    self._doomed.discard(path)
                    retire.append(path)
        if retire:
            self._retire(retire)

    def get(self, bucket: str, key: str) -> StoredObject | None:
        """The object's metadata, or ``None``."""
        return self.objects.get(bucket, {}).get(key)

    def data_path(self, obj: StoredObject) -> Path:
        """Where the object's bytes are as one file (see :meth:`materialize` for multipart)."""
        return self.root / obj.data_file

    def sorted_keys(self, bucket: str) -> list[str]:
        """Every key of the bucket, sorted (by code point, as OSS sorts UTF-8)."""
        with self._lock:
            return sorted(self.objects.get(bucket, {}))

    def _new_data_file(self, bucket: str, key: str) -> tuple[str, Path]:
        """The sidecar hash and a fresh ``.data`` path for ``bucket/key``."""
        digest = _object_hash(bucket, key)
        directory = self.root / "objects" / digest[:2]
        directory.mkdir(exist_ok=True)
        return digest, directory / f"{digest}-{uuid.uuid4().hex[:12]}.data"

    def _files(self, obj: StoredObject) -> list[Path]:
        """Every file holding ``obj``'s bytes (the ``.data`` file may not exist)."""
        return [self.root / obj.data_file, *(self.root / path for path, _ in obj.segments)]

    def _install(self, obj: StoredObject, digest: str) -> None:
        """Record ``obj`` (sidecar and index) and delete the files of what it replaces.

        If the bucket was deleted meanwhile (e.g. :meth:`reset`), ``obj``'s files are
        deleted instead.
        """
        with self._lock:
            if obj.bucket not in self.buckets:
                stale = self._files(obj)
            else:
                old = self.objects[obj.bucket].get(obj.key)
                sidecar = self.root / "objects" / digest[:2] / f"{digest}.json"
                _write_json(sidecar, attrs.asdict(obj))
                self.objects[obj.bucket][obj.key] = obj
                stale = self._files(old) if old is not None else []
        self._retire(stale)

    def commit_object(
        self,
        *,
        bucket: str,
        key: str,
        temp: Path,
        size: int,
        etag: str,
        crc: int,
        content_md5: str | None,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
        object_type: str,
    ) -> StoredObject:
        """Move a fully received temp file into place as ``bucket/key``."""
        digest, data_file = self._new_data_file(bucket, key)
        os.replace(temp, data_file)
        obj = StoredObject(
            bucket=bucket,
            key=key,
            size=size,
            etag=etag,
            crc64=crc,
            content_md5=content_md5,
            last_modified=time.time(),
            content_type=content_type,
            metadata=dict(metadata),
            headers=dict(headers),
            object_type=object_type,
            data_file=str(data_file.relative_to(self.root)),
        )
        self._install(obj, digest)
        return obj

    def commit_multipart(
        self, upload: Upload, parts: list[PartInfo], *, etag: str, crc: int
    ) -> StoredObject:
        """Make ``parts`` (in order) the object ``upload.bucket/upload.key``.

        The part files are renamed into the object store as the object's segments: no
        byte is copied, so this is O(number of parts) whatever the size.  Parts not in
        ``parts`` stay in the upload (:meth:`drop_upload` deletes them).

        Raises:
            FileNotFoundError: a part file is gone (the upload was aborted meanwhile).
        """
        digest, data_file = self._new_data_file(upload.bucket, upload.key)
        base = str(data_file.relative_to(self.root)).removesuffix(".data")
        moved: list[tuple[Path, Path]] = []
        with self._lock:  # commit_part() cannot swap a part file while they move
            try:
                for part in parts:
                    source = self.root / part.data_file
                    target = self.root / f"{base}.{part.number}.seg"
                    os.replace(source, target)
                    moved.append((target, source))
            except BaseException:
                for target, source in moved:
                    os.replace(target, source)
                raise
        obj = StoredObject(
            bucket=upload.bucket,
            key=upload.key,
            size=sum(p.size for p in parts),
            etag=etag,
            crc64=crc,
            content_md5=None,
            last_modified=time.time(),
            content_type=upload.content_type,
            metadata=dict(upload.metadata),
            headers=dict(upload.headers),
            object_type="Multipart",
            data_file=str(data_file.relative_to(self.root)),
            segments=tuple((f"{base}.{p.number}.seg", p.size) for p in parts),
        )
        self._install(obj, digest)
        return obj

    def update_metadata(self, obj: StoredObject, **changes: Any) -> StoredObject:
        """Change ``obj``'s metadata fields (a CopyObject onto itself): its bytes and files
        stay as they are.

        Raises:
            FileNotFoundError: ``obj`` was overwritten or deleted meanwhile.
        """
        digest = _object_hash(obj.bucket, obj.key)
        with self._lock:
            current = self.objects.get(obj.bucket, {}).get(obj.key)
            if current is None or current.data_file != obj.data_file:
                raise FileNotFoundError(f"{obj.bucket}/{obj.key} was overwritten or deleted")
            new = attrs.evolve(current, **changes)
            sidecar = self.root / "objects" / digest[:2] / f"{digest}.json"
            _write_json(sidecar, attrs.asdict(new))
            self.objects[obj.bucket][obj.key] = new
        return new

    def delete(self, bucket: str, key: str) -> bool:
        """Delete an object; False if there was none."""
        digest = _object_hash(bucket, key)
        with self._lock:
            old = self.objects.get(bucket, {}).pop(key, None)
            if old is None:
                return False
            _unlink(self.root / "objects" / digest[:2] / f"{digest}.json")
        self._retire(self._files(old))
        return True

    def read(self, obj: StoredObject, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """``length`` bytes (default: to the end) of ``obj``'s content from ``start``, in chunks.

        A multipart object is read across its segments.  The object's files are leased
        when the iterator is first advanced (``FileNotFoundError`` if the object was
        overwritten or deleted by then), so the read ends with the bytes it started with
        even if the object is replaced meanwhile; the lease ends with the iterator.
        """
        if length is None:
            length = obj.size - start
        files = self._lease(obj)
        try:
            if not obj.segments:
                yield from iter_file(self.root / obj.data_file, start, length)
                return
            position = 0
            for path, size in obj.segments:
                if length <= 0:
                    return
                if start < position + size:
                    offset = max(start - position, 0)
                    n = min(size - offset, length)
                    yield from iter_file(self.root / path, offset, n)
                    length -= n
                position += size
        finally:
            self._release(files)

    def materialize(self, obj: StoredObject) -> Path:
        """``obj``'s content as one file (assembling a multipart object's segments once).

        The assembled file is the object's ``data_file``; it is deleted with the object
        (never recycled: the caller may still have it open).

        Raises:
            FileNotFoundError: ``obj`` was overwritten or deleted.
        """
        path = self.root / obj.data_file
        files = self._lease(obj)
        try:
            with self._lock:
                if not obj.segments or path.exists():
                    self._exposed.add(path)
                    return path
            temp = self.temp_path()
            try:
                with open(temp, "wb") as out:
                    for segment, size in obj.segments:
                        with open(self.root / segment, "rb") as src:
                            _copy(src.fileno(), out, size)
                with self._lock:
                    self._exposed.add(path)
                    os.replace(temp, path)
            except BaseException:
                _unlink(temp)
                raise
            return path
        finally:
            self._release(files)

    # ------------------------------------------------------------------ multipart

    def create_upload(
        self,
        *,
        bucket: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> Upload:
        """Start a multipart upload."""
        upload = Upload(
            upload_id=uuid.uuid4().hex.upper(),
            bucket=bucket,
            key=key,
            initiated=time.time(),
            content_type=content_type,
            metadata=dict(metadata),
            headers=dict(headers),
        )
        directory = self.root / "uploads" / upload.upload_id
        directory.mkdir()
        data = attrs.asdict(upload, filter=lambda a, _: a.name not in ("parts", "completing"))
        _write_json(directory / "upload.json", data)
        with self._lock:
            self.uploads[upload.upload_id] = upload
        return upload

    def commit_part(
        self, upload: Upload, number: int, temp: Path, size: int, md5: bytes, crc: int
    ) -> PartInfo:
        """Move a received part into the upload (replacing an earlier one of that number)."""
        directory = self.root / "uploads" / upload.upload_id
        data_file = directory / f"{number}-{uuid.uuid4().hex[:12]}.part"
        try:
            os.replace(temp, data_file)
        except FileNotFoundError:  # the upload was aborted/completed meanwhile
            _unlink(temp)
            raise
        part = PartInfo(
            number=number,
            etag=md5.hex().upper(),
            md5=md5,
            size=size,
            crc64=crc,
            last_modified=time.time(),
            data_file=str(data_file.relative_to(self.root)),
        )
        with self._lock:
            if upload.completing or self.uploads.get(upload.upload_id) is not upload:
                self._retire([data_file])  # completed or aborted while this part was received
                raise FileNotFoundError(upload.upload_id)
            old = upload.parts.get(number)
            upload.parts[number] = part
            record = attrs.asdict(part)
            record["md5"] = md5.hex()
            _write_json(directory / f"{number}.json", record)
        if old is not None:
            self._retire([self.root / old.data_file])
        return part

    def drop_upload(self, upload_id: str) -> None:
        """Forget an upload and delete its parts (those not completed into an object)."""
        with self._lock:
            upload = self.uploads.pop(upload_id, None)
            if upload is not None:
                self._retire([self.root / part.data_file for part in upload.parts.values()])
        shutil.rmtree(self.root / "uploads" / upload_id, ignore_errors=True)


def _copy(src_fd: int, out: Any, size: int) -> None:
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is not None:
        out.flush()
        remaining = size
        try:
            while remaining:
                n = copy_range(src_fd, out.fileno(), remaining)
                if n == 0:
                    break
                remaining -= n
        except OSError:
            pass
        else:
            if remaining == 0:
                return
        os.lseek(src_fd, size - remaining, os.SEEK_SET)
        size = remaining
    while size:
        chunk = os.read(src_fd, min(_COPY_BUFFER, size))
        if not chunk:
            raise OSError("part file is shorter than recorded")
        out.write(chunk)
        size -= len(chunk)


def combined_part_checksums(parts: list[PartInfo]) -> tuple[str, int, int]:
    """The multipart ETag (no quotes), CRC-64 and size of the concatenated parts."""
    md5 = hashlib.md5(b"".join(p.md5 for p in parts)).hexdigest().upper()  # noqa: S324
    crc = 0
    for part in parts:
        crc = crc64_combine(crc, part.crc64, part.size)
    return f"{md5}-{len(parts)}", crc, sum(p.size for p in parts)


def iter_file(path: Path, start: int, length: int, chunk: int = 1 << 18) -> Iterator[bytes]:
    """Read ``length`` bytes of ``path`` from ``start``, in chunks."""
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            data = f.read(min(chunk, length))
            if not data:
                return
            length -= len(data)
            yield data
