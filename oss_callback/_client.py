"""The async core: :class:`AsyncClient` (pools its buckets share) and :class:`AsyncBucket`."""

from __future__ import annotations

import contextlib
import enum
import os
import tempfile
import warnings
from collections.abc import AsyncGenerator, Iterable, Mapping
from types import TracebackType
from typing import IO, Any

import anyio
import anyio.to_thread
import attrs
import httpx

from ._body import Body, ProgressFn, make_body
from ._callback import Callback
from ._crc64 import crc64, crc64_combine_many
from ._credentials import Credentials
from ._endpoint import Endpoint, validate_bucket_name, validate_key, validate_region
from ._engine import HttpEngine, build_http_client, check_user_http_client
from ._errors import (
    CallbackError,
    InconsistentError,
    ObjectTooLargeError,
    OSSError,
    ResponseError,
    ServiceError,
    make_service_error,
)
from ._http import USER_AGENT, Redact, Session, check_answer_timeout, closing_iter, parse_crc
from ._models import (
    HeadObjectResult,
    InitiateMultipartUploadResult,
    ListPartsResult,
    PartInfo,
    PutObjectResult,
    UploadPartResult,
)
from ._post_policy import PostPolicy, build_post_policy
from ._retry import RetryPolicy
from ._xml import complete_body, parse_xml, strip_etag

__all__ = ["DEFAULT_GET_MAX_SIZE", "AsyncBucket", "AsyncClient"]

ENV_ENDPOINT = "OSS_ENDPOINT"
ENV_REGION = "OSS_REGION"
_SIGNATURE_VERSIONS = ("v1", "v4")
#: get_object's default ``max_size``: it reads into memory (and briefly holds twice that
#: while joining the chunks), so an object this big belongs in get_object_to_file; a
#: mistaken call on a multi-GB object fails fast with a catchable error instead of
#: exhausting the process's memory. Pass ``max_size=None`` to lift it.
DEFAULT_GET_MAX_SIZE = 256 * 1024 * 1024


class _State(enum.Enum):
    OPEN = 1
    CLOSED = 2


class AsyncClient:
    """An async OSS client: one :class:`httpx.AsyncClient` shared by its buckets.

    Every request (uploads, parts, downloads, everything) goes through that one httpx client,
    so HTTP is configured as in httpx, in one place: pass your own with ``http_client=``
    (proxies, ``verify``, client certificates, limits, event hooks, a transport), or let
    the SDK build one. The SDK's own client has ``trust_env=True``: it honours
    ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``/``NO_PROXY`` and
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` exactly as httpx does, with one trust store for every
    request, and ``respx.mock`` intercepts its requests as in any httpx program.

    Args:
        endpoint: ``https://oss-cn-hangzhou.aliyuncs.com``, ``http://127.0.0.1:9000`` or a bare
            host (https assumed); ``None`` reads ``OSS_ENDPOINT``.
        access_key_id: ``None`` reads ``OSS_ACCESS_KEY_ID``.
        access_key_secret: ``None`` reads ``OSS_ACCESS_KEY_SECRET``.
        security_token: the STS token; ``None`` reads ``OSS_SESSION_TOKEN`` (optional).
        region: e.g. ``cn-hangzhou``; derived from OSS endpoints, else ``OSS_REGION``.
            V4 needs it.
        signature_version: ``"v4"`` (default) or ``"v1"``.
        path_style: force path-style (``True``) or virtual-hosted (``False``) addressing;
            ``None`` picks path-style for IP/localhost endpoints, virtual-hosted otherwise.
        timeout: for the SDK-built client: an :class:`httpx.Timeout` or seconds (default:
            60 s per read/write, 10 s to connect, no limit waiting for a connection).
        answer_timeout: seconds each attempt gets for the answer's head, in total: to
            connect, and then, once the request body is sent (at once for a bodiless
            request), as many again for the complete response head. httpx's read timeout
            restarts with every byte, so without this a server (or proxy) that drips its
            answer, or ``100 Continue`` lines, a byte at a time holds a request for ever.
            Sending the body is not under it (the write timeout catches a stalled upload),
            nor is reading a download's body (the read timeout catches a stall), nor
            waiting for a free connection of the pool (with httpx's own transport; other
            transports start the clock when the request is handed over). When it runs out
            the attempt fails with :class:`RequestError` ("no answer came within N s"),
            retried like a timeout. ``None`` (default): twice the httpx client's read
            timeout (120 s for the SDK's own; yours too with ``http_client=``; no deadline
            if reads have no timeout), so a silent server still ends in the read timeout;
            ``math.inf``: no deadline.
        retry: the :class:`RetryPolicy` (default: 3 attempts, jittered backoff).
        max_connections: for the SDK-built client: connections to OSS (default 8).
            Requests beyond it wait for one to be free (an upload's parts included), so
            keep it at least the ``concurrency`` of the uploads running at once.
        http_client: your own :class:`httpx.AsyncClient`: every request goes through it.
            The SDK never closes it (close it yourself, after this client). Don't set
            ``auth``, ``params`` or ``x-oss-*``/``Content-*`` default headers on it (they
            would break or bypass the signature; the SDK refuses them). Not together with
            ``timeout``, ``max_connections``, ``transport`` or ``http_engine``: configure it.
        http_engine: for the SDK-built client: ``"httpx"`` (default: httpx's own transport,
            the one respx mocks) or ``"aiohttp"``: aiohttp under httpx through
            `httpx-aiohttp <https://pypi.org/project/httpx-aiohttp/>`_
            (``pip install 'oss-callback[aiohttp]'``), faster for many small objects; asyncio
            only, and respx does not see its requests. Proxies from the environment still
            apply (those requests go through httpx's transport).
        transport: for the SDK-built client: an httpx transport (tests:
            :class:`httpx.MockTransport`), as ``httpx.AsyncClient(transport=...)``.

    Use it as ``async with AsyncClient(...) as client:`` or call :meth:`aclose`.

    Raises:
        ValueError: bad endpoint, missing credentials, V4 without a derivable region, or
            a missing ``http_engine`` extra.
        TypeError: ``http_client`` combined with options that configure the SDK's own.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        *,
        security_token: str | None = None,
        region: str | None = None,
        signature_version: str = "v4",
        path_style: bool | None = None,
        timeout: httpx.Timeout | float | None = None,
        answer_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        max_connections: int | None = None,
        http_client: httpx.AsyncClient | None = None,
        http_engine: HttpEngine = "httpx",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if signature_version not in _SIGNATURE_VERSIONS:
            raise ValueError(
                f"signature_version must be 'v4' or 'v1', got {signature_version!r}"
            )
        if endpoint is None:
            endpoint = os.environ.get(ENV_ENDPOINT)
            if not endpoint:
                raise ValueError(
                    "no endpoint: pass endpoint='https://oss-<region>.aliyuncs.com' or set "
                    f"${ENV_ENDPOINT}"
                )
        parsed = Endpoint.parse(endpoint, region=region, path_style=path_style)
        if parsed.region is None and os.environ.get(ENV_REGION):
            parsed = attrs.evolve(parsed, region=validate_region(os.environ[ENV_REGION]))
        if signature_version == "v4" and not parsed.region:
            raise ValueError(
                f"V4 signing needs a region and none can be derived from {endpoint!r}: pass "
                "region='cn-hangzhou' (or whichever region the bucket is in), set "
                f"${ENV_REGION}, or use signature_version='v1'"
            )
        credentials = Credentials.resolve(access_key_id, access_key_secret, security_token)
        answer_timeout = check_answer_timeout(answer_timeout)
        gate: anyio.Semaphore | None = None
        user_agent = USER_AGENT
        if http_client is not None:
            check_user_http_client(http_client, timeout=timeout,
                                   max_connections=max_connections, transport=transport,
                                   http_engine=http_engine)
            http = http_client
        else:
            built = build_http_client(timeout=timeout, max_connections=max_connections,
                                      transport=transport, http_engine=http_engine)
            http, gate, user_agent = built.client, built.gate, built.user_agent
        self._owns_http = http_client is None
        self._session = Session(
            http=http,
            endpoint=parsed,
            credentials=credentials,
            signature_version=signature_version,
            region=parsed.region,
            retry=retry or RetryPolicy(),
            gate=gate,
            user_agent=user_agent,
            answer_timeout=answer_timeout,
        )
        self._state = _State.OPEN

    @property
    def endpoint(self) -> str:
        """The endpoint as ``scheme://host[:port]``."""
        return str(self._session.endpoint)

    @property
    def region(self) -> str | None:
        """The region used for V4 signing."""
        return self._session.region

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._state is _State.CLOSED

    def __repr__(self) -> str:
        return (
            f"<AsyncClient endpoint={self.endpoint!r} region={self.region!r} "
            f"access_key_id={self._session.credentials.access_key_id!r}"
            f"{' closed' if self.is_closed else ''}>"
        )

    def get_bucket(self, name: str) -> AsyncBucket:
        """An :class:`AsyncBucket` that shares this client's httpx client."""
        return AsyncBucket(name, client=self)

    def _check_open(self) -> Session:
        if self._state is _State.CLOSED:
            raise RuntimeError(
                "this AsyncClient is closed; create a new one (or keep using it inside its "
                "'async with' block)"
            )
        return self._session

    @property
    def http_client(self) -> httpx.AsyncClient:
        """The :class:`httpx.AsyncClient` every request goes through (yours or the SDK's)."""
        return self._session.http

    async def aclose(self) -> None:
        """Close the SDK-built httpx client (a client passed as ``http_client`` stays open).

        Idempotent.
        """
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._owns_http:
            with anyio.move_on_after(10, shield=True):
                await self._session.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if getattr(self, "_state", _State.CLOSED) is _State.OPEN:
            warnings.warn(
                f"{self!r} was not closed; use 'async with' or call aclose()",
                ResourceWarning,
                stacklevel=2,
            )


def _on_203(key: str, *, upload_id: str | None = None, size: int | None = None) -> Any:
    def build(response: httpx.Response, data: bytes, redact: Redact) -> OSSError:
        result = _put_result(key, response, None, callback_status=203, upload_id=upload_id,
                             size=size, redact=redact)
        return make_service_error(203, response.headers, data, result=result, redact=redact)

    return build


def _require_etag(response: httpx.Response, what: str, redact: Redact) -> None:
    if not response.headers.get("etag"):
        content_type = redact(response.headers.get("content-type", "no content type"))
        raise ResponseError(
            f"the {what} answer has no ETag (HTTP {response.status_code}, "
            f"{content_type[:100]}): is the endpoint really OSS?"
        )


def _require_oss(response: httpx.Response, what: str) -> None:
    if not response.headers.get("etag") and not response.headers.get("x-oss-request-id"):
        raise ResponseError(
            f"the {what} answer has neither ETag nor x-oss-request-id: is the endpoint "
            "really OSS?"
        )


def _put_result(
    key: str,
    response: httpx.Response,
    callback_body: bytes | None,
    *,
    callback_status: int | None,
    upload_id: str | None = None,
    size: int | None = None,
    etag: str | None = None,
    redact: Redact | None = None,
) -> PutObjectResult:
    h = response.headers

    def text(name: str) -> str | None:
        value = h.get(name)
        return redact(value) if value and redact is not None else value

    return PutObjectResult(
        key=key,
        etag=etag or strip_etag(text("etag")),
        crc64=parse_crc(h.get("x-oss-hash-crc64ecma")),
        request_id=text("x-oss-request-id"),
        version_id=text("x-oss-version-id"),
        callback_status=callback_status,
        callback_body=callback_body,
        upload_id=upload_id,
        size=size,
    )


def _merge_headers(
    headers: Mapping[str, str] | None, callback: Callback | None
) -> dict[str, str]:
    merged = {k.lower(): str(v) for k, v in (headers or {}).items()}
    if callback is not None:
        if not isinstance(callback, Callback):
            raise TypeError(
                f"callback must be an oss_callback.Callback, got {type(callback).__name__}"
            )
        if "x-oss-callback" in merged:
            raise ValueError("pass the callback as callback=..., not as an x-oss-callback header")
        merged.update(callback.to_headers())
    return merged


class AsyncBucket:
    """Operations on one bucket.

    Get one from :meth:`AsyncClient.get_bucket` (shares the client's pool), or build it
    directly with the same arguments as :class:`AsyncClient` plus the bucket name; it then
    owns its client and is closed with ``async with``/:meth:`aclose`.
    """

    def __init__(
        self,
        name: str,
        endpoint: str | None = None,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        *,
        client: AsyncClient | None = None,
        **client_kwargs: Any,
    ) -> None:
        self.name = validate_bucket_name(name)
        if client is None:
            client = AsyncClient(endpoint, access_key_id, access_key_secret, **client_kwargs)
            self._owns_client = True
        else:
            if endpoint is not None or access_key_id is not None or client_kwargs:
                raise TypeError("pass either client= or the client's arguments, not both")
            self._owns_client = False
        self.client = client

    def __repr__(self) -> str:
        return f"<AsyncBucket {self.name!r} at {self.client.endpoint!r}>"

    @property
    def _session(self) -> Session:
        return self.client._check_open()

    async def aclose(self) -> None:
        """Close the client if this bucket owns it (a no-op for ``client.get_bucket``)."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncBucket:
        self.client._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ objects

    async def put_object(
        self,
        key: str,
        data: bytes | str | IO[bytes] | Iterable[bytes] | Any = None,
        *,
        file: str | os.PathLike[str] | None = None,
        callback: Callback | None = None,
        headers: Mapping[str, str] | None = None,
        progress: ProgressFn | None = None,
    ) -> PutObjectResult:
        """Upload one object in a single PutObject request, optionally with a callback.

        Args:
            key: the object key.
            data: bytes, str (UTF-8), a binary file object, or a sync/async iterable of bytes.
            file: a path to upload instead of ``data`` (streamed, never read whole).
            callback: an upload callback; its server's reply is ``result.callback_body``.
            headers: extra request headers (``Content-Type``, ``x-oss-meta-*``, ...).
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
        """
        validate_key(key)
        h = _merge_headers(headers, callback)
        body = make_body(data, file)
        response, content = await self._session.request(
            "PUT", self.name, key, headers=h, body=body, progress=progress,
            on_203=_on_203(key, size=body.size) if callback else None,
        )
        _require_etag(response, "PutObject", self._session.redact)
        return _put_result(
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
        _require_oss(response, "GetObject")
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
            _require_oss(response, "GetObject")
            await anyio.to_thread.run_sync(_finish_file, f, tmp, target)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_discard_file, f, tmp)
            raise
        return _head_result(key, response.headers, size=done)

    async def head_object(self, key: str) -> HeadObjectResult:
        """An object's metadata: size, etag, crc64, content type, ``x-oss-meta-*``."""
        validate_key(key)
        response, _ = await self._session.request("HEAD", self.name, key, max_body=0)
        _require_oss(response, "HeadObject")
        return _head_result(key, response.headers)

    async def object_exists(self, key: str) -> bool:
        """``True`` if the object exists; ``False`` on ``NoSuchKey``; other errors raise."""
        try:
            await self.head_object(key)
        except ServiceError as e:
            if e.status == 404 and e.code in ("NoSuchKey", ""):
                return False
            raise
        return True

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
        """Sign a form upload for a browser (PostObject): no request is made.

        The browser POSTs ``policy.fields`` and then the file, as the last field, named
        ``file``, to ``policy.url`` (``multipart/form-data``). OSS rejects the upload if the
        browser changes the key (or leaves ``key_prefix``), the callback or its variables,
        the Content-Type, or sends a file outside ``min_size``..``max_size`` bytes.

        Args:
            key: the exact object key; or
            key_prefix: a prefix: the browser's file name is appended (``${filename}``).
            expires: seconds the policy stays valid (at most 7 days).
            callback: OSS calls it after storing the file, as for :meth:`put_object`; the
                browser receives the callback server's answer (or a 203 if it fails).
            min_size: smallest file accepted, in bytes.
            max_size: largest file accepted, in bytes (``None``: up to OSS's 5 GB).
            content_type: the object's Content-Type (pinned in the policy).
            success_action_status: what OSS answers without a callback: 204 (OSS's
                default), 200, or 201 with an XML body.

        Raises:
            ValueError: both or neither of ``key``/``key_prefix``, a bad ``expires``,
                size range or status.
        """
        if key is not None:
            validate_key(key)
        return build_post_policy(
            self._session, self.name, key=key, key_prefix=key_prefix, expires=expires,
            callback=callback, min_size=min_size, max_size=max_size,
            content_type=content_type, success_action_status=success_action_status,
        )

    async def delete_object(self, key: str) -> None:
        """Delete an object (no error if it doesn't exist, as OSS does)."""
        validate_key(key)
        await self._session.request("DELETE", self.name, key, ok=(204, 200))

    async def resumable_upload(
        self,
        key: str,
        path: str | os.PathLike[str],
        *,
        callback: Callback | None = None,
        part_size: int | None = None,
        concurrency: int | None = None,
        checkpoint_file: str | os.PathLike[str] | None = None,
        disable_checkpoint: bool = False,
        headers: Mapping[str, str] | None = None,
        progress: ProgressFn | None = None,
    ) -> PutObjectResult:
        """Upload a file in concurrent parts, resumable after a crash; callback on Complete.

        Files smaller than one part go through a single :meth:`put_object` (with the
        callback). Larger files: InitiateMultipartUpload, ``concurrency`` UploadPart requests
        in flight (each part read from disk in 2 MiB chunks in a worker thread, its CRC-64
        verified), a checkpoint written atomically after every part, then
        CompleteMultipartUpload carrying the callback, and the object's CRC-64 checked
        against the combination of all parts' (resumed ones included).

        Args:
            key: the object key.
            path: the local file.
            callback: attached to CompleteMultipartUpload (or the single PutObject).
            part_size: bytes per part (100 KiB..5 GiB); ``None`` picks 8 MiB, grown so the file
                never needs more than 10,000 parts.
            concurrency: parts in flight (default 4), at most the client's connections
                (``max_connections``, 8 by default; more parts wait for a free one). Memory
                stays around ``concurrency x 4 MiB`` (parts are streamed from the file in
                2 MiB reads, not buffered).
            checkpoint_file: where to record progress; ``None`` uses a per-user state folder
                (``$OSS_CALLBACK_STATE_DIR``, else ``$XDG_STATE_HOME/oss_callback/checkpoints``
                or ``~/.local/state/oss_callback/checkpoints``). A valid checkpoint is resumed
                after re-checking (CRC-64) the parts OSS holds against the file: changed parts
                are sent again, so the object is always the file as it is now.
            disable_checkpoint: no checkpoint is read or written; a failed upload is aborted.
            headers: ``Content-Type``, ``x-oss-meta-*``... for the object (sent on Initiate).
            progress: ``progress(bytes_done, total)``, byte-accurate across parts; starts at
                the bytes already uploaded when resuming; rewinds if a part is retried; never
                exceeds ``total``. Called on the event loop thread; if it raises, the upload
                stops with that exception (resumable from the checkpoint).

        Returns:
            The stored object's :class:`PutObjectResult`, with ``upload_id`` set
            (``None`` when a single PutObject was used). ``recovered=True`` when an earlier
            run's CompleteMultipartUpload had gone through but its answer was lost (proven
            by the multipart ETag, size, CRC-64 and time): nothing is sent again, and
            ``callback_status``/``callback_body`` are ``None``.

        Raises:
            CallbackError: the object is stored but the callback failed; the checkpoint is
                removed (a rerun does not complete again).
            CallbackUnknownError: with a callback, the recovered case above: the object is
                stored (``e.result``), but the lost answer hid how the callback went.
            CheckpointError: the checkpoint is corrupt, foreign or from a newer version
                (nothing was touched; the message says what to do).
            FileChangedError: the file's size, mtime, ctime or inode changed during the
                upload (nothing is completed; a rerun re-checks the parts OSS holds and sends
                only changed and missing ones; a changed size restarts cleanly).
            InconsistentError: a CRC-64 mismatch (the wrong object is deleted).
            ServiceError, RequestError: as for :meth:`put_object`; the checkpoint is kept.

        Warning:
            With ``disable_checkpoint=False`` a failed upload keeps its parts on OSS (billed
            as storage) until it is resumed or aborted; configure a lifecycle rule that
            aborts incomplete multipart uploads after some days.
        """
        from ._resumable import resumable_upload

        return await resumable_upload(
            self, key, path, callback=callback, part_size=part_size, concurrency=concurrency,
            checkpoint_file=checkpoint_file, disable_checkpoint=disable_checkpoint,
            headers=headers, progress=progress,
        )

    # ------------------------------------------------------------------ multipart

    async def initiate_multipart_upload(
        self, key: str, *, headers: Mapping[str, str] | None = None
    ) -> InitiateMultipartUploadResult:
        """Start a multipart upload; ``headers`` (Content-Type, ``x-oss-meta-*``) apply to
        the final object."""
        validate_key(key)
        response, content = await self._session.request(
            "POST", self.name, key, query=[("uploads", "")], headers=_merge_headers(headers, None),
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
        data: bytes | str | IO[bytes] | Iterable[bytes] | Any = None,
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
        _require_etag(response, "UploadPart", self._session.redact)
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
        h = _merge_headers(headers, callback)
        h["content-type"] = h.get("content-type", "application/xml")
        try:
            response, content = await self._session.request(
                "POST", self.name, key, query=[("uploadId", upload_id)], headers=h,
                body=complete_body(numbered),
                on_203=_on_203(key, upload_id=upload_id, size=size) if callback else None,
            )
        except CallbackError as e:
            # Stored, callback failed: the object's integrity still matters most.
            if crcs is not None and e.result.crc64 is not None:
                _check_combined(key, crcs, e.result)
            raise
        _require_etag(response, "CompleteMultipartUpload", self._session.redact)
        etag = None
        if not callback:
            node = parse_xml(content, "CompleteMultipartUploadResult", "CompleteMultipartUpload")
            etag = strip_etag(node.text("ETag"))
        result = _put_result(
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

    async def list_multipart_uploads(self, prefix: str = "") -> list[tuple[str, str]]:
        """``(key, upload_id)`` of every unfinished multipart upload (optionally by prefix).

        Useful to find uploads left behind by crashed runs (their parts are billed).
        """
        uploads: list[tuple[str, str]] = []
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
                uploads.append((u.key_text("Key", "ListMultipartUploads"),
                                u.required("UploadId", "ListMultipartUploads")))
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


def _check_combined(key: str, crcs: list[tuple[int, int]], result: PutObjectResult) -> None:
    expected = crc64_combine_many(crcs)
    if expected != result.crc64:
        raise InconsistentError(
            f"CRC-64 mismatch after CompleteMultipartUpload of {key!r}: parts combine "
            f"to {expected}, OSS reports {result.crc64} "
            f"(request_id={result.request_id}); upload the object again",
            client_crc=expected, server_crc=result.crc64 or 0, request_id=result.request_id,
        )


def _part_number(part: UploadPartResult | PartInfo | tuple[int, str]) -> int:
    return part[0] if isinstance(part, tuple) else part.part_number


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


def _head_result(key: str, headers: httpx.Headers, size: int | None = None) -> HeadObjectResult:
    return HeadObjectResult(
        key=key,
        size=size if size is not None else int(headers.get("content-length", "0")),
        etag=strip_etag(headers.get("etag")),
        crc64=parse_crc(headers.get("x-oss-hash-crc64ecma")),
        content_type=headers.get("content-type"),
        last_modified=headers.get("last-modified"),
        version_id=headers.get("x-oss-version-id"),
        request_id=headers.get("x-oss-request-id"),
        object_type=headers.get("x-oss-object-type"),
        metadata={k[len("x-oss-meta-"):]: v for k, v in headers.items()
                  if k.lower().startswith("x-oss-meta-")},
        headers=dict(headers.items()),
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
