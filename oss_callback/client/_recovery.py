"""Recovering a Complete whose answer was lost: :class:`RecoveryMixin`, a step of the
resumable upload (a mixin over :class:`~oss_callback.client._resume.UploadJob`, see
:mod:`oss_callback.client._resume`).

OSS no longer knows the upload id (on resume, or answering a retried Complete whose first
attempt went through): the stored object counts as this upload's only with proof, its
multipart ETag (:func:`multipart_etag`), size, CRC-64 and a Last-Modified not before the
Initiate (:func:`_written_after`); then nothing is uploaded or called back again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import timezone
from email.utils import parsedate_to_datetime

from oss_callback.client._checkpoint import Checkpoint, PartRecord
from oss_callback.client._resume import UploadJob
from oss_callback.protocol._crc64 import crc64_combine_many
from oss_callback.protocol._errors import CallbackUnknownError, ServiceError
from oss_callback.protocol._models import HeadObjectResult, PutObjectResult

__all__ = ["RecoveryMixin", "multipart_etag"]

logger = logging.getLogger("oss_callback")

#: Allowed drift (s) of the local clock against OSS's between the Initiate and the rerun
#: that recovers its Complete, beyond what the rerun measures (see :func:`_written_after`).
CLOCK_SLACK = 5.0
#: OSS refuses requests signed with a clock more than 15 minutes off: the bound on the
#: local clock's error when OSS's answer carries no Date header.
MAX_CLOCK_SKEW = 15 * 60.0


class RecoveryMixin(UploadJob):
    """The recovery step of a resumable upload."""

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
