"""The synchronous facade: :class:`Client` and :class:`Bucket` over the async core.

Each :class:`Client` (or :class:`Bucket` built directly) starts one event loop in a thread of
its own (a :class:`~oss_callback.client._portal.Portal`, over anyio's ``BlockingPortal``).
Its :class:`AsyncClient`, and so the pooled :class:`httpx.AsyncClient`, is created inside
that loop and lives there until :meth:`Client.close`. Every sync method runs the async
method of the same name as a task in that loop and blocks the calling thread until it
finishes, so:

* the facade only delegates: same names, signatures, docstrings, results and exception
  objects as :class:`AsyncClient`/:class:`AsyncBucket`; no retries, validation or policy;
* any number of threads may share one client or bucket (their calls run concurrently in the
  loop and share the connection pool);
* an exception raised in the calling thread while it waits (``KeyboardInterrupt`` from
  Ctrl-C, or any other) cancels the task in the loop and waits for its cleanup before it
  propagates: nothing keeps uploading in the background, and an interrupted
  ``resumable_upload`` resumes from its checkpoint next time (the core bounds that cleanup;
  a second Ctrl-C stops waiting for it);
* progress callbacks run on the loop thread: keep them short, and don't call the sync API
  from them (that raises ``RuntimeError`` instead of deadlocking);
* it works when called from a thread that runs an asyncio loop of its own (a notebook
  cell); that loop is blocked while the call runs. In async code, prefer the async classes;
* :meth:`Client.close` cancels calls still running in other threads (they raise
  ``RuntimeError``), closes the pool in the loop, and joins the loop thread;
* a client can't cross ``os.fork()``: in the child every call raises ``RuntimeError`` (and
  ``close()`` only marks it closed); create a new client there.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import anyio
import httpx

from oss_callback.client._body import ProgressFn
from oss_callback.client._client import AsyncBucket, AsyncClient
from oss_callback.client._data import Data
from oss_callback.client._engine import HttpEngine
from oss_callback.client._listing import ObjectLister, SyncObjectIterator
from oss_callback.client._objects import DEFAULT_GET_MAX_SIZE
from oss_callback.client._portal import Portal
from oss_callback.client._post_policy import PostPolicy
from oss_callback.client._retry import RetryPolicy
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._credentials import Credentials, CredentialsProvider
from oss_callback.protocol._models import (
    AppendObjectResult,
    CommonPrefix,
    CopyObjectResult,
    DeleteObjectsResult,
    HeadObjectResult,
    InitiateMultipartUploadResult,
    ListPartsResult,
    MultipartUpload,
    ObjectInfo,
    PartInfo,
    PutObjectResult,
    UploadPartResult,
)
from oss_callback.protocol._signing import SignatureVersion

__all__ = ["Bucket", "Client"]

F = TypeVar("F", bound=Callable[..., Any])


def _same_doc(async_method: Callable[..., Any]) -> Callable[[F], F]:
    """Give the sync method the async method's docstring: one docstring serves both."""

    def apply(method: F) -> F:
        method.__doc__ = async_method.__doc__
        return method

    return apply


class Client:
    """A synchronous OSS client: :class:`AsyncClient`'s API without ``await``.

    It runs an :class:`AsyncClient` on an event loop in a thread of its own; the pooled
    connections live there until :meth:`close`. One client may be shared by any number of
    threads. Use it as ``with Client(...) as client:`` or call :meth:`close`.

    Args:
        endpoint: ``https://oss-cn-hangzhou.aliyuncs.com``, ``http://127.0.0.1:9000`` or a bare
            host (https assumed).
        access_key_id: ``None`` reads ``OSS_ACCESS_KEY_ID``.
        access_key_secret: ``None`` reads ``OSS_ACCESS_KEY_SECRET``.
        security_token: the STS token; ``None`` reads ``OSS_SESSION_TOKEN`` (optional).
        credentials_provider: instead of the keys, for credentials that rotate: an object
            with ``def get_credentials() -> Credentials`` (run in a worker thread, so it may
            block) or an ``async def`` one (run on the client's event loop), as for
            :class:`AsyncClient`.
        region: e.g. ``cn-hangzhou``; derived from OSS endpoints. V4 needs it.
        signature_version: ``"v4"`` (default) or ``"v1"``.
        path_style: force path-style (``True``) or virtual-hosted (``False``) addressing;
            ``None`` picks path-style for IP/localhost endpoints, virtual-hosted otherwise.
        timeout: for the SDK-built httpx client: an :class:`httpx.Timeout` or seconds.
        answer_timeout: seconds each attempt gets to connect and then, once the request
            body is sent, for the complete response head (the body's upload and a
            download's body are not under it); ``None``: twice the httpx client's read timeout;
            ``math.inf``: no deadline. As for :class:`AsyncClient`.
        retry: the :class:`RetryPolicy` (default: 3 attempts, jittered backoff).
        max_connections: for the SDK-built httpx client: connections to OSS (default 8).
        http_client: your own :class:`httpx.AsyncClient` (proxy, ``verify``, limits, event
            hooks, transport): every request goes through it, on this client's event loop
            thread (its event hooks run there too). Its connections belong to that loop, so
            :meth:`close` closes them with it (``http_client.is_closed`` is then true).
        http_engine: ``"httpx"`` (default) or ``"aiohttp"`` (the ``aiohttp`` extra), as for
            :class:`AsyncClient`.
        transport: for the SDK-built httpx client: an httpx transport (tests:
            :class:`httpx.MockTransport`); it is used on the client's event loop thread.

    Raises:
        ValueError: bad endpoint, missing credentials, or V4 without a derivable region.
        RuntimeError: a method was called after :meth:`close`, after ``os.fork()`` in the
            child, or from the client's own event loop thread (a progress callback).
    """

    _portal: Portal
    _async: AsyncClient
    _warn_unclosed: bool

    def __init__(
        self,
        endpoint: str | None = None,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        *,
        security_token: str | None = None,
        credentials_provider: CredentialsProvider | None = None,
        region: str | None = None,
        signature_version: SignatureVersion = "v4",
        path_style: bool | None = None,
        timeout: httpx.Timeout | float | None = None,
        answer_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_connections: int | None = None,
        http_client: httpx.AsyncClient | None = None,
        http_engine: HttpEngine = "httpx",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        portal = Portal("Client")
        try:
            # Built on the loop thread: the pooled httpx.AsyncClient belongs to that loop.
            async_client = portal.run_sync(functools.partial(
                AsyncClient, endpoint, access_key_id, access_key_secret,
                security_token=security_token, credentials_provider=credentials_provider,
                region=region, signature_version=signature_version, path_style=path_style,
                timeout=timeout,
                answer_timeout=answer_timeout, retry=retry, max_connections=max_connections,
                http_client=http_client, http_engine=http_engine, transport=transport,
            ))
        except BaseException:
            portal.abandon()
            raise
        self._setup(portal, async_client, warn_unclosed=True)

    def _setup(self, portal: Portal, async_client: AsyncClient, *, warn_unclosed: bool) -> None:
        self._portal = portal
        self._async = async_client
        self._warn_unclosed = warn_unclosed

    @classmethod
    def _wrap(cls, portal: Portal, async_client: AsyncClient) -> Client:
        """The sync client of a :class:`Bucket` that owns its client (it warns, not this)."""
        client = cls.__new__(cls)
        client._setup(portal, async_client, warn_unclosed=False)
        return client

    @property
    def endpoint(self) -> str:
        """The endpoint as ``scheme://host[:port]``."""
        return self._async.endpoint

    @property
    def region(self) -> str | None:
        """The region used for V4 signing."""
        return self._async.region

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._portal.closed

    def __repr__(self) -> str:
        inner = repr(self._async)
        closed = " closed" if self.is_closed and not inner.endswith(" closed>") else ""
        return "<Client" + inner[len("<AsyncClient"):-1] + closed + ">"

    def get_bucket(self, name: str) -> Bucket:
        """A :class:`Bucket` that shares this client's connection pool and event loop."""
        return Bucket._wrap(self, self._async.get_bucket(name))

    @_same_doc(AsyncClient.get_credentials)
    def get_credentials(self) -> Credentials:
        return self._portal.call("get_credentials", self._async.get_credentials)

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The :class:`httpx.AsyncClient` every request goes through (on the loop thread)."""
        return self._async.http_client

    def close(self) -> None:
        """Close the connections and stop the event loop thread. Idempotent.

        Calls still running in other threads are cancelled and raise ``RuntimeError``. An
        ``http_client`` you passed is closed too: its connections belong to this client's
        event loop, which stops here.
        """
        self._portal.close(self._aclose_in_loop)

    async def _aclose_in_loop(self) -> None:
        await self._async.aclose()
        with anyio.move_on_after(10, shield=True):
            await self._async.http_client.aclose()  # a no-op when the SDK built it

    def __enter__(self) -> Client:
        self._portal.check("Client.__enter__")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # Only a warning: no I/O, no joining threads from whatever thread runs the GC.
        portal: Portal | None = getattr(self, "_portal", None)
        if (
            portal is not None
            and getattr(self, "_warn_unclosed", False)
            and not portal.closed
            and portal.pid == os.getpid()
        ):
            warnings.warn(
                f"{self!r} was not closed; use 'with Client(...)' or call close()",
                ResourceWarning,
                stacklevel=2,
            )


class Bucket:
    """Operations on one bucket, synchronously: :class:`AsyncBucket`'s API without ``await``.

    Get one from :meth:`Client.get_bucket` (shares the client's pool), or build it directly
    with the same arguments as :class:`Client` plus the bucket name; it then owns its client
    and is closed with ``with``/:meth:`close`. Safe to share between threads.

    Progress callbacks run on the client's event loop thread, not on the calling thread; if
    one raises, the operation stops with that exception.
    """

    name: str
    client: Client
    _async: AsyncBucket
    _owns_client: bool

    def __init__(
        self,
        name: str,
        endpoint: str | None = None,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        *,
        client: Client | None = None,
        **client_kwargs: Any,
    ) -> None:
        if client is None:
            portal = Portal("Bucket")
            try:
                async_bucket = portal.run_sync(functools.partial(
                    AsyncBucket, name, endpoint, access_key_id, access_key_secret,
                    **client_kwargs,
                ))
            except BaseException:
                portal.abandon()
                raise
            self._setup(Client._wrap(portal, async_bucket.client), async_bucket, owns=True)
        else:
            if not isinstance(client, Client):
                raise TypeError(
                    f"client must be an oss_callback.Client, got {type(client).__name__} "
                    "(with an AsyncClient, use AsyncBucket)"
                )
            async_bucket = AsyncBucket(name, endpoint, access_key_id, access_key_secret,
                                       client=client._async, **client_kwargs)
            self._setup(client, async_bucket, owns=False)

    def _setup(self, client: Client, async_bucket: AsyncBucket, *, owns: bool) -> None:
        self.name = async_bucket.name
        self.client = client
        self._async = async_bucket
        self._portal = client._portal
        self._owns_client = owns

    @classmethod
    def _wrap(cls, client: Client, async_bucket: AsyncBucket) -> Bucket:
        bucket = cls.__new__(cls)
        bucket._setup(client, async_bucket, owns=False)
        return bucket

    def __repr__(self) -> str:
        return f"<Bucket {self.name!r} at {self.client.endpoint!r}>"

    def close(self) -> None:
        """Close the client if this bucket owns it (a no-op for ``client.get_bucket``)."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> Bucket:
        self._portal.check("Bucket.__enter__")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        portal: Portal | None = getattr(self, "_portal", None)
        if (
            portal is not None
            and getattr(self, "_owns_client", False)
            and not portal.closed
            and portal.pid == os.getpid()
        ):
            warnings.warn(
                f"{self!r} was not closed; use 'with Bucket(...)' or call close()",
                ResourceWarning,
                stacklevel=2,
            )

    # ------------------------------------------------------------------ objects

    @_same_doc(AsyncBucket.put_object)
    def put_object(
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
        return self._portal.call(
            "put_object", self._async.put_object, key, data, file=file, callback=callback,
            content_type=content_type, metadata=metadata, storage_class=storage_class,
            acl=acl, tagging=tagging, headers=headers, progress=progress,
        )

    @_same_doc(AsyncBucket.get_object)
    def get_object(
        self,
        key: str,
        *,
        byte_range: tuple[int, int | None] | None = None,
        max_size: int | None = DEFAULT_GET_MAX_SIZE,
    ) -> bytes:
        return self._portal.call("get_object", self._async.get_object, key,
                                 byte_range=byte_range, max_size=max_size)

    @_same_doc(AsyncBucket.get_object_to_file)
    def get_object_to_file(
        self, key: str, path: str | os.PathLike[str], *, progress: ProgressFn | None = None
    ) -> HeadObjectResult:
        return self._portal.call("get_object_to_file", self._async.get_object_to_file, key,
                                 path, progress=progress)

    @_same_doc(AsyncBucket.head_object)
    def head_object(self, key: str) -> HeadObjectResult:
        return self._portal.call("head_object", self._async.head_object, key)

    @_same_doc(AsyncBucket.object_exists)
    def object_exists(self, key: str) -> bool:
        return self._portal.call("object_exists", self._async.object_exists, key)

    @_same_doc(AsyncBucket.sign_post_policy)
    def sign_post_policy(
        self,
        key: str | None = None,
        *,
        key_prefix: str | None = None,
        expires: float = 3600,
        callback: Callback | None = None,
        min_size: int = 0,
        max_size: int | None = None,
        content_type: str | None = None,
        success_action_status: int | None = None,
    ) -> PostPolicy:
        return self._async.sign_post_policy(  # no I/O: no trip through the event loop
            key, key_prefix=key_prefix, expires=expires, callback=callback,
            min_size=min_size, max_size=max_size, content_type=content_type,
            success_action_status=success_action_status,
        )

    @_same_doc(AsyncBucket.delete_object)
    def delete_object(self, key: str) -> None:
        return self._portal.call("delete_object", self._async.delete_object, key)

    @_same_doc(AsyncBucket.resumable_upload)
    def resumable_upload(
        self,
        key: str,
        path: str | os.PathLike[str],
        *,
        callback: Callback | None = None,
        part_size: int | None = None,
        concurrency: int | None = None,
        checkpoint_file: str | os.PathLike[str] | None = None,
        disable_checkpoint: bool = False,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        storage_class: str | None = None,
        acl: str | None = None,
        tagging: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        progress: ProgressFn | None = None,
    ) -> PutObjectResult:
        return self._portal.call(
            "resumable_upload", self._async.resumable_upload, key, path, callback=callback,
            part_size=part_size, concurrency=concurrency, checkpoint_file=checkpoint_file,
            disable_checkpoint=disable_checkpoint, content_type=content_type,
            metadata=metadata, storage_class=storage_class, acl=acl, tagging=tagging,
            headers=headers, progress=progress,
        )

    @_same_doc(AsyncBucket.sign_url)
    def sign_url(
        self,
        method: str,
        key: str,
        expires: float,
        *,
        callback: Callback | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> str:
        return self._async.sign_url(  # no I/O: no trip through the event loop
            method, key, expires, callback=callback, headers=headers, params=params
        )

    # ------------------------------------------------------------------ multipart

    @_same_doc(AsyncBucket.initiate_multipart_upload)
    def initiate_multipart_upload(
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
        return self._portal.call(
            "initiate_multipart_upload", self._async.initiate_multipart_upload, key,
            content_type=content_type, metadata=metadata, storage_class=storage_class,
            acl=acl, tagging=tagging, headers=headers,
        )

    @_same_doc(AsyncBucket.upload_part)
    def upload_part(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        data: Data | None = None,
        *,
        progress: ProgressFn | None = None,
    ) -> UploadPartResult:
        return self._portal.call("upload_part", self._async.upload_part, key, upload_id,
                                 part_number, data, progress=progress)

    @_same_doc(AsyncBucket.complete_multipart_upload)
    def complete_multipart_upload(
        self,
        key: str,
        upload_id: str,
        parts: Iterable[UploadPartResult | PartInfo | tuple[int, str]],
        *,
        callback: Callback | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> PutObjectResult:
        return self._portal.call(
            "complete_multipart_upload", self._async.complete_multipart_upload, key,
            upload_id, parts, callback=callback, headers=headers,
        )

    @_same_doc(AsyncBucket.abort_multipart_upload)
    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        return self._portal.call("abort_multipart_upload", self._async.abort_multipart_upload,
                                 key, upload_id)

    @_same_doc(AsyncBucket.list_multipart_uploads)
    def list_multipart_uploads(self, prefix: str = "") -> list[MultipartUpload]:
        return self._portal.call("list_multipart_uploads", self._async.list_multipart_uploads,
                                 prefix)

    @_same_doc(AsyncBucket.list_parts)
    def list_parts(self, key: str, upload_id: str) -> ListPartsResult:
        return self._portal.call("list_parts", self._async.list_parts, key, upload_id)

    # ------------------------------------------------------------------ list, copy, delete

    @overload
    def list_objects(self, prefix: str | None = None, delimiter: None = None,
                     start_after: str | None = None, *, max_keys: int = 1000,
                     ) -> Iterator[ObjectInfo]: ...

    @overload
    def list_objects(self, prefix: str | None = None, delimiter: str | None = None,
                     start_after: str | None = None, *, max_keys: int = 1000,
                     ) -> Iterator[ObjectInfo | CommonPrefix]: ...

    @_same_doc(AsyncBucket.list_objects)
    def list_objects(
        self,
        prefix: str | None = None,
        delimiter: str | None = None,
        start_after: str | None = None,
        *,
        max_keys: int = 1000,
    ) -> Iterator[ObjectInfo | CommonPrefix]:
        # Each page is one call on the loop; nothing stays open between them.
        lister = ObjectLister(self._async, prefix, delimiter, start_after, max_keys)
        return SyncObjectIterator(
            lister, lambda: self._portal.call("list_objects", lister.next_page))

    @_same_doc(AsyncBucket.copy_object)
    def copy_object(
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
        return self._portal.call(
            "copy_object", self._async.copy_object, src_key, dst_key, src_bucket=src_bucket,
            metadata=metadata, metadata_directive=metadata_directive, headers=headers,
            part_size=part_size, concurrency=concurrency,
            multipart_threshold=multipart_threshold,
        )

    @_same_doc(AsyncBucket.delete_objects)
    def delete_objects(
        self, keys: Iterable[str], *, quiet: bool = True
    ) -> DeleteObjectsResult:
        return self._portal.call("delete_objects", self._async.delete_objects, keys,
                                 quiet=quiet)

    @_same_doc(AsyncBucket.append_object)
    def append_object(
        self,
        key: str,
        position: int,
        data: Data,
        *,
        headers: Mapping[str, str] | None = None,
        init_crc: int | None = None,
        progress: ProgressFn | None = None,
    ) -> AppendObjectResult:
        return self._portal.call("append_object", self._async.append_object, key, position,
                                 data, headers=headers, init_crc=init_crc, progress=progress)
