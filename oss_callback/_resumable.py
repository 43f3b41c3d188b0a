"""Resumable, concurrent multipart upload with a checkpoint file and the callback on Complete.

Policy (what happens when a previous run's checkpoint is found):

* **resumed**: same bucket/key/file, file unchanged (size, mtime, inode), same part size,
  headers and callback, and OSS still knows the upload id: parts are reconciled with
  ListParts and only missing or mismatched parts are uploaded again.
* **restarted cleanly** (the stale upload is aborted, a new one begins): the file changed,
  the callback/headers/part size changed, or OSS no longer knows the upload id.
* **CheckpointError** (nothing is touched; the message says what to do): the checkpoint is
  corrupt, belongs to another bucket/key/file, or was written by a newer version.

After Complete succeeds (200, or 203 -> :class:`CallbackError`: the object is stored) the
checkpoint is removed, so a rerun never tries to complete twice.  On any other failure the
upload and checkpoint are kept for the next run (``disable_checkpoint=False``) or the upload
is aborted (``disable_checkpoint=True``), so no parts are left orphaned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import attrs

from ._body import FileRangeBody, ProgressFn, _read_crc, check_readable_file
from ._callback import Callback
from ._checkpoint import (
    Checkpoint,
    FileIdentity,
    PartRecord,
    default_checkpoint_path,
    read_checkpoint,
    remove_checkpoint,
    write_checkpoint,
)
from ._crc64 import crc64_combine_many
from ._endpoint import validate_key
from ._errors import (
    CallbackError,
    CheckpointError,
    FileChangedError,
    InconsistentError,
    ServiceError,
)
from ._models import PutObjectResult, UploadPartResult

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from ._client import AsyncBucket

__all__ = ["DEFAULT_CONCURRENCY", "DEFAULT_PART_SIZE", "choose_part_size", "plan_parts"]

logger = logging.getLogger("oss_callback")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
MIN_PART_SIZE = 100 * KiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
#: Defaults chosen from the scaling table in ``benchmarks/RESULTS.md`` (1 GiB into the
#: nginx sink, 2 cores): 1 MiB parts are 2-3x slower (per-request cost); every 8 and 32 MiB
#: cell lies within 0.45-0.95 s, run-to-run noise included, and 8 MiB re-sends 4x less than
#: 32 MiB when a part is retried or resumed. On loopback one stream already saturates the
#: two cores, so concurrency shows no gain there; 4 in flight hide the per-request latency
#: of real links (tens of ms per OSS round trip). A part in flight holds a 1 MiB buffer at most.
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_CONCURRENCY = 4
MAX_CONCURRENCY = 256
#: Seconds between checkpoint writes while parts are uploading (the first write, the one
#: before Complete and the one after a failure are never delayed). Each write is an fsync
#: of the file and its folder: per part, they were ~15% of a 1 GiB upload's client CPU.
#: Parts finished since the last write are not lost: on resume, ``_reconcile`` adopts the
#: parts OSS has whose CRC-64 matches the local bytes.
CHECKPOINT_INTERVAL = 0.5


def choose_part_size(size: int, part_size: int | None = None) -> int:
    """The part size for a ``size``-byte file: validated if given, else automatic.

    Automatic: :data:`DEFAULT_PART_SIZE`, grown (rounded up to whole KiB) just enough that
    the file needs at most 10,000 parts; ``ceil`` keeps that true for every size up to
    10,000 x 5 GiB.

    Raises:
        ValueError: a given part size out of 100 KiB..5 GiB, one that needs more than 10,000
            parts, or a file too large for OSS.
    """
    if size < 0:
        raise ValueError("size must be >= 0")
    if size > MAX_PARTS * MAX_PART_SIZE:
        raise ValueError(f"{size} bytes is more than OSS allows in one object (10,000 x 5 GiB)")
    if part_size is None:
        needed = math.ceil(size / MAX_PARTS)
        needed = math.ceil(needed / KiB) * KiB
        return min(max(DEFAULT_PART_SIZE, needed), MAX_PART_SIZE)
    if isinstance(part_size, bool) or not isinstance(part_size, int):
        raise TypeError(f"part_size must be an int (bytes), got {type(part_size).__name__}")
    if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
        raise ValueError(
            f"part_size must be between 100 KiB ({MIN_PART_SIZE}) and 5 GiB ({MAX_PART_SIZE}) "
            f"bytes, got {part_size}"
        )
    if math.ceil(size / part_size) > MAX_PARTS:
        minimum = math.ceil(size / MAX_PARTS)
        raise ValueError(
            f"part_size {part_size} would need {math.ceil(size / part_size)} parts for "
            f"{size} bytes; OSS allows 10,000: use part_size >= {minimum} (or None for automatic)"
        )
    return part_size


def plan_parts(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """``(part_number, offset, length)`` for every part, covering each byte exactly once."""
    return [
        (i + 1, offset, min(part_size, size - offset))
        for i, offset in enumerate(range(0, size, part_size))
    ]


def _headers_digest(headers: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(headers.items())).encode()).hexdigest()


def _split_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    h = {k.lower(): str(v) for k, v in (headers or {}).items()}
    if "x-oss-callback" in h or "x-oss-callback-var" in h:
        raise ValueError("pass the callback as callback=..., not as x-oss-callback headers")
    return h


class _Progress:
    """Byte-accurate aggregate progress over concurrent parts; rewinds a retried part."""

    def __init__(self, callback: ProgressFn | None, total: int, done: int) -> None:
        self.callback = callback
        self.total = total
        self.done = done  # bytes of completed parts
        self.in_flight: dict[int, int] = {}

    def part(self, number: int) -> ProgressFn | None:
        if self.callback is None:
            return None

        def report(part_done: int, _part_total: int | None) -> None:
            self.in_flight[number] = part_done
            self.emit()

        return report

    def finish(self, number: int, size: int) -> None:
        self.in_flight.pop(number, None)
        self.done += size
        self.emit()

    def emit(self) -> None:
        if self.callback is not None:
            self.callback(min(self.done + sum(self.in_flight.values()), self.total), self.total)


async def resumable_upload(
    bucket: AsyncBucket,
    key: str,
    path: str | os.PathLike[str],
    *,
    callback: Callback | None = None,
    part_size: int | None = None,
    concurrency: int | None = None,
    checkpoint_file: str | os.PathLike[str] | None = None,
    disable_checkpoint: bool = False,
    headers: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
) -> PutObjectResult:
    """Implementation of :meth:`AsyncBucket.resumable_upload` (see its docstring)."""
    validate_key(key)
    file_path = check_readable_file(path)
    if concurrency is None:
        concurrency = DEFAULT_CONCURRENCY
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not (
        1 <= concurrency <= MAX_CONCURRENCY
    ):
        raise ValueError(f"concurrency must be an int in 1..{MAX_CONCURRENCY}, got {concurrency!r}")
    if callback is not None and not isinstance(callback, Callback):
        raise TypeError(f"callback must be an oss_callback.Callback, got {type(callback).__name__}")
    init_headers = _split_headers(headers)
    identity = FileIdentity.of(file_path)
    size = identity.size
    chosen = choose_part_size(size, part_size)

    if size < chosen:
        # Smaller than one part: one PutObject carries the data and the callback.
        return await bucket.put_object(
            key, file=file_path, callback=callback, headers=init_headers, progress=progress
        )

    ckpt_path: str | None = None
    if not disable_checkpoint:
        ckpt_path = os.fspath(checkpoint_file) if checkpoint_file is not None else (
            default_checkpoint_path(bucket.client.endpoint, bucket.name, key, file_path)
        )
    uploader = _Uploader(
        bucket=bucket, key=key, identity=identity, part_size=chosen, concurrency=concurrency,
        callback=callback, headers=init_headers, progress=progress, ckpt_path=ckpt_path,
    )
    return await uploader.run()


class _Uploader:
    def __init__(
        self,
        *,
        bucket: AsyncBucket,
        key: str,
        identity: FileIdentity,
        part_size: int,
        concurrency: int,
        callback: Callback | None,
        headers: dict[str, str],
        progress: ProgressFn | None,
        ckpt_path: str | None,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.identity = identity
        self.part_size = part_size
        self.concurrency = concurrency
        self.callback = callback
        self.headers = headers
        self.progress_fn = progress
        self.ckpt_path = ckpt_path
        self.headers_digest = _headers_digest(headers)
        self.callback_digest = callback.digest() if callback else None
        self._dirty = False
        self._writing = False
        self._last_write = -math.inf

    # -------------------------------------------------------------- checkpoint

    async def _load(self) -> Checkpoint | None:
        """A usable checkpoint, ``None`` to start fresh; aborts stale uploads it replaces."""
        if self.ckpt_path is None:
            return None
        ckpt = await anyio.to_thread.run_sync(read_checkpoint, self.ckpt_path)
        if ckpt is None:
            return None
        mine = (self.bucket.client.endpoint, self.bucket.name, self.key, self.identity.path)
        theirs = (ckpt.endpoint, ckpt.bucket, ckpt.key, ckpt.file.path)
        if mine != theirs:
            raise CheckpointError(
                f"checkpoint {self.ckpt_path} belongs to another upload (oss://{ckpt.bucket}/"
                f"{ckpt.key} from {ckpt.file.path} via {ckpt.endpoint}); pass a different "
                "checkpoint_file= or delete it"
            )
        reason = None
        if ckpt.file != self.identity:
            reason = "the source file changed since the last run"
        elif ckpt.part_size != self.part_size:
            reason = f"the part size changed ({ckpt.part_size} -> {self.part_size})"
        elif ckpt.headers_digest != self.headers_digest:
            reason = "the headers changed"
        elif ckpt.callback_digest != self.callback_digest:
            reason = "the callback changed"
        if reason is not None:
            logger.warning("restarting upload of %s: %s; aborting stale upload %s",
                           self.key, reason, ckpt.upload_id)
            await self._abort_quietly(ckpt.upload_id)
            await anyio.to_thread.run_sync(remove_checkpoint, self.ckpt_path)
            return None
        return ckpt

    async def _save(self, ckpt: Checkpoint, *, now: bool = False) -> None:
        """Record ``ckpt``: at most every :data:`CHECKPOINT_INTERVAL` s unless ``now``.

        Writes coalesce so parts don't queue behind each other's fsync: if a write is
        already running, this only marks the checkpoint dirty and returns, and the running
        writer writes the newest state again before it stops. A part finished but not yet
        written is still safe: on resume, ``_reconcile`` adopts parts OSS has whose CRC-64
        matches the local bytes.
        """
        if self.ckpt_path is None:
            return
        path = self.ckpt_path
        self._dirty = True
        if self._writing:
            return
        if not now and anyio.current_time() - self._last_write < CHECKPOINT_INTERVAL:
            return
        self._writing = True
        try:
            while self._dirty:
                self._dirty = False
                # A shallow copy on the loop (parts are frozen): encoding 10,000 parts takes
                # tens of ms, so it happens in the worker thread, not on the event loop.
                snapshot = attrs.evolve(ckpt, parts=dict(ckpt.parts))
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(write_checkpoint, path, snapshot)
                self._last_write = anyio.current_time()
        finally:
            self._writing = False

    async def _abort_quietly(self, upload_id: str) -> None:
        with anyio.move_on_after(30, shield=True):
            try:
                await self.bucket.abort_multipart_upload(self.key, upload_id)
            except ServiceError as e:
                if e.code != "NoSuchUpload":
                    logger.warning("could not abort upload %s: %s", upload_id, e)
            except Exception as e:  # noqa: BLE001 - best effort cleanup, never mask the cause
                logger.warning("could not abort upload %s: %s", upload_id, e)

    # -------------------------------------------------------------- reconcile

    async def _reconcile(self, ckpt: Checkpoint, plan: list[tuple[int, int, int]]) -> bool:
        """Keep only parts that OSS really has; ``False`` if the upload id is gone."""
        try:
            listed = await self.bucket.list_parts(self.key, ckpt.upload_id)
        except ServiceError as e:
            if e.code == "NoSuchUpload" or e.status == 404:
                return False
            raise
        server = {p.part_number: p for p in listed.parts}
        planned = {n: (off, ln) for n, off, ln in plan}
        kept: dict[int, PartRecord] = {}
        for number, rec in ckpt.parts.items():
            sp = server.get(number)
            if (
                sp is not None
                and planned.get(number) == (rec.offset, rec.size)
                and sp.etag.upper() == rec.etag.upper()
                and sp.size == rec.size
                and (sp.crc64 is None or sp.crc64 == rec.crc64)
            ):
                kept[number] = rec
        # Parts OSS has that the checkpoint missed (a crash between the part finishing and
        # the checkpoint write): adopt them when the local bytes' CRC-64 matches OSS's.
        for number, sp in server.items():
            if number in kept or number not in planned or sp.crc64 is None:
                continue
            offset, length = planned[number]
            if sp.size != length:
                continue
            local = await anyio.to_thread.run_sync(_file_crc, self.identity.path, offset, length)
            if local == sp.crc64:
                kept[number] = PartRecord(number=number, offset=offset, size=length,
                                          etag=sp.etag, crc64=local)
        ckpt.parts = kept
        return True

    # -------------------------------------------------------------- run

    async def run(self) -> PutObjectResult:
        plan = plan_parts(self.identity.size, self.part_size)
        ckpt = await self._load()
        if ckpt is not None:
            recorded = dict(ckpt.parts)
            if not await self._reconcile(ckpt, plan):
                done = await self._already_completed(recorded, plan)
                if done is not None:
                    return done
                logger.warning("upload %s is unknown to OSS; starting over", ckpt.upload_id)
                ckpt = None
        if ckpt is None:
            init = await self.bucket.initiate_multipart_upload(self.key, headers=self.headers)
            ckpt = Checkpoint(
                endpoint=self.bucket.client.endpoint, bucket=self.bucket.name, key=self.key,
                upload_id=init.upload_id, file=self.identity, part_size=self.part_size,
                headers_digest=self.headers_digest, callback_digest=self.callback_digest,
            )
        await self._save(ckpt, now=True)
        upload_id = ckpt.upload_id
        completed = False  # Complete answered: the upload id is gone, nothing to abort
        try:
            try:
                await self._upload_missing(ckpt, plan)
            finally:
                if self._dirty:  # every finished part on disk before Complete or a retry
                    with anyio.CancelScope(shield=True):
                        await self._save(ckpt, now=True)
            await anyio.to_thread.run_sync(self._check_file_unchanged)
            parts = [
                UploadPartResult(part_number=r.number, etag=r.etag, crc64=r.crc64, size=r.size)
                for _, r in sorted(ckpt.parts.items())
            ]
            try:
                result = await self.bucket.complete_multipart_upload(
                    self.key, upload_id, parts, callback=self.callback
                )
            except CallbackError:
                completed = True
                await self._forget()
                raise
            except InconsistentError:
                # The assembled object is not what we sent: never leave a wrong object.
                completed = True
                await self._forget()
                with anyio.move_on_after(30, shield=True):
                    await self.bucket.delete_object(self.key)
                raise
        except BaseException:
            if self.ckpt_path is None and not completed:
                await self._abort_quietly(upload_id)
            raise
        await self._forget()
        return result

    async def _already_completed(
        self, recorded: dict[int, PartRecord], plan: list[tuple[int, int, int]]
    ) -> PutObjectResult | None:
        """The object, if a previous run's Complete succeeded but its answer was lost.

        Only when the checkpoint had every part and the stored object has exactly their
        combined size and CRC-64; then it is not uploaded (nor called back) again.
        """
        if set(recorded) != {n for n, _, _ in plan}:
            return None
        try:
            head = await self.bucket.head_object(self.key)
        except ServiceError:
            return None
        combined = crc64_combine_many((r.crc64, r.size) for _, r in sorted(recorded.items()))
        if head.size != self.identity.size or head.crc64 != combined:
            return None
        logger.info("upload of %s was already completed by a previous run", self.key)
        await self._forget()
        return PutObjectResult(key=self.key, etag=head.etag, crc64=head.crc64,
                               request_id=head.request_id, version_id=head.version_id,
                               size=head.size)

    async def _forget(self) -> None:
        if self.ckpt_path is not None:
            path = self.ckpt_path
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_checkpoint, path)

    def _check_file_unchanged(self) -> None:
        now = FileIdentity.of(self.identity.path)
        if now != self.identity:
            raise FileChangedError(
                f"{self.identity.path} changed during the upload (size {self.identity.size} -> "
                f"{now.size}); run the upload again to send the new content"
            )

    async def _upload_missing(self, ckpt: Checkpoint, plan: list[tuple[int, int, int]]) -> None:
        todo = [p for p in plan if p[0] not in ckpt.parts]
        done_bytes = sum(r.size for r in ckpt.parts.values())
        progress = _Progress(self.progress_fn, self.identity.size, done_bytes)
        progress.emit()
        if not todo:
            return
        queue: Iterator[tuple[int, int, int]] = iter(todo)
        expect = (self.identity.size, self.identity.mtime_ns)

        async def worker() -> None:
            for number, offset, length in queue:
                body = FileRangeBody(self.identity.path, offset, length, expect=expect)
                part = await self.bucket.upload_part(
                    self.key, ckpt.upload_id, number, body, progress=progress.part(number)
                )
                ckpt.parts[number] = PartRecord(
                    number=number, offset=offset, size=length, etag=part.etag,
                    crc64=part.crc64 if part.crc64 is not None else body.crc,
                )
                progress.finish(number, length)
                await self._save(ckpt)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(min(self.concurrency, len(todo))):
                    tg.start_soon(worker)
        except BaseExceptionGroup as group:
            # The first part to fail cancelled its siblings: raise that failure itself, not
            # a group, so callers can catch ServiceError, FileChangedError, ... as usual.
            raise _root_cause(group) from None


def _root_cause(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    cancel = anyio.get_cancelled_exc_class()
    for exc in leaves:
        if not isinstance(exc, cancel):
            return exc
    return leaves[0] if leaves else group


def _file_crc(path: str, offset: int, length: int) -> int:
    crc = 0
    with open(path, "rb") as f:
        f.seek(offset)
        remaining = length
        while remaining > 0:
            data, crc = _read_crc(f, min(remaining, 8 * MiB), crc)
            if not data:
                break
            remaining -= len(data)
    return crc
