"""Sending the parts of a resumable upload: :class:`PartUploadMixin`, a step of the upload (a
mixin over :class:`~oss_callback.client._resume.UploadJob`, see
:mod:`oss_callback.client._resume`).

``concurrency`` workers take the missing parts in order, stream each from the file
(:class:`FileRangeBody`, its CRC-64 verified by the session), record it in the checkpoint
and report byte-accurate progress across the parts in flight (:class:`_PartsProgress`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import anyio

from oss_callback.client._body import FileRangeBody, ProgressFn
from oss_callback.client._checkpoint import Checkpoint, PartRecord
from oss_callback.client._parts import root_cause
from oss_callback.client._resume import UploadJob

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["PartUploadMixin"]


class PartUploadMixin(UploadJob):
    """The part-upload step of a resumable upload."""

    async def _upload_missing(self, ckpt: Checkpoint, plan: list[tuple[int, int, int]]) -> None:
        todo = [p for p in plan if p[0] not in ckpt.parts]
        done_bytes = sum(r.size for r in ckpt.parts.values())
        progress = _PartsProgress(self.progress_fn, self.identity.size, done_bytes)
        progress.emit()
        if not todo:
            return
        queue: Iterator[tuple[int, int, int]] = iter(todo)
        expect = (self.identity.size, self.identity.mtime_ns)

        async def worker() -> None:
            for number, offset, length in queue:
                body = FileRangeBody(self.identity.path, offset, length, expect=expect)
                part = await self.bucket._upload_part(
                    self.key, ckpt.upload_id, number, body, progress.part(number)
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
            raise root_cause(group) from None


class _PartsProgress:
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
