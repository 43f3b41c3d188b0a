"""What the emulator stores, as the handlers see it: an object's metadata, a part, and a
multipart upload in progress (the :class:`~oss_callback.testing._store.Store` keeps them,
on disk and in its index)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import attrs

from oss_callback.protocol._crc64 import crc64_combine

__all__ = ["PartInfo", "StoredObject", "Upload", "combined_part_checksums"]


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


def combined_part_checksums(parts: list[PartInfo]) -> tuple[str, int, int]:
    """The multipart ETag (no quotes), CRC-64 and size of the concatenated parts."""
    md5 = hashlib.md5(b"".join(p.md5 for p in parts)).hexdigest().upper()  # noqa: S324
    crc = 0
    for part in parts:
        crc = crc64_combine(crc, part.crc64, part.size)
    return f"{md5}-{len(parts)}", crc, sum(p.size for p in parts)

