"""Appending to an appendable object: :class:`AppendMixin` (``append_object``, a family of
:class:`~oss_callback.AsyncBucket` operations; mixins: see :mod:`oss_callback.client._base`).

Append checks OSS's CRC-64 of the whole object after the append against the previous CRC-64
continued over the appended bytes, and retries on its own terms: a retry whose earlier
attempt had gone through (answer lost) is recognised by the object's length and CRC-64, not
appended twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping

import anyio

from oss_callback.client._base import merge_headers
from oss_callback.client._body import Body, ProgressFn, make_body
from oss_callback.client._data import Data
from oss_callback.client._http import parse_crc
from oss_callback.client._objects import ObjectsMixin
from oss_callback.protocol._crc64 import crc64
from oss_callback.protocol._endpoint import validate_key
from oss_callback.protocol._errors import RequestError, ServiceError
from oss_callback.protocol._models import AppendObjectResult
from oss_callback.protocol._xml import strip_etag

__all__ = ["AppendMixin"]


class AppendMixin(ObjectsMixin):
    """Appending to objects (see :class:`AsyncBucket`)."""

    async def append_object(
        self,
        key: str,
        position: int,
        data: Data,
        *,
        headers: Mapping[str, str] | None = None,
        init_crc: int | None = None,
        progress: ProgressFn | None = None,
    ) -> AppendObjectResult:
        """Append ``data`` to an appendable object at ``position`` (0 creates it).

        ``position`` must be the object's current length: the previous result's
        ``next_position``. OSS's CRC-64 of the whole object after the append is checked
        against the previous CRC-64 continued over ``data``: pass ``init_crc`` (the
        previous result's ``crc64``) or it is read with a HeadObject. A failed attempt is
        retried (replayable data only); a retry that finds the earlier attempt went
        through returns that (``recovered=True``), never appending twice.

        Args:
            key: the object key.
            position: where to append: 0 for a new object, else its current length.
            data: bytes, str (UTF-8), a binary file object, or a sync/async iterable of bytes.
            headers: request headers; Content-Type and ``x-oss-meta-*`` count on the
                first append only.
            init_crc: the object's CRC-64 before this append (saves a HeadObject).
            progress: ``progress(bytes_done, total_or_None)``, as for :meth:`put_object`.

        Raises:
            ServiceError: ``PositionNotEqualToLength`` (409: ``position`` isn't the
                object's length; ``head_object(key).size`` is), ``ObjectNotAppendable``
                (409: a normal or multipart object).
            InconsistentError: the CRC-64 OSS reports isn't the expected one.
        """
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
        h = merge_headers(headers, None)
        inner = make_body(data, None)
        session = self._session
        init = 0 if position == 0 else init_crc
        if init is None:
            init = await _current_crc(self, key)
        body = _ChainedBody(inner, init)
        query = [("append", ""), ("position", str(position))]
        attempt = 0
        while True:
            try:
                response, _ = await session.request("POST", self.name, key, query=query,
                                                    headers=h, body=body, progress=progress)
                break
            except (ServiceError, RequestError) as error:
                if (attempt and isinstance(error, ServiceError)
                        and error.code == "PositionNotEqualToLength"):
                    landed = await _landed(self, key, position, body)
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


async def _current_crc(bucket: ObjectsMixin, key: str) -> int:
    """The object's CRC-64 now (0 if it doesn't exist: the append will be refused)."""
    try:
        head = await bucket.head_object(key)
    except ServiceError as e:
        if e.status == 404:
            return 0
        raise
    return head.crc64 if head.crc64 is not None else 0


async def _landed(bucket: ObjectsMixin, key: str, position: int,
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
