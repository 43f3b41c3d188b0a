"""One signed, retried OSS request: signing, error mapping and CRC checks in one place.

Every request goes through one :class:`httpx.AsyncClient` (``client.send``), so whatever is
configured on it applies to every request: proxies, TLS, limits, event hooks, transports,
respx. Only this module sends, one attempt at a time through
:mod:`~oss_callback.client._transmit` (which keeps the answer deadline); no ``httpx``
exception escapes it (they become :class:`RequestError`, chained with ``from``, worded by
:mod:`~oss_callback.client._transport_errors`).

Every text taken from an answer is cleaned (:class:`Redactor`) of the credentials and the
attempt's signature before an error message is made of it.

Credentials are fixed, or come from a ``credentials_provider``, renewed in time and asked
once for all concurrent requests (:mod:`~oss_callback.client._credentials_cache`). A
request that OSS answers 403 ``InvalidAccessKeyId``, ``SecurityTokenExpired`` or
``InvalidSecurityToken`` (credentials revoked early) asks the provider once more and,
given different credentials, is sent again once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import platform
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import anyio
import httpx

from oss_callback._version import __version__
from oss_callback.client._body import Body, ProgressFn
from oss_callback.client._credentials_cache import REJECTED_CREDENTIALS, CredentialsCache
from oss_callback.client._retry import RetryPolicy
from oss_callback.client._transmit import Transmitter
from oss_callback.client._transport_errors import raise_request_error, raise_transport_error
from oss_callback.protocol._credentials import Credentials, CredentialsProvider
from oss_callback.protocol._endpoint import Endpoint
from oss_callback.protocol._error_answers import MAX_ERROR_BODY, make_service_error
from oss_callback.protocol._errors import InconsistentError, OSSError, RequestError, ServiceError
from oss_callback.protocol._redact import Redact, Redactor
from oss_callback.protocol._signing import SignatureVersion, sign_v1, sign_v4

__all__ = ["Session", "closing_iter"]

logger = logging.getLogger("oss_callback")

USER_AGENT = (
    f"oss-callback/{__version__} ({platform.system()}; python/{platform.python_version()}) "
    f"httpx/{httpx.__version__}"
)
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")

Query = Sequence[tuple[str, str]]
#: Builds the exception for a 203 from the response, its (bounded) body and the attempt's
#: redactor (only uploads with a callback pass one).
On203 = Callable[[httpx.Response, bytes, Redact], OSSError]

_SIGNATURE = re.compile(r"(?:Signature=|^OSS [^:]+:)([^,\s]+)")


def parse_crc(value: str | None) -> int | None:
    """``x-oss-hash-crc64ecma`` as an int (``None`` when absent or malformed)."""
    if value is None or not (value.strip().isascii() and value.strip().isdigit()):
        return None
    crc = int(value.strip())
    return crc if crc < 2**64 else None


class Session:
    """Shared state of a client: the httpx client, endpoint, credentials, policy."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        endpoint: Endpoint,
        credentials: Credentials | None,
        signature_version: SignatureVersion,
        region: str | None,
        retry: RetryPolicy,
        gate: anyio.Semaphore | None = None,
        user_agent: str = USER_AGENT,
        answer_timeout: float | None = None,
        credentials_provider: CredentialsProvider | None = None,
    ) -> None:
        if (credentials is None) == (credentials_provider is None):
            raise TypeError("a Session needs credentials or a credentials_provider (one)")
        self.http = http
        #: Requests in flight (sent, response not yet closed) when the SDK built the pool:
        #: as many as it has connections, so the rest wait here, not in httpcore's queue
        #: (whose bookkeeping is O(queued x connections) per request). ``None``: no gate.
        self.gate = gate
        self.user_agent = user_agent
        self.endpoint = endpoint
        self.credentials_provider = credentials_provider
        self.signature_version = signature_version
        self.region = region
        self.retry = retry
        #: seconds to add to the local clock (learned from RequestTimeTooSkewed answers).
        self.clock_offset = 0.0
        self._transmitter = Transmitter(http, endpoint, answer_timeout)
        #: the credentials to sign with, their renewal, and the secrets to redact.
        self._creds = CredentialsCache(credentials, credentials_provider, clock=self._clock)

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.clock_offset)

    def answer_limit(self) -> float | None:
        """Seconds an attempt waits for its answer's head (``None``: no deadline); see
        :meth:`oss_callback.client._transmit.Transmitter.answer_limit`."""
        return self._transmitter.answer_limit()

    @property
    def redact(self) -> Redactor:
        """Removes the secrets and STS tokens of the credentials used from a text (those
        of the last few credential sets, after rotations): :attr:`CredentialsCache.redact`."""
        return self._creds.redact

    def _attempt_redactor(self, headers: Mapping[str, str],
                          credentials: Credentials | None = None) -> Redactor:
        """:attr:`redact` plus this attempt's credentials, ``Authorization`` value and
        signature."""
        authorization = headers.get("authorization")
        own = ((credentials.access_key_secret, credentials.security_token)
               if credentials is not None else ())
        if not authorization:
            return self.redact.with_secrets(*own) if own else self.redact
        match = _SIGNATURE.search(authorization)
        return self.redact.with_secrets(*own, match.group(1) if match else None,
                                        exact=(authorization,))

    def _sign(self, method: str, bucket: str | None, key: str | None, query: Query,
              headers: dict[str, str], credentials: Credentials | None = None) -> None:
        creds = credentials if credentials is not None else self.current_credentials()
        if self.signature_version == "v1":
            sign_v1(method, bucket, key, query, headers, creds, self.now())
        else:
            assert self.region is not None
            sign_v4(method, bucket, key, query, headers, creds, self.now(), self.region)

    # ------------------------------------------------------------------ credentials

    def _clock(self) -> float:
        """UNIX seconds on the OSS-corrected clock (expirations are STS's, so OSS's, time)."""
        return time.time() + self.clock_offset

    @property
    def credentials(self) -> Credentials:
        """The credentials to sign with now: :meth:`current_credentials`."""
        return self.current_credentials()

    def current_credentials(self) -> Credentials:
        """The credentials to sign with now, without asking the provider (for the
        synchronous signing helpers): :meth:`CredentialsCache.current`.

        Raises:
            CredentialsError: with a provider, when none are cached yet, or they are due
                for renewal.
        """
        return self._creds.current()

    def cached_credentials(self) -> Credentials | None:
        """The credentials last used or obtained, fresh or not (``None``: none yet)."""
        return self._creds.cached()

    async def request_credentials(self) -> Credentials:
        """The credentials for a request, asking the provider when due (single flight):
        :meth:`CredentialsCache.request`.

        Raises:
            CredentialsError: the provider failed or returned something unusable.
        """
        return await self._creds.request()

    def _learn_clock(self, response: httpx.Response, error: ServiceError) -> None:
        """Adopt OSS's clock after ``RequestTimeTooSkewed``: ``<ServerTime>``, else ``Date``.

        (``x-oss-server-time`` is OSS's processing time in ms, not a clock: never used.)
        """
        server_time: float | None = None
        raw = error.details.get("ServerTime")
        if raw:
            try:
                server_time = datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
            except ValueError:
                server_time = None
        if server_time is None and response.headers.get("date"):
            try:
                server_time = parsedate_to_datetime(response.headers["date"]).timestamp()
            except (TypeError, ValueError, IndexError):
                server_time = None
        if server_time is not None:
            self.clock_offset = server_time - time.time()
            logger.warning("local clock is %.0f s off OSS's; correcting", -self.clock_offset)

    def _headers(
        self,
        method: str,
        bucket: str | None,
        key: str | None,
        query: Query,
        headers: Mapping[str, str] | None,
        body: Body | bytes | None,
        credentials: Credentials | None = None,
    ) -> dict[str, str]:
        """The signed request headers (without ``host``, which the sender adds)."""
        # identity: OSS gzips some content types on the fly for clients that accept it, and
        # the CRC-64 it reports is of the stored bytes; the SDK always reads those.
        h: dict[str, str] = {"user-agent": self.user_agent, "accept-encoding": "identity"}
        for name, value in (headers or {}).items():
            name, value = name.lower(), str(value)
            if any(c in name or c in value for c in _FORBIDDEN_IN_HEADERS):
                raise ValueError(
                    f"header {name!r} contains a line break or NUL, which would split the "
                    "request; remove it"
                )
            h[name] = value
        if isinstance(body, Body):
            if body.size is not None:
                h["content-length"] = str(body.size)
            else:
                h["transfer-encoding"] = "chunked"
        elif body is not None or method in ("PUT", "POST"):
            h["content-length"] = str(len(body or b""))
        self._sign(method, bucket, key, query, h, credentials)
        return h

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        bucket: str | None,
        key: str | None,
        *,
        query: Query = (),
        headers: Mapping[str, str] | None = None,
        body: Body | bytes | None = None,
        ok: tuple[int, ...] = (200,),
        progress: ProgressFn | None = None,
        on_203: On203 | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Send with retries; yield the successful response with its body unread.

        Errors: :class:`ServiceError` (status not in ``ok``), :class:`CallbackError` (203 with
        ``on_203``), :class:`RequestError` (no answer), :class:`InconsistentError` (CRC-64).
        """
        gate = self.gate
        if gate is not None:
            await gate.acquire()
        try:
            response = await self._send(method, bucket, key, query, headers, body, ok,
                                        progress, on_203)
            try:
                yield response
            except httpx.TimeoutException as exc:
                raise RequestError(f"reading {_what(bucket, key)} timed out") from exc
            except httpx.TransportError as exc:
                raise_request_error(
                    f"reading {_what(bucket, key)} failed: {type(exc).__name__}: {exc}",
                    exc, self.redact,
                )
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
        finally:
            if gate is not None:
                gate.release()

    async def _send(
        self,
        method: str,
        bucket: str | None,
        key: str | None,
        query: Query,
        headers: Mapping[str, str] | None,
        body: Body | bytes | None,
        ok: tuple[int, ...],
        progress: ProgressFn | None,
        on_203: On203 | None,
    ) -> httpx.Response:
        replayable = not isinstance(body, Body) or body.replayable
        total = body.size if isinstance(body, Body) else (len(body) if body else 0)
        url = self.endpoint.url(bucket, key, query)
        attempt = 0
        reauthorized = False  # asked the provider again after OSS refused its credentials
        while True:
            done = 0

            def on_bytes(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(done, total)

            response: httpx.Response | None = None
            creds: Credentials | None = None
            try:
                if progress is not None and (attempt or reauthorized):
                    progress(0, total)  # a retry starts over: progress rewinds
                creds = self._creds.usable() or await self._creds.request()
                signed = self._headers(method, bucket, key, query, headers, body, creds)
                redact = self._attempt_redactor(signed, creds)
                try:
                    response = await self._transmitter.send(
                        method, url, signed, body,
                        on_bytes if progress is not None else None, what=_what(bucket, key))
                except httpx.TransportError as exc:
                    raise_transport_error(exc, method=method, what=_what(bucket, key),
                                          endpoint=self.endpoint, url=url,
                                          trust_env=self.http.trust_env, redact=redact)
                status = response.status_code
                if status in ok:
                    _check_all_sent(method, bucket, key, body)
                    self._check_crc(response, body, redact)
                    return response
                data = await _read_limited(response, MAX_ERROR_BODY, redact,
                                           within=self.answer_limit())
                if status == 203 and on_203 is not None:
                    self._check_crc(response, body, redact)
                    raise on_203(response, data, redact)
                error = make_service_error(status, response.headers, data, redact=redact)
                if error.code == "RequestTimeTooSkewed":
                    self._learn_clock(response, error)
                raise error
            except OSSError as error:
                if response is not None:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                if (
                    creds is not None and not reauthorized and replayable
                    and self.credentials_provider is not None
                    and isinstance(error, ServiceError) and error.status == 403
                    and error.code in REJECTED_CREDENTIALS
                ):
                    # Revoked or expired early: renew once (shared with concurrent
                    # requests) and, given other credentials, send again.
                    reauthorized = True
                    fresh = await self._creds.refresh(rejected=creds)
                    if (fresh.access_key_id, fresh.access_key_secret, fresh.security_token) != (
                            creds.access_key_id, creds.access_key_secret, creds.security_token):
                        logger.info("OSS refused the credentials of %s %s (%s); retrying with "
                                    "the provider's new ones", method, _what(bucket, key),
                                    error.code)
                        continue
                if not (replayable and self.retry.should_retry(error, attempt)):
                    raise
                delay = self.retry.backoff(attempt)
                logger.info("retrying %s %s after %s (attempt %d, %.2fs)", method,
                            _what(bucket, key), _describe(error), attempt + 1, delay)
                attempt += 1
                if delay:
                    await anyio.sleep(delay)
            except BaseException:
                if response is not None:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
                raise

    async def request(
        self,
        method: str,
        bucket: str | None,
        key: str | None,
        *,
        query: Query = (),
        headers: Mapping[str, str] | None = None,
        body: Body | bytes | None = None,
        ok: tuple[int, ...] = (200,),
        progress: ProgressFn | None = None,
        on_203: On203 | None = None,
        max_body: int = 16 * 1024 * 1024,
    ) -> tuple[httpx.Response, bytes]:
        """Like :meth:`stream`, reading the whole (bounded) response body."""
        async with self.stream(method, bucket, key, query=query, headers=headers, body=body,
                               ok=ok, progress=progress, on_203=on_203) as response:
            data = await _read_limited(response, max_body, self.redact)
        return response, data

    def _check_crc(self, response: httpx.Response, body: Body | bytes | None,
                   redact: Redact) -> None:
        if not isinstance(body, Body):
            return
        server = parse_crc(response.headers.get("x-oss-hash-crc64ecma"))
        if server is None or (body.sent != body.size and body.size is not None):
            return
        if server != body.crc:
            request_id = response.headers.get("x-oss-request-id")
            request_id = redact(request_id) if request_id else None
            raise InconsistentError(
                f"CRC-64 mismatch: sent {body.crc}, OSS stored {server} "
                f"(request_id={request_id}); the data was corrupted in transit",
                client_crc=body.crc,
                server_crc=server,
                request_id=request_id,
            )


def _check_all_sent(method: str, bucket: str | None, key: str | None,
                    body: Body | bytes | None) -> None:
    """A success answer to a body that was not sent whole is not a success."""
    if isinstance(body, Body) and body.size is not None and body.sent != body.size:
        raise RequestError(
            f"{method} {_what(bucket, key)}: the server answered before the whole body was "
            f"sent ({body.sent} of {body.size} bytes); not counted as stored"
        )


@contextlib.asynccontextmanager
async def closing_iter(iterator: AsyncIterator[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Like :func:`contextlib.aclosing` for httpx's body iterators (typed as plain async
    iterators, but generators): an interrupted read closes them at once, not in the GC."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _read_limited(response: httpx.Response, limit: int, redact: Redact,
                        within: float | None = None) -> bytes:
    """Up to ``limit`` bytes of the body (the rest is not read); with ``within``, what
    arrived in that many seconds (an error answer's body dripping must not hang either)."""
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.move_on_after(math.inf if within is None else within):
            async with closing_iter(response.aiter_bytes()) as body:
                async for chunk in body:
                    size += len(chunk)
                    if size > limit:
                        break
                    chunks.append(chunk)
    except httpx.TransportError as exc:
        raise_request_error(f"reading the response failed: {type(exc).__name__}: {exc}",
                             exc, redact)
    return b"".join(chunks)


def _what(bucket: str | None, key: str | None) -> str:
    if bucket is None:
        return "/"
    return f"oss://{bucket}/{key or ''}"


def _describe(error: BaseException) -> str:
    if isinstance(error, ServiceError):
        return f"HTTP {error.status} {error.code}".strip()
    return type(error).__name__
