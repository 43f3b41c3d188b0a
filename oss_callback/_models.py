"""Typed results of OSS operations (frozen attrs values)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = [
    "HeadObjectResult",
    "InitiateMultipartUploadResult",
    "ListPartsResult",
    "PartInfo",
    "PutObjectResult",
    "UploadPartResult",
]


def _frozen_map(value: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(value or {}))


def _map_repr(value: Mapping[str, str]) -> str:
    return repr(dict(value))


@attrs.frozen(kw_only=True)
class PutObjectResult:
    """What OSS answered to a PutObject or CompleteMultipartUpload.

    Attributes:
        key: the object key.
        etag: the ETag without quotes (upper-case hex; not an MD5 for multipart objects).
        crc64: the object's CRC-64 (``x-oss-hash-crc64ecma``), already checked against the
            bytes sent, or ``None`` if OSS did not report one.
        request_id: ``x-oss-request-id``.
        version_id: ``x-oss-version-id`` for versioned buckets, else ``None``.
        callback_status: the HTTP status of the upload response when a callback was
            attached (200, or 203 inside a :class:`CallbackError`), else ``None``: no
            callback was attached, or (``recovered=True``) whether it ran is unknown.
        callback_body: what the callback server answered (passed through by OSS), or ``None``
            (none attached, or unknown).
        upload_id: the multipart upload id (``None`` when a single PutObject was used).
        size: the number of bytes uploaded, when known.
        recovered: ``True`` when ``resumable_upload`` found that a previous run's
            CompleteMultipartUpload had succeeded but its answer was lost (a crash, a dropped
            connection): the object was proven to be this upload's (multipart ETag, size,
            CRC-64, written after the Initiate) and is described from HeadObject, so
            ``request_id`` is the HeadObject's and the callback's outcome is unknown.
    """

    key: str
    etag: str
    crc64: int | None = None
    request_id: str | None = None
    version_id: str | None = None
    callback_status: int | None = None
    callback_body: bytes | None = None
    upload_id: str | None = None
    size: int | None = None
    recovered: bool = False

    def callback_json(self) -> object:
        """The callback server's reply parsed as JSON (``None`` when there is none).

        Raises:
            ValueError: the reply is not JSON.
        """
        import json

        if self.callback_body is None:
            return None
        return json.loads(self.callback_body)


@attrs.frozen(kw_only=True)
class HeadObjectResult:
    """An object's metadata (HeadObject)."""

    key: str
    size: int
    etag: str
    crc64: int | None = None
    content_type: str | None = None
    last_modified: str | None = None
    version_id: str | None = None
    request_id: str | None = None
    object_type: str | None = None
    #: ``x-oss-meta-*`` headers, keys without the prefix, lower-case.
    metadata: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map, repr=_map_repr,
                                              hash=False)
    #: every response header, lower-case names.
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map, repr=False,
                                             hash=False, eq=False)


@attrs.frozen(kw_only=True)
class InitiateMultipartUploadResult:
    """The upload id of a new multipart upload."""

    bucket: str
    key: str
    upload_id: str
    request_id: str | None = None


@attrs.frozen(kw_only=True)
class UploadPartResult:
    """One uploaded part: its number, ETag (no quotes), CRC-64 and size."""

    part_number: int
    etag: str
    crc64: int | None = None
    size: int | None = None
    request_id: str | None = None


@attrs.frozen(kw_only=True)
class PartInfo:
    """A part as ListParts reports it."""

    part_number: int
    etag: str
    size: int
    crc64: int | None = None
    last_modified: str | None = None


@attrs.frozen(kw_only=True)
class ListPartsResult:
    """All parts of a multipart upload, in part-number order (pages already followed)."""

    key: str
    upload_id: str
    parts: tuple[PartInfo, ...]
