"""Typed results of OSS operations (frozen attrs values)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

import attrs

__all__ = [
    "AppendObjectResult",
    "CommonPrefix",
    "CopyObjectResult",
    "DeleteError",
    "DeleteObjectsResult",
    "HeadObjectResult",
    "InitiateMultipartUploadResult",
    "ListPartsResult",
    "MultipartUpload",
    "ObjectInfo",
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


# ---------------------------------------------------------------------- listing, copy, delete


@attrs.frozen(kw_only=True)
class ObjectInfo:
    """An object as a listing reports it (:meth:`AsyncBucket.list_objects`).

    Attributes:
        key: the object key.
        size: its size in bytes.
        etag: the ETag without quotes.
        last_modified: when it was last written (timezone-aware, UTC).
        storage_class: ``Standard``, ``IA``, ``Archive``, ... (``None`` if not reported).
        object_type: ``Normal``, ``Multipart`` or ``Appendable`` (``None`` if not reported).
    """

    key: str
    size: int
    etag: str
    last_modified: datetime
    storage_class: str | None = None
    object_type: str | None = None

    @property
    def is_prefix(self) -> bool:
        """``False``: an object (a :class:`CommonPrefix` says ``True``)."""
        return False


@attrs.frozen
class CommonPrefix:
    """A "folder" of a listing with a ``delimiter``: keys under ``prefix`` were rolled up.

    ``key`` is the prefix too, so ``entry.key`` works for every listing entry; tell the two
    apart with ``entry.is_prefix`` (or ``isinstance``).
    """

    prefix: str

    @property
    def key(self) -> str:
        """The prefix (ends with the delimiter), as for :class:`ObjectInfo`'s ``key``."""
        return self.prefix

    @property
    def is_prefix(self) -> bool:
        """``True``: a common prefix, not an object."""
        return True


@attrs.frozen(kw_only=True)
class CopyObjectResult:
    """What OSS answered to a copy (CopyObject, or a multipart copy's Complete).

    Attributes:
        key: the destination key.
        etag: the new object's ETag without quotes.
        crc64: its CRC-64 (``x-oss-hash-crc64ecma``), already checked against the
            source's, or ``None`` if OSS did not report one.
        size: its size in bytes (the source's, as HeadObject reported it).
        last_modified: when it was written (timezone-aware), if OSS said.
        request_id: ``x-oss-request-id`` of the request that created it.
        version_id: ``x-oss-version-id`` for versioned buckets, else ``None``.
        source_version_id: ``x-oss-copy-source-version-id``, else ``None``.
        upload_id: the multipart upload id of a multipart copy (``None`` for CopyObject).
    """

    key: str
    etag: str
    crc64: int | None = None
    size: int | None = None
    last_modified: datetime | None = None
    request_id: str | None = None
    version_id: str | None = None
    source_version_id: str | None = None
    upload_id: str | None = None


@attrs.frozen(kw_only=True)
class DeleteError:
    """A key that a DeleteMultipleObjects request could not delete."""

    key: str
    code: str
    message: str = ""


def _as_tuple(value: Iterable[Any]) -> tuple[Any, ...]:
    return tuple(value)


@attrs.frozen(kw_only=True)
class DeleteObjectsResult:
    """The outcome of :meth:`AsyncBucket.delete_objects`.

    Attributes:
        deleted: the keys deleted, keys that did not exist included (OSS counts deleting a
            missing key as a success). In quiet mode OSS names only failures, so this is
            every key sent minus ``errors``.
        errors: the keys OSS reported it could not delete (usually empty: OSS fails the
            whole request, e.g. ``AccessDenied``, rather than single keys).
    """

    deleted: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple)
    errors: tuple[DeleteError, ...] = attrs.field(default=(), converter=_as_tuple)


@attrs.frozen(kw_only=True)
class AppendObjectResult:
    """What OSS answered to an AppendObject.

    Attributes:
        key: the object key.
        next_position: where the next append starts: the object's length now.
        crc64: the whole object's CRC-64 after this append, checked against the previous
            CRC-64 combined with the appended bytes' (pass it as ``init_crc`` to the next
            append), or ``None`` if OSS did not report one.
        etag: the ETag without quotes (not an MD5 for appendable objects).
        request_id: ``x-oss-request-id``.
        version_id: ``x-oss-version-id`` for versioned buckets, else ``None``.
        recovered: ``True`` when a retried append found that an earlier attempt had gone
            through (its answer was lost): proven by the object's length and CRC-64, and
            described from HeadObject.
    """

    key: str
    next_position: int
    crc64: int | None = None
    etag: str = ""
    request_id: str | None = None
    version_id: str | None = None
    recovered: bool = False


class MultipartUpload(tuple[str, str]):
    """An unfinished multipart upload (:meth:`AsyncBucket.list_multipart_uploads`).

    The ``(key, upload_id)`` pair it always was (it unpacks and compares as one) that also
    says when the upload began, as :class:`os.stat_result` carries more than its tuple.

    Attributes:
        key: the object key.
        upload_id: the upload id.
        initiated: when it was initiated (timezone-aware, UTC), ``None`` if OSS didn't say.
    """

    initiated: datetime | None

    def __new__(
        cls, key: str, upload_id: str, initiated: datetime | None = None
    ) -> MultipartUpload:
        self = super().__new__(cls, (key, upload_id))
        self.initiated = initiated
        return self

    def __getnewargs__(self) -> tuple[str, str, datetime | None]:
        return (self[0], self[1], self.initiated)

    @property
    def key(self) -> str:
        """The object key."""
        return self[0]

    @property
    def upload_id(self) -> str:
        """The upload id."""
        return self[1]

    def __repr__(self) -> str:
        return (f"MultipartUpload(key={self[0]!r}, upload_id={self[1]!r}, "
                f"initiated={self.initiated!r})")
