"""Copying objects inside OSS: :class:`CopyMixin` (``copy_object``, a family of
:class:`~oss_callback.AsyncBucket` operations; mixins: see :mod:`oss_callback.client._base`).

Copy asks HeadObject first (the source's size, CRC-64, ETag and metadata): up to 1 GiB
(OSS's CopyObject limit) one CopyObject, larger sources a multipart copy (UploadPartCopy
with ``x-oss-copy-source-range``, parts concurrently, as ``resumable_upload`` sends parts);
every request carries ``x-oss-copy-source-if-match: <etag>``, so a source replaced meanwhile
fails the copy (412) instead of producing a mix, and the copy's CRC-64 is checked against
the source's.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Mapping
from typing import Literal
from urllib.parse import quote

import anyio

from oss_callback.client._base import BucketBase
from oss_callback.client._http import parse_crc
from oss_callback.client._multipart import MultipartMixin
from oss_callback.client._parts import (
    DEFAULT_CONCURRENCY,
    MAX_CONCURRENCY,
    GiB,
    KiB,
    MiB,
    choose_part_size,
    root_cause,
)
from oss_callback.client._results import head_result, parse_time, require_oss
from oss_callback.protocol._endpoint import validate_bucket_name, validate_key
from oss_callback.protocol._errors import InconsistentError, ResponseError
from oss_callback.protocol._models import CopyObjectResult, HeadObjectResult
from oss_callback.protocol._options import upload_headers
from oss_callback.protocol._xml import parse_xml, strip_etag

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["MULTIPART_COPY_THRESHOLD", "CopyMixin"]

#: CopyObject copies objects up to 1 GiB; bigger sources need UploadPartCopy (OSS docs).
MULTIPART_COPY_THRESHOLD = 1 * GiB
#: Part size of a multipart copy when none is given (the parts are copied inside OSS, so
#: large parts cost nothing in transfer: fewer requests). The V2 SDK's default too.
DEFAULT_COPY_PART_SIZE = 64 * MiB
#: Headers that make up an object's metadata (what ``x-oss-metadata-directive`` governs).
_METADATA_HEADERS = (
    "content-type",
    "content-language",
    "content-encoding",
    "content-disposition",
    "cache-control",
    "expires",
)
_DIRECTIVES = ("COPY", "REPLACE")


class CopyMixin(MultipartMixin):
    """Copying objects, in one request or in parts (see :class:`AsyncBucket`)."""

    async def copy_object(
        self,
        src_key: str,
        dst_key: str,
        *,
        src_bucket: str | None = None,
        metadata: Mapping[str, str] | None = None,
        metadata_directive: Literal["COPY", "REPLACE"] | None = None,
        headers: Mapping[str, str] | None = None,
        part_size: int | None = None,
        concurrency: int | None = None,
        multipart_threshold: int | None = None,
    ) -> CopyObjectResult:
        """Copy an object (from this bucket or ``src_bucket``, same region) to ``dst_key``.

        The bytes never leave OSS. The source is looked up first (HeadObject): up to
        ``multipart_threshold`` (1 GiB, CopyObject's limit) one CopyObject, bigger sources
        a multipart copy (UploadPartCopy, ``concurrency`` parts at a time, aborted on
        failure). The copy is of the source as looked up (``x-oss-copy-source-if-match``
        with its ETag: a source replaced meanwhile fails with 412 ``PreconditionFailed``)
        and its CRC-64 is checked against the source's.

        Args:
            src_key: the source key.
            dst_key: the destination key, in this bucket. The source's own key updates its
                metadata in place (OSS copies no bytes); its current metadata is kept
                unless new metadata is given.
            src_bucket: the source's bucket (default: this one).
            metadata: the copy's ``x-oss-meta-*`` instead of the source's (implies
                ``metadata_directive="REPLACE"``).
            metadata_directive: ``"COPY"`` the source's metadata (Content-Type, ...,
                ``x-oss-meta-*``), or ``"REPLACE"`` it with ``metadata`` and ``headers``.
                Default: ``"REPLACE"`` when ``metadata`` is given, else ``"COPY"``.
            headers: more request headers: ``Content-Type`` and the like (with REPLACE),
                ``x-oss-storage-class``, ``x-oss-object-acl``, ``x-oss-forbid-overwrite``,
                ``x-oss-copy-source-if-*`` conditions.
            part_size: bytes per part of a multipart copy (default 64 MiB, grown to stay
                within 10,000 parts).
            concurrency: parts of a multipart copy in flight (default 4).
            multipart_threshold: sources larger than this many bytes are copied in parts.

        Raises:
            ServiceError: e.g. ``NoSuchKey`` (the source), ``PreconditionFailed``,
                ``FileAlreadyExists`` (``x-oss-forbid-overwrite``).
            InconsistentError: the copy's CRC-64 differs from the source's.
            ValueError: ``metadata`` (or metadata headers) with ``"COPY"``, bad sizes.
        """
        validate_key(src_key)
        validate_key(dst_key)
        source_bucket = self.name if src_bucket is None else validate_bucket_name(src_bucket)
        given = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
        for name in ("x-oss-copy-source", "x-oss-copy-source-range", "x-oss-metadata-directive"):
            if name in given:
                raise ValueError(f"don't pass {name} in headers: copy_object sets it")
        directive = _directive(metadata_directive, metadata, given)
        h = upload_headers(None, metadata=metadata, headers=given)  # validated as for uploads
        threshold = _positive(multipart_threshold, "multipart_threshold",
                              MULTIPART_COPY_THRESHOLD, 0, 5 * GiB)
        workers = _positive(concurrency, "concurrency", DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY)
        source = await _head(self, source_bucket, src_key)
        # Copy exactly what was looked at: a source replaced meanwhile fails with 412.
        h.setdefault("x-oss-copy-source-if-match", source.etag)
        same = source_bucket == self.name and src_key == dst_key
        if same and directive == "COPY":
            # On a copy onto itself OSS applies the request's metadata whatever the directive:
            # send the current metadata, or it would be dropped.
            h = {**_source_metadata(source), **h}
            directive = "REPLACE"
        h["x-oss-copy-source"] = _copy_source(source_bucket, src_key)
        h["x-oss-metadata-directive"] = directive
        if same or source.size <= threshold:  # onto itself: a metadata update, no bytes copied
            return await _single_copy(self, dst_key, source, h)
        return await _multipart_copy(self, dst_key, source, h, directive, part_size, workers)


def _copy_source(bucket: str, key: str) -> str:
    """``x-oss-copy-source``: ``/bucket/key``, the key URL-encoded (as oss2 does)."""
    return f"/{bucket}/{quote(key, safe='')}"


def _is_metadata(name: str) -> bool:
    return name in _METADATA_HEADERS or name.startswith("x-oss-meta-")


def _source_metadata(head: HeadObjectResult) -> dict[str, str]:
    """The source's metadata as request headers (for a COPY done without CopyObject)."""
    return {k: v for k, v in head.headers.items() if _is_metadata(k.lower())}


def _directive(directive: str | None, metadata: Mapping[str, str] | None,
               headers: Mapping[str, str]) -> str:
    if directive is None:
        return "REPLACE" if metadata is not None else "COPY"
    if not isinstance(directive, str) or directive.upper() not in _DIRECTIVES:
        raise ValueError(f"metadata_directive must be 'COPY' or 'REPLACE', got {directive!r}")
    directive = directive.upper()
    if directive == "COPY":
        given = [k for k in headers if _is_metadata(k)]
        if metadata is not None or given:
            raise ValueError(
                "metadata_directive='COPY' copies the source's metadata, so metadata= and "
                f"metadata headers ({', '.join(given) or 'x-oss-meta-*'}) would be ignored: "
                "pass metadata_directive='REPLACE' (or leave it None) to set them"
            )
    return directive


def _positive(value: object, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, got {value!r}")
    return value


async def _head(bucket: BucketBase, bucket_name: str, key: str) -> HeadObjectResult:
    response, _ = await bucket._session.request("HEAD", bucket_name, key, max_body=0)
    require_oss(response, "HeadObject")
    return head_result(key, response.headers)


def _check_copy_crc(key: str, source: HeadObjectResult, crc: int | None,
                    request_id: str | None) -> None:
    if crc is not None and source.crc64 is not None and crc != source.crc64:
        raise InconsistentError(
            f"CRC-64 mismatch copying {source.key!r} to {key!r}: the source has "
            f"{source.crc64}, the copy {crc} (request_id={request_id}); copy it again",
            client_crc=source.crc64, server_crc=crc, request_id=request_id,
        )


async def _single_copy(bucket: BucketBase, key: str, source: HeadObjectResult,
                       h: dict[str, str]) -> CopyObjectResult:
    response, content = await bucket._session.request("PUT", bucket.name, key, headers=h)
    node = parse_xml(content, "CopyObjectResult", "CopyObject")
    modified = node.text("LastModified")
    request_id = response.headers.get("x-oss-request-id")
    crc = parse_crc(response.headers.get("x-oss-hash-crc64ecma"))
    _check_copy_crc(key, source, crc, request_id)
    return CopyObjectResult(
        key=key,
        etag=strip_etag(node.text("ETag") or response.headers.get("etag")),
        crc64=crc,
        size=source.size,
        last_modified=parse_time(modified, "CopyObject") if modified else None,
        request_id=request_id,
        version_id=response.headers.get("x-oss-version-id"),
        source_version_id=response.headers.get("x-oss-copy-source-version-id"),
    )


async def _multipart_copy(
    bucket: MultipartMixin,
    key: str,
    source: HeadObjectResult,
    h: dict[str, str],
    directive: str,
    part_size: int | None,
    workers: int,
) -> CopyObjectResult:
    size = source.size
    if part_size is None:
        part_size = max(DEFAULT_COPY_PART_SIZE, math.ceil(size / 10_000 / KiB) * KiB)
    part_size = choose_part_size(size, part_size)
    # What CopyObject would do with the metadata, done by hand for the new upload.
    init_headers = {k: v for k, v in h.items()
                    if not k.startswith("x-oss-copy-source") and k != "x-oss-metadata-directive"}
    if directive == "COPY":
        init_headers.update(_source_metadata(source))
    part_headers = {k: v for k, v in h.items() if k.startswith("x-oss-copy-source")}
    init = await bucket.initiate_multipart_upload(key, headers=init_headers)
    upload_id = init.upload_id
    plan = iter([(i + 1, start, min(start + part_size, size) - 1)
                 for i, start in enumerate(range(0, size, part_size))])
    etags: dict[int, str] = {}

    async def worker() -> None:
        for number, first, last in plan:
            response, content = await bucket._session.request(
                "PUT", bucket.name, key,
                query=[("partNumber", str(number)), ("uploadId", upload_id)],
                headers={**part_headers, "x-oss-copy-source-range": f"bytes={first}-{last}"},
            )
            node = parse_xml(content, "CopyPartResult", "UploadPartCopy")
            etag = strip_etag(node.text("ETag") or response.headers.get("etag"))
            if not etag:
                raise ResponseError("the UploadPartCopy response has no ETag: is the endpoint "
                                    "really OSS?")
            etags[number] = etag

    try:
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(workers):
                    tg.start_soon(worker)
        except BaseExceptionGroup as group:
            raise root_cause(group) from None
        forbid = {k: v for k, v in h.items() if k == "x-oss-forbid-overwrite"}
        result = await bucket.complete_multipart_upload(key, upload_id, sorted(etags.items()),
                                                        headers=forbid)
    except BaseException:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            with anyio.move_on_after(30):
                await bucket.abort_multipart_upload(key, upload_id)
        raise
    _check_copy_crc(key, source, result.crc64, result.request_id)
    return CopyObjectResult(
        key=key, etag=result.etag, crc64=result.crc64, size=size,
        request_id=result.request_id, version_id=result.version_id, upload_id=upload_id,
    )
