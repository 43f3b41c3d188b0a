"""The async core: :class:`AsyncClient` (pools its buckets share) and :class:`AsyncBucket`.

The two share this module because each makes the other: ``client.get_bucket(name)`` returns
an AsyncBucket, and an AsyncBucket built with the client's arguments builds its AsyncClient.
AsyncBucket's operations live in one module per family, as the mixins it is composed of
(:mod:`oss_callback.client._base` says why mixins); its class body names each operation
again, so that its own namespace is its whole API and shows where each one lives.
"""

from __future__ import annotations

import enum
import os
import warnings
from types import TracebackType
from typing import Any

import anyio
import attrs
import httpx

from oss_callback.client._append import AppendMixin
from oss_callback.client._batch_delete import BatchDeleteMixin
from oss_callback.client._copy import CopyMixin
from oss_callback.client._engine import HttpEngine, build_http_client, check_user_http_client
from oss_callback.client._http import USER_AGENT, Session
from oss_callback.client._listing import ListingMixin
from oss_callback.client._multipart import MultipartMixin
from oss_callback.client._objects import ObjectsMixin
from oss_callback.client._presigned import PresignMixin
from oss_callback.client._resumable import ResumableMixin
from oss_callback.client._retry import RetryPolicy
from oss_callback.client._transmit import check_answer_timeout
from oss_callback.protocol._credentials import Credentials, CredentialsProvider
from oss_callback.protocol._endpoint import Endpoint, validate_bucket_name, validate_region
from oss_callback.protocol._signing import SignatureVersion

__all__ = ["AsyncBucket", "AsyncClient"]

ENV_ENDPOINT = "OSS_ENDPOINT"
ENV_REGION = "OSS_REGION"
_SIGNATURE_VERSIONS = ("v1", "v4")


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


class AsyncBucket(
    ResumableMixin, CopyMixin, AppendMixin, BatchDeleteMixin, ListingMixin, PresignMixin
):
    """Operations on one bucket.

    Get one from :meth:`AsyncClient.get_bucket` (shares the client's pool), or build it
    directly with the same arguments as :class:`AsyncClient` plus the bucket name; it then
    owns its client and is closed with ``async with``/:meth:`aclose`.
    """

    client: AsyncClient

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

    # Every operation, from the module of its family (they are inherited; naming them here
    # makes vars(AsyncBucket) the whole API, which the sync facade's tests compare with
    # Bucket's, and shows where each one lives).
    # _objects: one object, one request each
    put_object = ObjectsMixin.put_object
    get_object = ObjectsMixin.get_object
    get_object_to_file = ObjectsMixin.get_object_to_file
    head_object = ObjectsMixin.head_object
    object_exists = ObjectsMixin.object_exists
    delete_object = ObjectsMixin.delete_object
    # _presigned: signed for someone else to send, no request made
    sign_post_policy = PresignMixin.sign_post_policy
    sign_url = PresignMixin.sign_url
    # _resumable: concurrent parts, a checkpoint, the callback on Complete
    resumable_upload = ResumableMixin.resumable_upload
    # _multipart: the multipart primitives
    initiate_multipart_upload = MultipartMixin.initiate_multipart_upload
    upload_part = MultipartMixin.upload_part
    complete_multipart_upload = MultipartMixin.complete_multipart_upload
    abort_multipart_upload = MultipartMixin.abort_multipart_upload
    list_multipart_uploads = MultipartMixin.list_multipart_uploads
    list_parts = MultipartMixin.list_parts
    # _listing, _copy, _batch_delete, _append
    list_objects = ListingMixin.list_objects
    copy_object = CopyMixin.copy_object
    delete_objects = BatchDeleteMixin.delete_objects
    append_object = AppendMixin.append_object
