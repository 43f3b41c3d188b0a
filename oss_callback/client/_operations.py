"""What a service does next with what it uploaded: list, copy, batch delete, append.

The logic behind :meth:`AsyncBucket.list_objects`, :meth:`~AsyncBucket.copy_object`,
:meth:`~AsyncBucket.delete_objects` and :meth:`~AsyncBucket.append_object` (the bucket
classes only delegate here), and the synchronous listing iterator of :class:`Bucket`.

* **Listing** is ListObjectsV2 (``list-type=2``, ``encoding-type=url``), page by page with
  continuation tokens. A lister holds no connection or task between pages (only the next
  token), so an ``async for`` or ``for`` left early leaves nothing behind, and the sync
  facade runs each page fetch as one call on its event loop.
* **Copy** asks HeadObject first (the source's size, CRC-64, ETag and metadata): up to
  1 GiB (OSS's CopyObject limit) one CopyObject, larger sources a multipart copy
  (UploadPartCopy with ``x-oss-copy-source-range``, parts concurrently, as
  ``resumable_upload`` sends parts); every request carries
  ``x-oss-copy-source-if-match: <etag>``, so a source replaced meanwhile fails the copy
  (412) instead of producing a mix, and the copy's CRC-64 is checked against the source's.
* **Batch delete** sends DeleteMultipleObjects (with the ``Content-MD5`` OSS requires) of at
  most 1,000 keys a request; keys XML 1.0 can't carry are deleted one by one.
* **Append** checks OSS's CRC-64 of the whole object after the append against the previous
  CRC-64 continued over the appended bytes, and retries on its own terms: a retry whose
  earlier attempt had gone through (answer lost) is recognised by the object's length and
  CRC-64, not appended twice.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import math
import sys
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import anyio

from oss_callback.client._body import Body, ProgressFn, make_body
from oss_callback.client._http import parse_crc
from oss_callback.protocol._crc64 import crc64
from oss_callback.protocol._endpoint import validate_bucket_name, validate_key
from oss_callback.protocol._errors import (
    InconsistentError,
    RequestError,
    ResponseError,
    ServiceError,
)
from oss_callback.protocol._models import (
    AppendObjectResult,
    CommonPrefix,
    CopyObjectResult,
    DeleteError,
    DeleteObjectsResult,
    HeadObjectResult,
    ObjectInfo,
)
from oss_callback.protocol._options import upload_headers
from oss_callback.protocol._xml import Node, delete_body, parse_xml, strip_etag, xml_safe

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from oss_callback.client._client import AsyncBucket

__all__ = [
    "DELETE_BATCH",
    "MULTIPART_COPY_THRESHOLD",
    "ObjectLister",
    "SyncObjectIterator",
    "append_object",
    "copy_object",
    "delete_objects",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
#: CopyObject copies objects up to 1 GiB; bigger sources need UploadPartCopy (OSS docs).
MULTIPART_COPY_THRESHOLD = 1 * GiB
#: Part size of a multipart copy when none is given (the parts are copied inside OSS, so
#: large parts cost nothing in transfer: fewer requests). The V2 SDK's default too.
DEFAULT_COPY_PART_SIZE = 64 * MiB
#: Keys per DeleteMultipleObjects request: OSS's maximum.
DELETE_BATCH = 1000
MAX_KEYS = 1000
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

Entry = ObjectInfo | CommonPrefix


# --------------------------------------------------------------------------- listing


def _parse_time(value: str, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ResponseError(f"the {what} response has a bad time {value[:40]!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def _int(node: Node, tag: str, what: str) -> int:
    value = node.required(tag, what)
    if not (value.isascii() and value.isdigit()):
        raise ResponseError(f"the {what} response has a bad <{tag}> {value[:40]!r}")
    return int(value)


def _optional_str(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, got {type(value).__name__}")
    return value


def _parse_page(content: bytes) -> tuple[list[Entry], bool, str]:
    """A ListObjectsV2 page: entries in key order, whether truncated, the next token."""
    what = "ListObjectsV2"
    node = parse_xml(content, "ListBucketResult", what)
    entries: list[Entry] = [
        ObjectInfo(
            key=c.key_text("Key", what),
            size=_int(c, "Size", what),
            etag=strip_etag(c.text("ETag")),
            last_modified=_parse_time(c.required("LastModified", what), what),
            storage_class=c.text("StorageClass") or None,
            object_type=c.text("Type") or None,
        )
        for c in node.children("Contents")
    ]
    for group in node.children("CommonPrefixes"):
        for p in group.children("Prefix"):
            text = (p.element.text or "").strip()
            if text:
                entries.append(CommonPrefix(unquote(text) if node.url_encoded else text))
    # OSS sends a page's objects and prefixes apart; both come from one walk in key order.
    entries.sort(key=lambda e: e.key)
    truncated = (node.text("IsTruncated") or "false").lower() == "true"
    token = node.text("NextContinuationToken") or ""
    return entries, truncated, token


class ObjectLister:
    """ListObjectsV2, page by page: an async iterator of :class:`ObjectInfo` and (with a
    delimiter) :class:`CommonPrefix` entries, in key order.

    Between pages it keeps only the next continuation token: no connection, task or
    generator stays open, so leaving an ``async for`` early needs no cleanup.
    """

    def __init__(
        self,
        bucket: AsyncBucket,
        prefix: str | None,
        delimiter: str | None,
        start_after: str | None,
        max_keys: int,
    ) -> None:
        self._bucket = bucket
        self._prefix = _optional_str(prefix, "prefix")
        self._delimiter = _optional_str(delimiter, "delimiter")
        self._start_after = _optional_str(start_after, "start_after")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or not (
            1 <= max_keys <= MAX_KEYS
        ):
            raise ValueError(f"max_keys must be an int in 1..{MAX_KEYS}, got {max_keys!r}")
        self._max_keys = max_keys
        self._token: str | None = None
        self._buffer: collections.deque[Entry] = collections.deque()
        self.exhausted = False
        self.pages = 0

    def __repr__(self) -> str:
        return (f"<ObjectLister bucket={self._bucket.name!r} prefix={self._prefix!r} "
                f"delimiter={self._delimiter!r} pages={self.pages}"
                f"{' exhausted' if self.exhausted else ''}>")

    def __aiter__(self) -> ObjectLister:
        return self

    async def __anext__(self) -> Entry:
        while not self._buffer:
            if self.exhausted:
                raise StopAsyncIteration
            self._buffer.extend(await self.next_page())
        return self._buffer.popleft()

    async def next_page(self) -> list[Entry]:
        """Fetch the next page's entries (``[]`` once exhausted; a page may be empty)."""
        if self.exhausted:
            return []
        query = [("list-type", "2"), ("max-keys", str(self._max_keys)),
                 ("encoding-type", "url")]
        if self._prefix is not None:
            query.append(("prefix", self._prefix))
        if self._delimiter is not None:
            query.append(("delimiter", self._delimiter))
        if self._token is not None:
            query.append(("continuation-token", self._token))
        elif self._start_after is not None:
            query.append(("start-after", self._start_after))
        _, content = await self._bucket._session.request("GET", self._bucket.name, None,
                                                         query=query)
        entries, truncated, token = _parse_page(content)
        self.pages += 1
        if not truncated:
            self.exhausted = True
        elif not token or token == self._token:
            self.exhausted = True
            raise ResponseError(
                "the ListObjectsV2 response is truncated but gives no new continuation token: "
                "is the endpoint really OSS?"
            )
        self._token = token
        return entries


class SyncObjectIterator(Iterator[Entry]):
    """The sync facade's listing: a plain iterator whose page fetches run, one call each,
    on the client's event loop (``fetch_page``). Nothing runs between calls, so breaking
    out of a ``for`` loop early leaves nothing behind."""

    def __init__(self, lister: ObjectLister, fetch_page: Callable[[], list[Entry]]) -> None:
        self._lister = lister
        self._fetch_page = fetch_page
        self._buffer: collections.deque[Entry] = collections.deque()

    def __repr__(self) -> str:
        return repr(self._lister).replace("<ObjectLister", "<SyncObjectIterator", 1)

    def __iter__(self) -> SyncObjectIterator:
        return self

    def __next__(self) -> Entry:
        while not self._buffer:
            if self._lister.exhausted:
                raise StopIteration
            self._buffer.extend(self._fetch_page())
        return self._buffer.popleft()


# --------------------------------------------------------------------------- copy


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


async def _head(bucket: AsyncBucket, bucket_name: str, key: str) -> HeadObjectResult:
    from oss_callback.client._client import _head_result, _require_oss

    response, _ = await bucket._session.request("HEAD", bucket_name, key, max_body=0)
    _require_oss(response, "HeadObject")
    return _head_result(key, response.headers)


def _check_copy_crc(key: str, source: HeadObjectResult, crc: int | None,
                    request_id: str | None) -> None:
    if crc is not None and source.crc64 is not None and crc != source.crc64:
        raise InconsistentError(
            f"CRC-64 mismatch copying {source.key!r} to {key!r}: the source has "
            f"{source.crc64}, the copy {crc} (request_id={request_id}); copy it again",
            client_crc=source.crc64, server_crc=crc, request_id=request_id,
        )


async def copy_object(
    bucket: AsyncBucket,
    src_key: str,
    dst_key: str,
    *,
    src_bucket: str | None,
    metadata: Mapping[str, str] | None,
    metadata_directive: str | None,
    headers: Mapping[str, str] | None,
    part_size: int | None,
    concurrency: int | None,
    multipart_threshold: int | None,
) -> CopyObjectResult:
    """:meth:`AsyncBucket.copy_object`."""
    from oss_callback.client._resumable import DEFAULT_CONCURRENCY, MAX_CONCURRENCY

    validate_key(src_key)
    validate_key(dst_key)
    source_bucket = bucket.name if src_bucket is None else validate_bucket_name(src_bucket)
    given = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    for name in ("x-oss-copy-source", "x-oss-copy-source-range", "x-oss-metadata-directive"):
        if name in given:
            raise ValueError(f"don't pass {name} in headers: copy_object sets it")
    directive = _directive(metadata_directive, metadata, given)
    h = upload_headers(None, metadata=metadata, headers=given)  # validated as for uploads
    threshold = _positive(multipart_threshold, "multipart_threshold",
                          MULTIPART_COPY_THRESHOLD, 0, 5 * GiB)
    workers = _positive(concurrency, "concurrency", DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY)
    source = await _head(bucket, source_bucket, src_key)
    # Copy exactly what was looked at: a source replaced meanwhile fails with 412.
    h.setdefault("x-oss-copy-source-if-match", source.etag)
    same = source_bucket == bucket.name and src_key == dst_key
    if same and directive == "COPY":
        # On a copy onto itself OSS applies the request's metadata whatever the directive:
        # send the current metadata, or it would be dropped.
        h = {**_source_metadata(source), **h}
        directive = "REPLACE"
    h["x-oss-copy-source"] = _copy_source(source_bucket, src_key)
    h["x-oss-metadata-directive"] = directive
    if same or source.size <= threshold:  # onto itself: a metadata update, no bytes copied
        return await _single_copy(bucket, dst_key, source, h)
    return await _multipart_copy(bucket, dst_key, source, h, directive, part_size, workers)


async def _single_copy(bucket: AsyncBucket, key: str, source: HeadObjectResult,
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
        last_modified=_parse_time(modified, "CopyObject") if modified else None,
        request_id=request_id,
        version_id=response.headers.get("x-oss-version-id"),
        source_version_id=response.headers.get("x-oss-copy-source-version-id"),
    )


async def _multipart_copy(
    bucket: AsyncBucket,
    key: str,
    source: HeadObjectResult,
    h: dict[str, str],
    directive: str,
    part_size: int | None,
    workers: int,
) -> CopyObjectResult:
    from oss_callback.client._resumable import _root_cause, choose_part_size

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
            raise _root_cause(group) from None
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


# --------------------------------------------------------------------------- batch delete


def _batches(keys: list[str], n: int) -> Iterator[list[str]]:
    for start in range(0, len(keys), n):
        yield keys[start:start + n]


async def delete_objects(bucket: AsyncBucket, keys: Iterable[str], *,
                         quiet: bool) -> DeleteObjectsResult:
    """:meth:`AsyncBucket.delete_objects`."""
    if isinstance(keys, str | bytes):
        raise TypeError("keys must be an iterable of keys (a list), not a single key; "
                        "use delete_object(key) for one")
    wanted = list(keys)
    for key in wanted:
        validate_key(key)
    batchable = [k for k in wanted if xml_safe(k)]
    loose = [k for k in wanted if not xml_safe(k)]
    deleted: list[str] = []
    errors: list[DeleteError] = []
    what = "DeleteMultipleObjects"
    for batch in _batches(batchable, DELETE_BATCH):
        body = delete_body(batch, quiet)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # noqa: S324 - OSS's
        _, content = await bucket._session.request(
            "POST", bucket.name, None, query=[("delete", ""), ("encoding-type", "url")],
            headers={"content-md5": md5, "content-type": "application/xml"}, body=body,
        )
        reported: list[str] = []
        failed: list[DeleteError] = []
        if content.strip():
            node = parse_xml(content, "DeleteResult", what)
            reported = [d.key_text("Key", what) for d in node.children("Deleted")]
            failed = [DeleteError(key=e.key_text("Key", what), code=e.text("Code") or "",
                                  message=e.text("Message") or "")
                      for e in node.children("Error")]
        errors.extend(failed)
        if quiet:
            refused = {e.key for e in failed}
            deleted.extend(k for k in batch if k not in refused)
        else:
            deleted.extend(reported)
    for key in loose:  # control characters: no XML body can name them; one by one
        await bucket.delete_object(key)
        deleted.append(key)
    return DeleteObjectsResult(deleted=deleted, errors=errors)


# --------------------------------------------------------------------------- append


class _ChainedBody(Body):
    """``inner``'s bytes, with ``crc`` continued from ``init``: after the whole body has
    gone, it is the CRC-64 the object must have after the append (what the session checks
    ``x-oss-hash-crc64ecma`` against). Never replayed by the session: append_object
    decides about retries itself."""

    replayable = False

    def __init__(self, inner: Body, init: int) -> None:
        self.inner = inner
        self.init = init
        super().__init__()
        self.size = inner.size

    @property
    def crc(self) -> int:
        """The CRC-64 so far: ``init`` until a byte has gone (an empty append included)."""
        return self._crc if self.sent else self.init

    @crc.setter
    def crc(self, value: int) -> None:
        self._crc = value

    async def _chunks(self) -> AsyncGenerator[tuple[bytes | memoryview, int], None]:
        crc = self.init
        async with contextlib.aclosing(self.inner._chunks()) as chunks:
            async for chunk, _ in chunks:
                crc = crc64(chunk, crc)
                yield chunk, crc


async def _current_crc(bucket: AsyncBucket, key: str) -> int:
    """The object's CRC-64 now (0 if it doesn't exist: the append will be refused)."""
    try:
        head = await bucket.head_object(key)
    except ServiceError as e:
        if e.status == 404:
            return 0
        raise
    return head.crc64 if head.crc64 is not None else 0


async def _landed(bucket: AsyncBucket, key: str, position: int,
                  body: _ChainedBody) -> AppendObjectResult | None:
    """After a retry answered PositionNotEqualToLength: the result of the earlier attempt
    if it provably went through (the object ends where it would, with the CRC-64 it would
    have), else ``None``."""
    if body.size is not None and body.sent != body.size:
        return None
    try:
        head = await bucket.head_object(key)
    except ServiceError:
        return None
    if head.size != position + body.sent or head.crc64 is None or head.crc64 != body.crc:
        return None
    return AppendObjectResult(
        key=key, next_position=head.size, crc64=head.crc64, etag=head.etag,
        request_id=head.request_id, version_id=head.version_id, recovered=True,
    )


async def append_object(
    bucket: AsyncBucket,
    key: str,
    position: int,
    data: bytes | str | IO[bytes] | Iterable[bytes] | Any,
    *,
    headers: Mapping[str, str] | None,
    init_crc: int | None,
    progress: ProgressFn | None,
) -> AppendObjectResult:
    """:meth:`AsyncBucket.append_object`."""
    from oss_callback.client._client import _merge_headers

    validate_key(key)
    if isinstance(position, bool) or not isinstance(position, int) or position < 0:
        raise ValueError(f"position must be an int >= 0, got {position!r}")
    if init_crc is not None and (
        isinstance(init_crc, bool) or not isinstance(init_crc, int)
        or not 0 <= init_crc < 1 << 64
    ):
        raise ValueError(f"init_crc must be a CRC-64 (an int in 0..2**64-1), got {init_crc!r}")
    if position == 0 and init_crc:
        raise ValueError("position=0 starts an empty object, whose CRC-64 is 0: drop init_crc")
    h = _merge_headers(headers, None)
    inner = make_body(data, None)
    session = bucket._session
    init = 0 if position == 0 else init_crc
    if init is None:
        init = await _current_crc(bucket, key)
    body = _ChainedBody(inner, init)
    query = [("append", ""), ("position", str(position))]
    attempt = 0
    while True:
        try:
            response, _ = await session.request("POST", bucket.name, key, query=query,
                                                headers=h, body=body, progress=progress)
            break
        except (ServiceError, RequestError) as error:
            if (attempt and isinstance(error, ServiceError)
                    and error.code == "PositionNotEqualToLength"):
                landed = await _landed(bucket, key, position, body)
                if landed is not None:
                    return landed
            if not (inner.replayable and session.retry.should_retry(error, attempt)):
                raise
            delay = session.retry.backoff(attempt)
            attempt += 1
            if delay:
                await anyio.sleep(delay)
    raw_next = response.headers.get("x-oss-next-append-position", "").strip()
    next_position = (int(raw_next) if raw_next.isascii() and raw_next.isdigit()
                     else position + body.sent)
    return AppendObjectResult(
        key=key,
        next_position=next_position,
        crc64=parse_crc(response.headers.get("x-oss-hash-crc64ecma")),
        etag=strip_etag(response.headers.get("etag")),
        request_id=response.headers.get("x-oss-request-id"),
        version_id=response.headers.get("x-oss-version-id"),
    )
