"""The async core: :class:`AsyncClient` (pools its buckets share) and :class:`AsyncBucket`."""

from __future__ import annotations

import contextlib
import enum
import os
import tempfile
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import IO, Any, Literal, overload

import anyio
import anyio.to_thread
import attrs
import httpx

from oss_callback.client._body import Body, ProgressFn, make_body
from oss_callback.client._engine import HttpEngine, build_http_client, check_user_http_client
from oss_callback.client._http import (
    USER_AGENT,
    Redact,
    Session,
    check_answer_timeout,
    closing_iter,
    parse_crc,
)
from oss_callback.client._post_policy import PostPolicy, build_post_policy
from oss_callback.client._retry import RetryPolicy
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._crc64 import crc64, crc64_combine_many
from oss_callback.protocol._credentials import Credentials, CredentialsProvider
from oss_callback.protocol._endpoint import (
    Endpoint,
    validate_bucket_name,
    validate_key,
    validate_region,
)
from oss_callback.protocol._errors import (
    CallbackError,
    InconsistentError,
    ObjectTooLargeError,
    OSSError,
    ResponseError,
    ServiceError,
    callback_failure_hint,
    make_service_error,
)
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
from oss_callback.protocol._options import upload_headers
from oss_callback.protocol._presign import presign_url
from oss_callback.protocol._xml import complete_body, parse_xml, strip_etag

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
        credentials_provider: instead of the keys: an object with ``async def
            get_credentials() -> Credentials`` (or a plain ``def``, run in a worker thread),
            for credentials that rotate (STS tokens, ECS RAM roles): asked before the first
            request, and again before a request once less than 5 minutes (or half their
            lifetime, if shorter) remain until their ``expiration``, one call for all the
            requests waiting; a request refused with 403 ``InvalidAccessKeyId``,
            ``SecurityTokenExpired`` or ``InvalidSecurityToken`` asks it again and is sent
            once more. Its failures raise :class:`CredentialsError`. See
            :class:`EnvironmentCredentialsProvider`, :class:`AlibabaCloudCredentialsProvider`.
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
        TypeError: ``http_client`` combined with options that configure the SDK's own;
            ``credentials_provider`` together with keys, or without ``get_credentials``.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        *,
        security_token: str | None = None,
        credentials_provider: CredentialsProvider | None = None,
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
        credentials: Credentials | None = None
        if credentials_provider is None:
            credentials = Credentials.resolve(access_key_id, access_key_secret, security_token)
        else:
            _check_provider(credentials_provider, access_key_id, access_key_secret,
                            security_token)
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
            credentials_provider=credentials_provider,
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
        session = self._session
        creds = session.cached_credentials()
        who = f"access_key_id={creds.access_key_id!r}" if creds is not None else ""
        if session.credentials_provider is not None:
            who = f"credentials_provider={type(session.credentials_provider).__name__} " + (
                who or "access_key_id=None")
        return (
            f"<AsyncClient endpoint={self.endpoint!r} region={self.region!r} {who}"
            f"{' closed' if self.is_closed else ''}>"
        )

    async def get_credentials(self) -> Credentials:
        """The credentials requests are signed with now, asking the ``credentials_provider``
        first when it has not been asked yet or its credentials are due for renewal (as a
        request would).

        Call it before the synchronous signing helpers (:meth:`AsyncBucket.sign_post_policy`,
        :meth:`AsyncBucket.sign_url`) when using a provider: they can't ask it themselves.

        Raises:
            CredentialsError: the provider failed or returned something unusable.
        """
        return await self._check_open().request_credentials()

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


def _check_provider(provider: object, *keys: str | None) -> None:
    """A provider comes alone and has ``get_credentials`` (else ``TypeError``)."""
    if any(k is not None for k in keys):
        raise TypeError(
            "pass either credentials_provider= or access_key_id/access_key_secret/"
            "security_token, not both"
        )
    if not callable(getattr(provider, "get_credentials", None)):
        raise TypeError(
            "credentials_provider must have a get_credentials() method (async or plain) "
            f"returning oss_callback.Credentials; {type(provider).__name__} has none"
        )


def _on_203(key: str, callback: Callback, *, upload_id: str | None = None,
            size: int | None = None) -> Any:
    def build(response: httpx.Response, data: bytes, redact: Redact) -> OSSError:
        result = _put_result(key, response, None, callback_status=203, upload_id=upload_id,
                             size=size, redact=redact)
        return make_service_error(
            203, response.headers, data, result=result, redact=redact,
            callback_hint=lambda message: callback_failure_hint(
                callback.url, callback.sends_sni, message),
        )

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
        h = _merge_headers(upload_headers(
            names, content_type=content_type, metadata=metadata, storage_class=storage_class,
            acl=acl, tagging=tagging, headers=headers,
        ), callback)
        body = make_body(data, file)
        response, content = await self._session.request(
            "PUT", self.name, key, headers=h, body=body, progress=progress,
            on_203=_on_203(key, callback, size=body.size) if callback else None,
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
            CredentialsError: with a ``credentials_provider``, when no fresh credentials
                of it are cached (this method is synchronous and can't ask it): call
                ``await client.get_credentials()`` (or make any request) first.
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
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
        storage_class: str | None = None,
        acl: str | None = None,
        tagging: Mapping[str, str] | None = None,
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
                or ``~/.local/state/oss_callback/checkpoints``), one file per bucket, key and
                local file. A valid checkpoint is resumed after re-checking (CRC-64) the
                parts OSS holds against the file: changed parts are sent again, so the object
                is always the file as it is now. It belongs to the upload, not the endpoint:
                a run through another endpoint of the same bucket (internal or public,
                accelerate, a CNAME, a proxy) continues the same multipart upload (or starts
                a new one if OSS does not know it there).
            disable_checkpoint: no checkpoint is read or written; a failed upload is aborted.
            content_type: as for :meth:`put_object`, but guessed (as oss2's
                ``resumable_upload`` does) from the key first, then from the file name.
            metadata, storage_class, acl, tagging: as for :meth:`put_object` (sent on
                Initiate; ``acl`` on Complete too, as oss2 does). They are part of the
                checkpoint: a run with other values restarts the upload cleanly.
            headers: other headers for the object (sent on Initiate; also checkpointed).
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
        from oss_callback.client._resumable import resumable_upload

        return await resumable_upload(
            self, key, path, callback=callback, part_size=part_size, concurrency=concurrency,
            checkpoint_file=checkpoint_file, disable_checkpoint=disable_checkpoint,
            content_type=content_type, metadata=metadata, storage_class=storage_class, acl=acl,
            tagging=tagging, headers=headers, progress=progress,
        )

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
        """A presigned URL: anyone holding it can make this one request until it expires.

        No request is made. The URL is signed with the client's signature version (V1 or
        V4) and credentials; an STS token goes into it (``security-token`` for V1,
        ``x-oss-security-token`` for V4). With ``callback=`` a device can upload straight to
        OSS with a plain HTTP PUT: OSS stores the object, calls your callback server, and
        answers the PUT with the server's reply (or a 203 if the callback failed).

        Args:
            method: ``"GET"``, ``"PUT"``, ``"HEAD"``, ``"POST"`` or ``"DELETE"``.
            key: the object key.
            expires: seconds the URL stays valid (whole seconds; V4: at most 7 days).
            callback: for a PUT (or POST): sent as the ``callback``/``callback-var`` query
                parameters, signed, so the holder of the URL can't change it.
            headers: headers the request must be sent with, signed: ``Content-Type``,
                ``Content-MD5`` and ``x-oss-*`` (e.g. ``x-oss-meta-*``) always; with V4 any
                other (e.g. ``Cache-Control``) too, as an additional signed header. V1
                can't sign other headers: they are not part of the signature. The request
                fails with ``SignatureDoesNotMatch`` unless it sends exactly these values.
            params: query parameters to add (``""`` for a bare name, e.g.
                ``{"response-content-type": "text/plain"}``); V4 signs all of them, V1 only
                OSS's sub-resources (as OSS requires).

        Raises:
            ValueError: an unknown method, a bad key or ``expires`` (V4: over 7 days), a
                header or parameter the signature sets itself (``Date``,
                ``Authorization``, ``Expires``, ``x-oss-date``...), a callback on a
                GET/HEAD/DELETE, or a callback both in ``callback=`` and in
                ``headers``/``params``.
        """
        session = self._session
        return presign_url(
            method, self.name, key, expires,
            credentials=session.credentials,
            now=session.now(), endpoint=session.endpoint,
            signature_version=session.signature_version, region=session.region,
            headers=headers, params=params, callback=callback,
        )

    # ------------------------------------------------------------------ multipart

    async def initiate_multipart_upload(
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
        """Start a multipart upload; the options and ``headers`` apply to the final object.

        The typed options are those of :meth:`put_object`; without ``content_type`` (or a
        ``Content-Type`` header) it is guessed from the key, as oss2 does.
        """
        validate_key(key)
        h = upload_headers(key, content_type=content_type, metadata=metadata,
                           storage_class=storage_class, acl=acl, tagging=tagging,
                           headers=headers)
        response, content = await self._session.request(
            "POST", self.name, key, query=[("uploads", "")], headers=_merge_headers(h, None),
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
                on_203=(_on_203(key, callback, upload_id=upload_id, size=size)
                        if callback else None),
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

    async def list_multipart_uploads(self, prefix: str = "") -> list[MultipartUpload]:
        """``(key, upload_id)`` of every unfinished multipart upload (optionally by prefix).

        Each pair is a :class:`MultipartUpload`, which also says when the upload was
        ``initiated``. Useful to find uploads left behind by crashed runs (their parts are
        billed); the ``oss-callback abort-uploads`` command lists and aborts them.
        """
        uploads: list[MultipartUpload] = []
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
                uploads.append(MultipartUpload(u.key_text("Key", "ListMultipartUploads"),
                                               u.required("UploadId", "ListMultipartUploads"),
                                               _iso_time(u.text("Initiated"))))
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

    # ------------------------------------------------------------------ list, copy, delete

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
        from oss_callback.client._operations import ObjectLister

        return ObjectLister(self, prefix, delimiter, start_after, max_keys)

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
        from oss_callback.client._operations import copy_object

        return await copy_object(
            self, src_key, dst_key, src_bucket=src_bucket, metadata=metadata,
            metadata_directive=metadata_directive, headers=headers, part_size=part_size,
            concurrency=concurrency, multipart_threshold=multipart_threshold,
        )

    async def delete_objects(
        self, keys: Iterable[str], *, quiet: bool = True
    ) -> DeleteObjectsResult:
        """Delete many objects: DeleteMultipleObjects, 1,000 keys a request.

        As on OSS, a key that doesn't exist counts as deleted, never as an error. Keys with
        control characters that XML can't carry are deleted one by one (DeleteObject).

        Args:
            keys: the keys (any iterable; not a single str).
            quiet: OSS's quiet mode: it answers with failures only (the result's
                ``deleted`` is then every key sent minus ``errors``); ``False``: it names
                every key it deleted.

        Returns:
            :class:`DeleteObjectsResult`: ``deleted`` keys and per-key ``errors``.

        Raises:
            ServiceError: a whole request refused (e.g. ``AccessDenied``); batches before
                it stay deleted.
        """
        from oss_callback.client._operations import delete_objects

        return await delete_objects(self, keys, quiet=quiet)

    async def append_object(
        self,
        key: str,
        position: int,
        data: bytes | str | IO[bytes] | Iterable[bytes] | Any,
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
        from oss_callback.client._operations import append_object

        return await append_object(self, key, position, data, headers=headers,
                                   init_crc=init_crc, progress=progress)


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


def _iso_time(text: str | None) -> datetime | None:
    """``2012-02-23T04:18:23.000Z`` (OSS's listing times) -> aware UTC; ``None`` if not."""
    try:
        when = datetime.fromisoformat((text or "").strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


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
