"""Listing a bucket: :class:`ListingMixin` (``list_objects``, a family of
:class:`~oss_callback.AsyncBucket` operations; mixins: see :mod:`oss_callback.client._base`),
the async :class:`ObjectLister` it returns, and the synchronous listing iterator of
:class:`Bucket`.

Listing is ListObjectsV2 (``list-type=2``, ``encoding-type=url``), page by page with
continuation tokens. A lister holds no connection or task between pages (only the next
token), so an ``async for`` or ``for`` left early leaves nothing behind, and the sync facade
runs each page fetch as one call on its event loop.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable, Iterator
from typing import overload
from urllib.parse import unquote

from oss_callback.client._base import BucketBase
from oss_callback.client._results import parse_time
from oss_callback.protocol._errors import ResponseError
from oss_callback.protocol._models import CommonPrefix, ObjectInfo
from oss_callback.protocol._xml import Node, parse_xml, strip_etag

__all__ = ["ListingMixin", "ObjectLister", "SyncObjectIterator"]

MAX_KEYS = 1000

Entry = ObjectInfo | CommonPrefix


class ListingMixin(BucketBase):
    """Listing objects (see :class:`AsyncBucket`)."""

    @overload
    def list_objects(self, prefix: str | None = None, delimiter: None = None,
                     start_after: str | None = None, *, max_keys: int = 1000,
                     ) -> AsyncIterator[ObjectInfo]: ...

    @overload
    def list_objects(self, prefix: str | None = None, delimiter: str | None = None,
                     start_after: str | None = None, *, max_keys: int = 1000,
                     ) -> AsyncIterator[ObjectInfo | CommonPrefix]: ...

    def list_objects(
        self,
        prefix: str | None = None,
        delimiter: str | None = None,
        start_after: str | None = None,
        *,
        max_keys: int = 1000,
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """Every object (optionally under ``prefix``), in key order, pages followed.

        ``async for obj in bucket.list_objects("uploads/"):`` (with the synchronous
        :class:`Bucket`, a plain ``for``). Each entry is an :class:`ObjectInfo` (``key``,
        ``size``, ``etag``, ``last_modified`` as an aware UTC datetime, ``storage_class``,
        ``object_type``). With a ``delimiter`` (``"/"``), keys that continue past it after
        the prefix are rolled up into one :class:`CommonPrefix` ("folder") entry each, in
        key order among the objects; ``entry.key`` works for both, ``entry.is_prefix``
        tells them apart. Pages (ListObjectsV2) are fetched as the loop goes, ``max_keys``
        entries each; stop early with ``break``: nothing is left open. No request is made
        until the first entry is asked for.

        Args:
            prefix: only keys starting with it.
            delimiter: roll keys up at this string (``"/"``: list one "folder" level).
            start_after: only keys after it (in UTF-8 byte order).
            max_keys: entries per page (1..1000); not a limit on the total.

        Raises:
            ServiceError: e.g. ``NoSuchBucket`` (raised by the iteration).
            RequestError: no answer after the retries.
            ValueError: ``max_keys`` out of range (at once).
        """
        return ObjectLister(self, prefix, delimiter, start_after, max_keys)


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
            last_modified=parse_time(c.required("LastModified", what), what),
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
        bucket: BucketBase,
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
