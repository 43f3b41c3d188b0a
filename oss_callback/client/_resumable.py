"""Resumable, concurrent multipart upload with a checkpoint file and the callback on Complete.

Policy (what happens when a previous run's checkpoint is found). Only what is provably the
same bytes is resumed:

* **resumed**: same bucket/key/file path, same file size, part size, headers (the typed
  options included) and callback, and OSS still knows the upload id, through whichever
  endpoint: a checkpoint belongs to the upload, not to the endpoint string (internal or
  public, accelerate, a CNAME or a proxy reach the same bucket). Every part OSS holds is
  re-read from the file and its CRC-64 compared with the one OSS holds (ListParts; else the
  one recorded when it was sent): matching parts are kept, every other part is uploaded
  (again). The file's identity (size, mtime, ctime, inode) is not trusted for this: a
  same-size rewrite whose mtime was restored (rsync, tar, backup tools) changes only the
  ctime, timestamps are coarse on some file systems, and a format-1 checkpoint has no ctime
  at all. So a file rewritten in place at the same size is not restarted: only its changed
  parts are sent again. Re-reading costs
  0.1-0.2 s per GiB from the page cache and about 0.6 s per GiB from disk on a 2-core VM
  (see :data:`VERIFY_THREADS`), under the time to upload a GiB even on loopback, so it is
  always done (there is no option to skip it).
* **restarted cleanly** (the stale upload is aborted, a new one begins): the file's size,
  the callback, the headers (typed options included) or the part size changed.
* **recovered**: OSS no longer knows the upload id and the object is provably this upload's
  (a Complete succeeded but its answer was lost; :meth:`_Uploader._already_completed` says
  what proves it). Nothing is sent; without a callback the result has ``recovered=True``;
  with one, :class:`CallbackUnknownError` (stored, callback outcome unknown). Otherwise
  (aborted by a lifecycle rule or a cleanup job, an object not provably ours, or an endpoint
  that does not reach the same bucket after all) a new upload begins, and its Complete fires
  the callback. The same check runs when a retried Complete answers ``NoSuchUpload`` (its
  first attempt went through, the answer was lost).
* **CheckpointError** (nothing is touched; the message says what to do): the checkpoint is
  corrupt, belongs to another bucket/key/file (the message says how to abort that upload,
  whose parts are billed until then), or was written by a newer version.

During a run, a file whose identity changes (size, mtime, ctime or inode) stops the upload
before Complete with :class:`FileChangedError`; the rerun re-verifies as above.

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
import time
from collections.abc import Iterator, Mapping
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import attrs

from oss_callback.client._body import FileRangeBody, ProgressFn, _read_crc, check_readable_file
from oss_callback.client._checkpoint import (
    Checkpoint,
    FileIdentity,
    PartRecord,
    adopt_legacy_checkpoint,
    default_checkpoint_path,
    legacy_checkpoint_path,
    read_checkpoint,
    remove_checkpoint,
    write_checkpoint,
)
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._crc64 import crc64_combine_many
from oss_callback.protocol._endpoint import validate_key
from oss_callback.protocol._errors import (
    CallbackError,
    CallbackUnknownError,
    CheckpointError,
    FileChangedError,
    InconsistentError,
    ServiceError,
)
from oss_callback.protocol._models import HeadObjectResult, PutObjectResult, UploadPartResult
from oss_callback.protocol._options import upload_headers

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from oss_callback.client._client import AsyncBucket

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_PART_SIZE",
    "CallbackUnknownError",
    "choose_part_size",
    "multipart_etag",
    "plan_parts",
]

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
#: Worker threads re-reading kept parts (CRC-64) on resume, and bytes per thread hop (a few
#: contiguous parts, one open; small enough that cancelling waits at most one hop). Measured
#: on the 2-core VM (/tmp script timing ``_local_crcs`` over a 1 GiB file, asyncio and trio):
#: 0.10-0.18 s from the page cache, 0.52-0.60 s after evicting it (posix_fadvise), for 128
#: parts of 8 MiB and for 10,486 parts of 100 KiB alike; fastcrc runs at ~25 GiB/s, so reading
#: dominates. 1 and 4 threads were no faster. A 1 GiB upload takes 1.2 s even on loopback.
VERIFY_THREADS = 2
VERIFY_UNIT = 64 * MiB
#: Allowed drift (s) of the local clock against OSS's between the Initiate and the rerun
#: that recovers its Complete, beyond what the rerun measures (see :func:`_written_after`).
CLOCK_SLACK = 5.0
#: OSS refuses requests signed with a clock more than 15 minutes off: the bound on the
#: local clock's error when OSS's answer carries no Date header.
MAX_CLOCK_SKEW = 15 * 60.0


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


def multipart_etag(part_etags: list[str]) -> str | None:
    """The ETag OSS gives a multipart object: MD5 of the parts' MD5s, upper-case hex, ``-N``.

    ``part_etags`` are the parts' ETags (their MD5s, hex) in part order; ``None`` if one is
    not a 32-digit hex MD5 (then the object's ETag can't be predicted).
    """
    digests = bytearray()
    for etag in part_etags:
        if len(etag) != 32:
            return None
        try:
            digests += bytes.fromhex(etag)
        except ValueError:
            return None
    md5 = hashlib.md5(digests, usedforsecurity=False).hexdigest().upper()
    return f"{md5}-{len(part_etags)}"


def _http_time(value: str | None) -> float | None:
    """Unix time of an HTTP date (``Last-Modified``, ``Date``), ``None`` if unparsable."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _written_after(head: HeadObjectResult, initiated: float, answered: float) -> bool:
    """Whether the object was written after an Initiate at local Unix time ``initiated``.

    ``Last-Modified`` is on OSS's clock, ``initiated`` on the local one. Their offset is
    measured now, from the HeadObject's ``Date`` (OSS's clock when it answered) against
    ``answered`` (local time once the answer arrived): that under-estimates the offset by at
    most a second plus the round trip, which only lowers the bar. What the measurement can't
    see is the local clock drifting or being stepped between the Initiate and now, and both
    headers' whole-second resolution: :data:`CLOCK_SLACK` (5 s) covers those. Without a
    ``Date``, the local clock is taken as OSS's, within the 15 minutes OSS tolerates for
    signed requests. An object written within that slack before the Initiate would pass, but
    it must also have this upload's multipart ETag, size and CRC-64; a genuine Complete seen
    as too early only means a new upload (safe: the object is uploaded and called back again).
    """
    modified = _http_time(head.last_modified)
    if modified is None:
        return False
    server_now = _http_time(head.headers.get("date") or head.headers.get("Date"))
    if server_now is None:
        offset, slack = 0.0, MAX_CLOCK_SKEW
    else:
        offset, slack = server_now - answered, CLOCK_SLACK
    return modified >= initiated + offset - slack


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
    content_type: str | None = None,
    metadata: Mapping[str, str] | None = None,
    storage_class: str | None = None,
    acl: str | None = None,
    tagging: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
) -> PutObjectResult:
    """Implementation of :meth:`AsyncBucket.resumable_upload` (see its docstring, and this
    module's for the resume policy).

    Beyond that docstring: a resumed upload re-reads every part OSS already holds and sends
    again each one whose bytes changed (a same-size rewrite, even with the mtime restored),
    so the object is the file as it is now, never a mix; a changed size restarts cleanly.
    When a Complete succeeded but its answer was lost, the result has ``recovered=True``
    (``callback_status``/``callback_body`` ``None``: unknown), and with a callback
    :class:`CallbackUnknownError` is raised instead, carrying that result.
    """
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
    # Everything the object gets is in these headers, so in the checkpoint's headers digest:
    # a run with another option restarts cleanly. Content-Type: from the key first, then
    # the file name (oss2's resumable_upload guesses from the key; the small-file PutObject
    # below gets it ready-made, so both paths agree).
    init_headers = _split_headers(upload_headers(
        (key, file_path), content_type=content_type, metadata=metadata,
        storage_class=storage_class, acl=acl, tagging=tagging, headers=headers,
    ))
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
        if checkpoint_file is not None:
            ckpt_path = os.fspath(checkpoint_file)
        else:
            ckpt_path = default_checkpoint_path(bucket.name, key, file_path)
            legacy = legacy_checkpoint_path(bucket.client.endpoint, bucket.name, key, file_path)
            await anyio.to_thread.run_sync(adopt_legacy_checkpoint, ckpt_path, legacy)
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
        self._was_via: str | None = None  # the checkpoint's endpoint, when another one

    # -------------------------------------------------------------- checkpoint

    async def _load(self) -> Checkpoint | None:
        """A usable checkpoint, ``None`` to start fresh; aborts stale uploads it replaces."""
        if self.ckpt_path is None:
            return None
        ckpt = await anyio.to_thread.run_sync(read_checkpoint, self.ckpt_path)
        if ckpt is None:
            return None
        # The upload's identity: not the endpoint (another one may reach the same bucket).
        mine = (self.bucket.name, self.key, self.identity.path)
        theirs = (ckpt.bucket, ckpt.key, ckpt.file.path)
        if mine != theirs:
            raise CheckpointError(
                f"checkpoint {self.ckpt_path} belongs to another upload (oss://{ckpt.bucket}/"
                f"{ckpt.key} from {ckpt.file.path}, upload id {ckpt.upload_id}, last via "
                f"{ckpt.endpoint}); pass a different checkpoint_file=, or delete it. Its "
                "parts stay on OSS (billed) until that upload is resumed or aborted: "
                f"abort it with 'oss-callback abort-uploads oss://{ckpt.bucket}/{ckpt.key} "
                f"--endpoint {ckpt.endpoint}' (every unfinished upload whose key starts with "
                "that one; --dry-run lists them) or "
                f"bucket.abort_multipart_upload({ckpt.key!r}, {ckpt.upload_id!r})"
            )
        reason = None
        if ckpt.file.size != self.identity.size:
            reason = (f"the source file's size changed since the last run "
                      f"({ckpt.file.size} -> {self.identity.size})")
        elif ckpt.part_size != self.part_size:
            reason = f"the part size changed ({ckpt.part_size} -> {self.part_size})"
        elif ckpt.headers_digest != self.headers_digest:
            reason = "the headers or upload options changed"
        elif ckpt.callback_digest != self.callback_digest:
            reason = "the callback changed"
        if reason is not None:
            logger.warning("restarting upload of %s: %s; aborting stale upload %s",
                           self.key, reason, ckpt.upload_id)
            await self._abort_quietly(ckpt.upload_id)
            await anyio.to_thread.run_sync(remove_checkpoint, self.ckpt_path)
            return None
        if ckpt.file != self.identity:
            logger.info("%s changed since the last run but kept its size (%s); its uploaded "
                        "parts are re-verified and changed ones sent again", self.identity.path,
                        _identity_change(ckpt.file, self.identity))
        endpoint = self.bucket.client.endpoint
        if ckpt.endpoint != endpoint:
            logger.info("resuming upload %s of %s through %s (last run: %s)", ckpt.upload_id,
                        self.key, endpoint, ckpt.endpoint)
            self._was_via = ckpt.endpoint
            ckpt.endpoint = endpoint  # recorded for messages: where it was last reached
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
        """Keep only parts OSS holds with the file's current bytes; ``False``: upload id gone.

        Every part OSS holds at a planned number and size is re-read from the file (CRC-64,
        in worker threads) and compared with the CRC-64 OSS holds for it (ListParts), or, if
        OSS reports none, with the one recorded when that very part (same ETag) was sent. A
        match is kept, whether the checkpoint recorded it or a crash lost it in between; any
        other part is uploaded again (UploadPart to the same number replaces it).
        """
        try:
            listed = await self.bucket.list_parts(self.key, ckpt.upload_id)
        except ServiceError as e:
            if e.code == "NoSuchUpload" or e.status == 404:
                return False
            raise
        planned = {n: (off, ln) for n, off, ln in plan}
        held: dict[int, tuple[str, int]] = {}  # number -> (ETag, CRC-64) OSS holds
        for sp in listed.parts:
            number = sp.part_number
            where = planned.get(number)
            if where is None or sp.size != where[1]:
                continue
            rec = ckpt.parts.get(number)
            same = rec is not None and (rec.offset, rec.size) == where and (
                rec.etag.upper() == sp.etag.upper())
            if sp.crc64 is not None:
                if same and rec is not None and rec.crc64 != sp.crc64:
                    continue  # OSS and the checkpoint disagree about one part: trust neither
                held[number] = (sp.etag, sp.crc64)
            elif same and rec is not None:
                held[number] = (sp.etag, rec.crc64)
        local = await self._local_crcs([(n, *planned[n]) for n in sorted(held)])
        kept: dict[int, PartRecord] = {}
        changed: list[int] = []
        for number, (etag, crc) in sorted(held.items()):
            if local[number] == crc:
                offset, length = planned[number]
                kept[number] = PartRecord(number=number, offset=offset, size=length, etag=etag,
                                          crc64=crc)
            elif number in ckpt.parts:
                changed.append(number)
        if changed:
            logger.warning("%s: %d uploaded part(s) no longer match the file's bytes (part %s); "
                           "sending them again", self.identity.path, len(changed),
                           ", ".join(map(str, changed[:10])) + (", ..." if len(changed) > 10
                                                                  else ""))
        ckpt.parts = kept
        return True

    async def _local_crcs(self, ranges: list[tuple[int, int, int]]) -> dict[int, int]:
        """CRC-64 of each ``(number, offset, length)`` range of the file, by part number.

        Read in :data:`VERIFY_THREADS` worker threads, a few contiguous parts per hop.
        """
        units = _verify_units(ranges)
        crcs: dict[int, int] = {}
        queue = iter(units)
        path = self.identity.path

        async def worker() -> None:
            for unit in queue:
                crcs.update(await anyio.to_thread.run_sync(_file_crcs, path, unit))

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(min(VERIFY_THREADS, len(units))):
                    tg.start_soon(worker)
        except BaseExceptionGroup as group:
            raise _root_cause(group) from None
        return crcs

    # -------------------------------------------------------------- run

    async def run(self) -> PutObjectResult:
        plan = plan_parts(self.identity.size, self.part_size)
        ckpt = await self._load()
        if ckpt is not None:
            recorded = dict(ckpt.parts)
            if await self._reconcile(ckpt, plan):
                ckpt.file = self.identity  # the kept parts were verified against it
            else:
                done = await self._already_completed(ckpt, recorded, plan)
                if done is not None:
                    return done
                if self._was_via is not None:
                    logger.warning(
                        "upload %s (begun through %s) is unknown at %s: starting a new upload. "
                        "If that endpoint reaches another bucket of the same name, the old "
                        "upload's parts are still there: abort it with 'oss-callback "
                        "abort-uploads oss://%s/%s --endpoint %s'", ckpt.upload_id,
                        self._was_via, ckpt.endpoint, self.bucket.name, self.key,
                        self._was_via)
                else:
                    logger.warning("upload %s is unknown to OSS (aborted, or completed into "
                                   "an object not provably this upload's); starting a new "
                                   "upload", ckpt.upload_id)
                ckpt = None
        if ckpt is None:
            initiated_ms = int(time.time() * 1000)  # before sending: never after OSS's
            init = await self.bucket.initiate_multipart_upload(self.key, headers=self.headers)
            ckpt = Checkpoint(
                endpoint=self.bucket.client.endpoint, bucket=self.bucket.name, key=self.key,
                upload_id=init.upload_id, file=self.identity, part_size=self.part_size,
                headers_digest=self.headers_digest, callback_digest=self.callback_digest,
                initiated_ms=initiated_ms,
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
            # The ACL goes on Complete too (where OSS documents it), as oss2 does.
            acl = {k: v for k, v in self.headers.items() if k == "x-oss-object-acl"}
            try:
                result = await self.bucket.complete_multipart_upload(
                    self.key, upload_id, parts, callback=self.callback, headers=acl or None
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
            except ServiceError as e:
                if e.code != "NoSuchUpload":
                    raise
                # A retried Complete whose first attempt went through (its answer lost) finds
                # the upload gone: the object is recovered if it is provably this upload's.
                try:
                    recovered = await self._already_completed(ckpt, dict(ckpt.parts), plan)
                except CallbackUnknownError:
                    completed = True  # stored: nothing left to abort
                    raise
                if recovered is None:
                    raise  # not provably ours: NoSuchUpload it is (the checkpoint is kept)
                completed = True
                return recovered
        except BaseException:
            if self.ckpt_path is None and not completed:
                await self._abort_quietly(upload_id)
            raise
        await self._forget()
        return result

    async def _already_completed(
        self, ckpt: Checkpoint, recorded: dict[int, PartRecord], plan: list[tuple[int, int, int]]
    ) -> PutObjectResult | None:
        """The object, if a Complete succeeded but its answer was lost.

        OSS no longer knows the upload id (on resume, or answering a retried Complete whose
        first attempt went through): it was completed, or aborted (a lifecycle rule, a
        cleanup job). The stored object counts as this upload's only with proof: the
        checkpoint recorded every planned part and the Initiate time; the object has the
        multipart ETag of exactly those parts (MD5 of their MD5s, ``-N``), their combined
        size and CRC-64, and a Last-Modified not before the Initiate (clock skew: see
        :func:`_written_after`); and the file still holds those parts' bytes (every part
        re-read). Then nothing is uploaded or called back again: without a callback the
        result says ``recovered=True``; with one, :class:`CallbackUnknownError` carries it
        (the callback's outcome went with the lost answer). Otherwise ``None``: the caller
        starts a new upload, whose Complete fires the callback.
        """
        planned = {n: (off, ln) for n, off, ln in plan}
        if ckpt.initiated_ms is None or set(recorded) != set(planned):
            return None
        if any((r.offset, r.size) != planned[n] for n, r in recorded.items()):
            return None
        ordered = [r for _, r in sorted(recorded.items())]
        etag = multipart_etag([r.etag for r in ordered])
        if etag is None:
            return None
        combined = crc64_combine_many((r.crc64, r.size) for r in ordered)
        try:
            head = await self.bucket.head_object(self.key)
        except ServiceError:
            return None  # absent, or not ours to read: a new upload is the safe answer
        answered = time.time()
        if (head.size != self.identity.size or head.crc64 != combined
                or head.etag.upper() != etag):
            return None
        if not _written_after(head, ckpt.initiated_ms / 1000, answered):
            return None
        local = await self._local_crcs(plan)
        if any(local[r.number] != r.crc64 for r in ordered):
            logger.warning("%s changed since its upload %s was completed; uploading it again",
                           self.identity.path, ckpt.upload_id)
            return None
        await self._forget()
        result = PutObjectResult(key=self.key, etag=head.etag, crc64=head.crc64,
                                 request_id=head.request_id, version_id=head.version_id,
                                 upload_id=ckpt.upload_id, size=head.size, recovered=True)
        if self.callback is not None:
            raise CallbackUnknownError(
                f"object {self.key!r} is stored: upload {ckpt.upload_id} was completed "
                "but the answer was lost, so whether the upload callback "
                "succeeded is unknown (it is not sent again); .result describes the object, "
                "make sure the application learns of it",
                result=result,
            )
        logger.info("upload %s of %s was completed but the answer was lost; recovered it",
                    ckpt.upload_id, self.key)
        return result

    async def _forget(self) -> None:
        if self.ckpt_path is not None:
            path = self.ckpt_path
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(remove_checkpoint, path)

    def _check_file_unchanged(self) -> None:
        now = FileIdentity.of(self.identity.path)
        if now != self.identity:
            raise FileChangedError(
                f"{self.identity.path} changed during the upload "
                f"({_identity_change(self.identity, now)}); run the upload again to send the "
                "new content (only changed parts are sent again)"
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


def _identity_change(old: FileIdentity, new: FileIdentity) -> str:
    """What differs between two identities, for messages: ``"size 5 -> 6, ctime"``."""
    changes = []
    if old.size != new.size:
        changes.append(f"size {old.size} -> {new.size}")
    for name in ("mtime_ns", "ctime_ns", "inode"):
        if getattr(old, name) != getattr(new, name):
            changes.append(name.removesuffix("_ns"))
    return ", ".join(changes) or "unchanged"


def _verify_units(ranges: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Group ``(number, offset, length)`` ranges, in file order, into hops of contiguous
    parts of at most :data:`VERIFY_UNIT` bytes (or one part, if larger)."""
    units: list[list[tuple[int, int, int]]] = []
    size = 0
    end = -1
    for number, offset, length in sorted(ranges, key=lambda r: r[1]):
        if units and offset == end and size + length <= VERIFY_UNIT:
            units[-1].append((number, offset, length))
            size += length
        else:
            units.append([(number, offset, length)])
            size = length
        end = offset + length
    return units


def _file_crcs(path: str, ranges: list[tuple[int, int, int]]) -> dict[int, int]:
    """CRC-64 of each ``(number, offset, length)`` range of ``path`` (one open)."""
    crcs: dict[int, int] = {}
    with open(path, "rb") as f:
        for number, offset, length in ranges:
            f.seek(offset)
            crc = 0
            remaining = length
            while remaining > 0:
                data, crc = _read_crc(f, min(remaining, 8 * MiB), crc)
                if not data:
                    break  # shorter than planned: the CRC can't match
                remaining -= len(data)
            crcs[number] = crc
    return crcs
