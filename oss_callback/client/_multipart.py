"""The multipart primitives, one request each: :class:`MultipartMixin`, the family of
:class:`~oss_callback.AsyncBucket` operations behind ``initiate_multipart_upload``,
``upload_part``, ``complete_multipart_upload`` (the parts' CRC-64s combined and checked
against the object's), ``abort_multipart_upload``, ``list_multipart_uploads`` and
``list_parts`` (mixins: see :mod:`oss_callback.client._base`).

It builds on :class:`~oss_callback.client._objects.ObjectsMixin`: what assembles an object
from parts (the resumable upload, the multipart copy) also needs the single-object
operations (a PutObject for a small file, a HeadObject to check, a DeleteObject to remove a
wrong result), and this one type gives it both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

from oss_callback.client._base import merge_headers
from oss_callback.client._body import Body, ProgressFn, make_body
from oss_callback.client._data import Data
from oss_callback.client._http import parse_crc
from oss_callback.client._objects import ObjectsMixin
from oss_callback.client._results import on_203, put_result, require_etag
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._crc64 import crc64_combine_many
from oss_callback.protocol._endpoint import validate_key
from oss_callback.protocol._errors import CallbackError, InconsistentError
from oss_callback.protocol._models import (
    InitiateMultipartUploadResult,
    ListPartsResult,
    MultipartUpload,
    PartInfo,
    PutObjectResult,
    UploadPartResult,
)
from oss_callback.protocol._options import upload_headers
from oss_callback.protocol._xml import complete_body, parse_xml, strip_etag

__all__ = ["MultipartMixin"]


class MultipartMixin(ObjectsMixin):
    """Multipart uploads, request by request (see :class:`AsyncBucket`)."""

    async def initiate_multipart_upload(
        self,
        key: str,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        storage_class: str | None = None,
        acl: str | None = None,
        tagging: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> InitiateMultipartUploadResult:
        """Start a multipart upload; the options and ``headers`` apply to the final object.

        The typed options are those of :meth:`put_object`; without ``content_type`` (or a
        ``Content-Type`` header) it is guessed from the key, as oss2 does.
        """
        validate_key(key)
        h = upload_headers(key, content_type=content_type, metadata=metadata,
                           storage_class=storage_class, acl=acl, tagging=tagging,
                           headers=headers)
        response, content = await self._session.request(
            "POST", self.name, key, query=[("uploads", "")], headers=merge_headers(h, None),
        )
        node = parse_xml(content, "InitiateMultipartUploadResult", "InitiateMultipartUpload")
        return InitiateMultipartUploadResult(
            bucket=self.name,
            key=key,
            upload_id=node.required("UploadId", "InitiateMultipartUpload"),
            request_id=response.headers.get("x-oss-request-id"),
        )

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        data: Data | None = None,
        *,
        progress: ProgressFn | None = None,
    ) -> UploadPartResult:
        """Upload one part (1..10000) of a multipart upload; its CRC-64 is verified."""
        body = data if isinstance(data, Body) else make_body(data, None)
        return await self._upload_part(key, upload_id, part_number, body, progress)

    async def _upload_part(
        self, key: str, upload_id: str, part_number: int, body: Body,
        progress: ProgressFn | None,
    ) -> UploadPartResult:
        validate_key(key)
        if not 1 <= part_number <= 10000:
            raise ValueError(f"part_number must be in 1..10000, got {part_number}")
        response, _ = await self._session.request(
            "PUT", self.name, key, query=[("partNumber", str(part_number)),
                                          ("uploadId", upload_id)],
            body=body, progress=progress,
        )
        require_etag(response, "UploadPart", self._session.redact)
        return UploadPartResult(
            part_number=part_number,
            etag=strip_etag(response.headers.get("etag")),
            crc64=body.crc,
            size=body.sent,
            request_id=response.headers.get("x-oss-request-id"),
        )

    async def complete_multipart_upload(
        self,
        key: str,
        upload_id: str,
        parts: Iterable[UploadPartResult | PartInfo | tuple[int, str]],
        *,
        callback: Callback | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PutObjectResult:
        """Assemble the object from ``parts``; the callback (if any) fires now.

        When every part carries its CRC-64 and size, the object's CRC-64 is checked against
        the combination of the parts' (:class:`InconsistentError` on mismatch).

        Raises:
            CallbackError: the object is assembled and stored but the callback failed.
        """
        validate_key(key)
        numbered: list[tuple[int, str]] = []
        crcs: list[tuple[int, int]] | None = []
        for part in sorted(parts, key=_part_number):
            if isinstance(part, tuple):
                numbered.append((part[0], part[1]))
                crcs = None
            else:
                numbered.append((part.part_number, part.etag))
                if crcs is not None and part.crc64 is not None and part.size is not None:
                    crcs.append((part.crc64, part.size))
                else:
                    crcs = None
        if not numbered:
            raise ValueError("complete_multipart_upload needs at least one part")
        size = sum(s for _, s in crcs) if crcs is not None else None
        h = merge_headers(headers, callback)
        h["content-type"] = h.get("content-type", "application/xml")
        try:
            response, content = await self._session.request(
                "POST", self.name, key, query=[("uploadId", upload_id)], headers=h,
                body=complete_body(numbered),
                on_203=(on_203(key, callback, upload_id=upload_id, size=size)
                        if callback else None),
            )
        except CallbackError as e:
            # Stored, callback failed: the object's integrity still matters most.
            if crcs is not None and e.result.crc64 is not None:
                _check_combined(key, crcs, e.result)
            raise
        require_etag(response, "CompleteMultipartUpload", self._session.redact)
        etag = None
        if not callback:
            node = parse_xml(content, "CompleteMultipartUploadResult", "CompleteMultipartUpload")
            etag = strip_etag(node.text("ETag"))
        result = put_result(
            key, response, content if callback else None,
            callback_status=response.status_code if callback else None,
            upload_id=upload_id, size=size, etag=etag,
        )
        if crcs is not None and result.crc64 is not None:
            _check_combined(key, crcs, result)
        return result

    async def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload and free its parts (``NoSuchUpload`` if unknown)."""
        validate_key(key)
        await self._session.request("DELETE", self.name, key, query=[("uploadId", upload_id)],
                                    ok=(204, 200))

    async def list_multipart_uploads(self, prefix: str = "") -> list[MultipartUpload]:
        """``(key, upload_id)`` of every unfinished multipart upload (optionally by prefix).

        Each pair is a :class:`MultipartUpload`, which also says when the upload was
        ``initiated``. Useful to find uploads left behind by crashed runs (their parts are
        billed); the ``oss-callback abort-uploads`` command lists and aborts them.
        """
        uploads: list[MultipartUpload] = []
        key_marker = upload_marker = ""
        for _ in range(100_000):
            query = [("uploads", ""), ("max-uploads", "1000")]
            if prefix:
                query.append(("prefix", prefix))
            if key_marker:
                query.append(("key-marker", key_marker))
            if upload_marker:
                query.append(("upload-id-marker", upload_marker))
            _, content = await self._session.request("GET", self.name, None, query=query)
            node = parse_xml(content, "ListMultipartUploadsResult", "ListMultipartUploads")
            for u in node.children("Upload"):
                uploads.append(MultipartUpload(u.key_text("Key", "ListMultipartUploads"),
                                               u.required("UploadId", "ListMultipartUploads"),
                                               _iso_time(u.text("Initiated"))))
            if (node.text("IsTruncated") or "false").lower() != "true":
                break
            key_marker = node.text("NextKeyMarker") or ""
            upload_marker = node.text("NextUploadIdMarker") or ""
            if not key_marker and not upload_marker:
                break
        return uploads

    async def list_parts(self, key: str, upload_id: str) -> ListPartsResult:
        """Every uploaded part of a multipart upload (pages followed), in part order."""
        validate_key(key)
        parts: list[PartInfo] = []
        marker = "0"
        for _ in range(10001):
            query = [("uploadId", upload_id), ("max-parts", "1000")]
            if marker != "0":
                query.append(("part-number-marker", marker))
            _, content = await self._session.request("GET", self.name, key, query=query)
            node = parse_xml(content, "ListPartsResult", "ListParts")
            for p in node.children("Part"):
                parts.append(PartInfo(
                    part_number=int(p.required("PartNumber", "ListParts")),
                    etag=strip_etag(p.required("ETag", "ListParts")),
                    size=int(p.required("Size", "ListParts")),
                    crc64=parse_crc(p.text("HashCrc64ecma")),
                    last_modified=p.text("LastModified"),
                ))
            if (node.text("IsTruncated") or "false").lower() != "true":
                break
            next_marker = node.text("NextPartNumberMarker") or ""
            if not next_marker or next_marker == marker:
                break
            marker = next_marker
        return ListPartsResult(key=key, upload_id=upload_id,
                               parts=tuple(sorted(parts, key=lambda p: p.part_number)))


def _check_combined(key: str, crcs: list[tuple[int, int]], result: PutObjectResult) -> None:
    expected = crc64_combine_many(crcs)
    if expected != result.crc64:
        raise InconsistentError(
            f"CRC-64 mismatch after CompleteMultipartUpload of {key!r}: parts combine "
            f"to {expected}, OSS reports {result.crc64} "
            f"(request_id={result.request_id}); upload the object again",
            client_crc=expected, server_crc=result.crc64 or 0, request_id=result.request_id,
        )


def _iso_time(text: str | None) -> datetime | None:
    """``2012-02-23T04:18:23.000Z`` (OSS's listing times) -> aware UTC; ``None`` if not."""
    try:
        when = datetime.fromisoformat((text or "").strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _part_number(part: UploadPartResult | PartInfo | tuple[int, str]) -> int:
    return part[0] if isinstance(part, tuple) else part.part_number
