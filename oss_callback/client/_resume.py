"""A resumable upload's state and its checkpoint: :class:`UploadJob`.

An UploadJob holds what the upload is (the bucket, key, the file's identity, part size,
headers, callback, checkpoint path) and keeps its checkpoint: read and checked against this
upload (resumed, restarted cleanly, or refused with :class:`CheckpointError`), written
(throttled and coalesced), and reconciled with the parts OSS holds, each re-read from the
file (CRC-64) before it is kept. The policy is in :mod:`oss_callback.client._resumable`'s
docstring. The upload's other steps are mixins over UploadJob (``_recovery``,
``_part_upload``; ``_resumable`` composes them): they share this one object's state, read
as ``self.x`` just as in one class, while each step's code sits in its own module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from collections.abc import Mapping

import anyio
import anyio.to_thread
import attrs

from oss_callback.client._body import ProgressFn, _read_crc
from oss_callback.client._checkpoint import (
    Checkpoint,
    FileIdentity,
    PartRecord,
    read_checkpoint,
    remove_checkpoint,
    write_checkpoint,
)
from oss_callback.client._multipart import MultipartMixin
from oss_callback.client._parts import MiB, root_cause
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._errors import CheckpointError, FileChangedError, ServiceError

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["CHECKPOINT_INTERVAL", "UploadJob"]

logger = logging.getLogger("oss_callback")

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


class UploadJob:
    """One resumable upload: what it is, and its checkpoint (see this module's docstring)."""

    def __init__(
        self,
        *,
        bucket: MultipartMixin,
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
            raise root_cause(group) from None
        return crcs


def _headers_digest(headers: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(headers.items())).encode()).hexdigest()


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
