"""One object, one request each: :class:`ObjectsMixin`, the family of
:class:`~oss_callback.AsyncBucket` operations behind ``put_object``, ``get_object``,
``get_object_to_file``, ``head_object``, ``object_exists`` and ``delete_object`` (mixins:
see :mod:`oss_callback.client._base`), with the download helpers they use: downloads are
read as stored (never content-decoded) and their CRC-64 checked before the data is returned
or the file appears.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncGenerator, Mapping
from typing import IO

import anyio
import anyio.to_thread
import httpx

from oss_callback.client._base import BucketBase, merge_headers
from oss_callback.client._body import ProgressFn, make_body
from oss_callback.client._data import Data
from oss_callback.client._http import closing_iter, parse_crc
from oss_callback.client._results import (
    head_result,
    on_203,
    put_result,
    require_etag,
    require_oss,
)
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._crc64 import crc64
from oss_callback.protocol._endpoint import validate_key
from oss_callback.protocol._errors import InconsistentError, ObjectTooLargeError, ServiceError
from oss_callback.protocol._models import HeadObjectResult, PutObjectResult
from oss_callback.protocol._options import upload_headers

__all__ = ["DEFAULT_GET_MAX_SIZE", "ObjectsMixin"]

#: get_object's default ``max_size``: it reads into memory (and briefly holds twice that
#: while joining the chunks), so an object this big belongs in get_object_to_file; a
#: mistaken call on a multi-GB object fails fast with a catchable error instead of
#: exhausting the process's memory. Pass ``max_size=None`` to lift it.
DEFAULT_GET_MAX_SIZE = 256 * 1024 * 1024


class ObjectsMixin(BucketBase):
    """Put, get, head, test and delete single objects (see :class:`AsyncBucket`)."""

    async def put_object(
        self,
        key: str,
        data: Data | None = None,
        *,
        file: str | os.PathLike[str] | None = None,
        callback: Callback | None = None,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        storage_class: str | None = None,
        acl: str | None = None,
        tagging: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        progress: ProgressFn | None = None,
    ) -> PutObjectResult:
        """Upload one object in a single PutObject request, optionally with a callback.

        Args:
            key: the object key.
            data: bytes, str (UTF-8), a binary file object, or a sync/async iterable of bytes.
            file: a path to upload instead of ``data`` (streamed, never read whole).
            callback: an upload callback; its server's reply is ``result.callback_body``.
            content_type: the object's ``Content-Type``. ``None``: guessed (as oss2 does)
                from the file name for ``file=`` uploads, else (or when the file name tells
                nothing) from the key, by extension (``mimetypes``);
                ``application/octet-stream`` when neither tells.
            metadata: user metadata, ``{"name": "value"}`` -> ``x-oss-meta-name``. Names:
                ASCII letters, digits and ``-`` (stored lower-case); values: printable
                ASCII (percent-encode other text); 8 KiB in all.
            storage_class: ``"Standard"``, ``"IA"``, ``"Archive"``, ``"ColdArchive"`` or
                ``"DeepColdArchive"`` (``x-oss-storage-class``; the bucket's by default).
            acl: ``"private"``, ``"public-read"``, ``"public-read-write"`` or ``"default"``
                (``x-oss-object-acl``; ``default``: the bucket's ACL).
            tagging: object tags, ``{"key": "value"}`` -> ``x-oss-tagging`` (URL-encoded):
                at most 10; keys 1-128 and values 0-256 characters of letters, digits,
                spaces and ``+ - = . _ : /``.
            headers: extra request headers (``Cache-Control``, ``x-oss-forbid-overwrite``,
                ...). Setting a header a typed option above also sets is a ``ValueError``.
            progress: ``progress(bytes_done, total_or_None)``, called as bytes are sent
                (from the event loop thread; it starts again from 0 if a retry happens).

        Returns:
            The stored object's :class:`PutObjectResult` (CRC-64 already verified).

        Raises:
            CallbackError: HTTP 203: the object is stored but the callback failed
                (``e.result`` is the result).
            ServiceError: OSS refused the upload.
            InconsistentError: the CRC-64 OSS computed differs from the data sent.
            RequestError: no answer after the retries.
            FileChangedError: the file changed while it was read (nothing stored).
            ValueError: an invalid typed option (the message names it), or one also given
                in ``headers``.
        """
        validate_key(key)
        names = (os.fsdecode(file), key) if file is not None else key
        h = merge_headers(upload_headers(
            names, content_type=content_type, metadata=metadata, storage_class=storage_class,
            acl=acl, tagging=tagging, headers=headers,
        ), callback)
        body = make_body(data, file)
        response, content = await self._session.request(
            "PUT", self.name, key, headers=h, body=body, progress=progress,
            on_203=on_203(key, callback, size=body.size) if callback else None,
        )
        require_etag(response, "PutObject", self._session.redact)
        return put_result(
            key, response, content if callback else None,
            callback_status=response.status_code if callback else None,
            size=body.sent,
        )

    async def get_object(
        self,
        key: str,
        *,
        byte_range: tuple[int, int | None] | None = None,
        max_size: int | None = DEFAULT_GET_MAX_SIZE,
    ) -> bytes:
        """Download an object (or ``byte_range=(first, last_or_None)``, inclusive) into memory.

        The CRC-64 of a whole-object download is checked against ``x-oss-hash-crc64ecma``.

        Args:
            key: the object key.
            byte_range: ``(first, last)`` byte offsets, inclusive (``last=None``: to the end).
            max_size: the most bytes read into memory (default 256 MiB; ``None``: no
                limit). A bigger answer raises :class:`ObjectTooLargeError` before its body
                is read (from ``Content-Length``) or as soon as more has arrived (without
                one), so a mistaken call on a huge object fails fast instead of exhausting
                memory. Stream big objects to disk with :meth:`get_object_to_file`.

        Raises:
            ObjectTooLargeError: the object (or range) is larger than ``max_size``.
            ServiceError: e.g. ``NoSuchKey`` (404).
            InconsistentError: the CRC-64 of what arrived differs from OSS's.
            RequestError: no answer after the retries.
        """
        validate_key(key)
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0
        ):
            raise ValueError(f"max_size must be an int >= 0 or None, got {max_size!r}")
        headers = _range_header(byte_range)
        chunks: list[bytes] = []
        async with self._session.stream("GET", self.name, key, headers=headers,
                                        ok=(200, 206)) as response:
            declared = _content_length(response)
            if max_size is not None and declared is not None and declared > max_size:
                raise _too_large(key, declared, max_size, announced=True)
            received = 0
            async with contextlib.aclosing(_raw_chunks(response)) as raw:
                async for chunk in raw:
                    received += len(chunk)
                    if max_size is not None and received > max_size:
                        raise _too_large(key, received, max_size, announced=False)
                    chunks.append(chunk)
        data = b"".join(chunks)
        del chunks
        if response.status_code == 200:
            _verify_download(response, crc64(data), len(data), key)
        require_oss(response, "GetObject")
        return data

    async def get_object_to_file(
        self, key: str, path: str | os.PathLike[str], *, progress: ProgressFn | None = None
    ) -> HeadObjectResult:
        """Download an object to ``path``, streaming; CRC-64 checked before the file appears.

        The data goes to a temporary file in the same folder, renamed over ``path`` only when
        complete and verified: ``path`` is never left half-written.
        """
        validate_key(key)
        target = os.fspath(path)
        fd, tmp = await anyio.to_thread.run_sync(_temp_beside, target)
        f = os.fdopen(fd, "wb")
        try:
            crc = 0
            done = 0
            async with self._session.stream("GET", self.name, key) as response:
                total = int(response.headers.get("content-length", "0")) or None
                async with contextlib.aclosing(_raw_chunks(response, 1024 * 1024)) as raw:
                    async for chunk in raw:
                        crc = await anyio.to_thread.run_sync(_write_crc, f, chunk, crc)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
            _verify_download(response, crc, done, key)
            require_oss(response, "GetObject")
            await anyio.to_thread.run_sync(_finish_file, f, tmp, target)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_discard_file, f, tmp)
            raise
        return head_result(key, response.headers, size=done)

    async def head_object(self, key: str) -> HeadObjectResult:
        """An object's metadata: size, etag, crc64, content type, ``x-oss-meta-*``."""
        validate_key(key)
        response, _ = await self._session.request("HEAD", self.name, key, max_body=0)
        require_oss(response, "HeadObject")
        return head_result(key, response.headers)

    async def object_exists(self, key: str) -> bool:
        """``True`` if the object exists; ``False`` on ``NoSuchKey``; other errors raise."""
        try:
            await self.head_object(key)
        except ServiceError as e:
            if e.status == 404 and e.code in ("NoSuchKey", ""):
                return False
            raise
        return True

    async def delete_object(self, key: str) -> None:
        """Delete an object (no error if it doesn't exist, as OSS does)."""
        validate_key(key)
        await self._session.request("DELETE", self.name, key, ok=(204, 200))


async def _raw_chunks(response: httpx.Response, size: int | None = None,
                      ) -> AsyncGenerator[bytes, None]:
    """The object's stored bytes, as sent (never content-decoded: the CRC-64 is of these).

    Use it in ``contextlib.aclosing``: an interrupted download then closes httpx's
    iterator at once instead of leaving it to the garbage collector.
    """
    if response.is_stream_consumed:  # a response built in memory (httpx.MockTransport)
        yield response.content
        return
    async with closing_iter(response.aiter_raw(size)) as raw:
        async for chunk in raw:
            yield chunk


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _too_large(key: str, size: int, max_size: int, *, announced: bool) -> ObjectTooLargeError:
    if announced:
        what = f"is {size} bytes, more than get_object's max_size={max_size}"
    else:
        what = (f"is more than get_object's max_size={max_size} bytes ({size} arrived before "
                "reading stopped; the answer had no Content-Length)")
    return ObjectTooLargeError(
        f"object {key!r} {what}: get_object keeps the whole object in memory; download it "
        "with get_object_to_file(key, path), which streams it to disk, or pass a larger "
        "max_size= (None: no limit)",
        key=key, size=size, max_size=max_size,
    )


def _range_header(byte_range: tuple[int, int | None] | None) -> dict[str, str]:
    if byte_range is None:
        return {}
    first, last = byte_range
    if first < 0 or (last is not None and last < first):
        raise ValueError(f"invalid byte_range {byte_range!r}: need 0 <= first <= last")
    return {"range": f"bytes={first}-{'' if last is None else last}"}


def _verify_download(response: httpx.Response, crc: int, size: int, key: str) -> None:
    server = parse_crc(response.headers.get("x-oss-hash-crc64ecma"))
    if server is not None and server != crc:
        raise InconsistentError(
            f"CRC-64 mismatch downloading {key!r}: received {crc} over {size} bytes, OSS "
            f"reports {server}; download it again",
            client_crc=crc, server_crc=server,
            request_id=response.headers.get("x-oss-request-id"),
        )


def _temp_beside(target: str) -> tuple[int, str]:
    if os.path.isdir(target):
        raise IsADirectoryError(f"{target} is a directory; give a file path")
    folder = os.path.dirname(os.path.abspath(target))
    return tempfile.mkstemp(prefix=".oss-download-", dir=folder)


def _write_crc(f: IO[bytes], chunk: bytes, crc: int) -> int:
    f.write(chunk)
    return crc64(chunk, crc)


def _finish_file(f: IO[bytes], tmp: str, target: str) -> None:
    f.flush()
    os.fsync(f.fileno())
    f.close()
    os.replace(tmp, target)


def _discard_file(f: IO[bytes], tmp: str) -> None:
    f.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
