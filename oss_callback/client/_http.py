"""One signed, retried OSS request: signing, error mapping and CRC checks in one place.

Every request goes through one :class:`httpx.AsyncClient` (``client.send``), so whatever is
configured on it applies to every request: proxies, TLS, limits, event hooks, transports,
respx. This is the only module that sends; no ``httpx`` exception escapes it (they become
:class:`RequestError`, chained with ``from``).

Two things bound an attempt beyond httpx's per-operation timeouts:

* the answer deadline (``answer_timeout``): httpx's read timeout restarts with every byte,
  so a server that drips its response head (or ``100 Continue`` lines) a byte at a time
  would hold a request for ever. Each attempt gets ``answer_timeout`` seconds to connect
  and then, once the request body is sent (at once for a bodiless request), as many again
  for the complete response head. Sending the body is not under it (an upload may take
  hours; the write timeout catches a stall), and neither is reading a response body (a
  big download; the read timeout catches a stall). Waiting for a free connection of the
  pool isn't either, with httpx's own transport (its trace events say when the request
  got one); with other transports the clock starts when the request is handed over.
* redaction: every text taken from an answer is cleaned (:class:`Redactor`) of the
  credentials and the attempt's signature before an error message is made of it.

Credentials are fixed, or come from a ``credentials_provider``
(:meth:`Session.request_credentials`): asked before the first request, and again before a
request once less than :data:`REFRESH_MARGIN` (5 min), or half their lifetime if that is
shorter, remains until their ``expiration``; concurrent requests share one call (single
flight). A request that OSS answers 403 ``InvalidAccessKeyId``, ``SecurityTokenExpired``
or ``InvalidSecurityToken`` (credentials revoked early) asks the provider once more and,
given different credentials, is sent again once.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import platform
import re
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

import anyio
import anyio.to_thread
import httpx

from oss_callback._version import __version__
from oss_callback.client._body import Body, ProgressFn
from oss_callback.client._retry import RetryPolicy
from oss_callback.protocol._credentials import Credentials, CredentialsError, CredentialsProvider
from oss_callback.protocol._endpoint import Endpoint
from oss_callback.protocol._errors import MAX_ERROR_BODY as _MAX_ERROR_BODY
from oss_callback.protocol._errors import (
    InconsistentError,
    OSSError,
    Redactor,
    RequestError,
    ServiceError,
    make_service_error,
)
from oss_callback.protocol._signing import sign_v1, sign_v4

__all__ = ["Session", "closing_iter"]

logger = logging.getLogger("oss_callback")

USER_AGENT = (
    f"oss-callback/{__version__} ({platform.system()}; python/{platform.python_version()}) "
    f"httpx/{httpx.__version__}"
)
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")

Query = Sequence[tuple[str, str]]
Redact = Callable[[str], str]
#: Builds the exception for a 203 from the response, its (bounded) body and the attempt's
#: redactor (only uploads with a callback pass one).
On203 = Callable[[httpx.Response, bytes, Redact], OSSError]

_SIGNATURE = re.compile(r"(?:Signature=|^OSS [^:]+:)([^,\s]+)")

#: A provider's credentials are renewed when less than this many seconds remain until
#: their expiration (or half their lifetime, when that is shorter: 3600 s STS tokens are
#: renewed 5 min before they expire, 4 s ones after 2 s).
REFRESH_MARGIN = 300.0
#: When renewing fails but the cached credentials have not expired yet, they keep being
#: used (with a warning), and the provider is asked again after this many seconds.
FAILED_REFRESH_PAUSE = 5.0
#: How many credential sets' secrets :attr:`Session.redact` keeps removing after rotation
#: (each request's own are always removed from its answers, however old).
REDACT_HISTORY = 16
#: 403 codes that say the credentials are not (or no longer) accepted: with a provider, the
#: request asks it again and, given different credentials, is retried once.
REJECTED_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SecurityTokenExpired",
                                  "InvalidSecurityToken"})


def parse_crc(value: str | None) -> int | None:
    """``x-oss-hash-crc64ecma`` as an int (``None`` when absent or malformed)."""
    if value is None or not (value.strip().isascii() and value.strip().isdigit()):
        return None
    crc = int(value.strip())
    return crc if crc < 2**64 else None


def check_answer_timeout(value: object) -> float | None:
    """``answer_timeout`` as given (``None``: derived later), or ``ValueError``/``TypeError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"answer_timeout must be a number of seconds or None, not {type(value).__name__}"
        )
    if math.isnan(value) or value <= 0:
        raise ValueError(
            f"answer_timeout must be > 0 seconds (math.inf: no deadline), got {value!r}"
        )
    return float(value)


class Session:
    """Shared state of a client: the httpx client, endpoint, credentials, policy."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        endpoint: Endpoint,
        credentials: Credentials | None,
        signature_version: str,
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
        self._provider_is_async = credentials_provider is not None and (
            inspect.iscoroutinefunction(credentials_provider.get_credentials))
        #: the credentials requests are signed with; their refresh and expiry times (UNIX
        #: seconds on the OSS-corrected clock); until when a failed refresh is not retried.
        self._credentials: Credentials | None = None
        self._refresh_at = -math.inf
        self._expires_at = -math.inf
        self._pause_until = -math.inf
        self._refresh_lock = anyio.Lock()
        #: refreshes finished (a waiter that sees it move takes that refresh's outcome).
        self._refreshes = 0
        self._last_failure: CredentialsError | None = None
        self._secrets_used: list[str] = []
        self._redactor: Redactor | None = None
        self.signature_version = signature_version
        self.region = region
        self.retry = retry
        #: seconds to add to the local clock (learned from RequestTimeTooSkewed answers).
        self.clock_offset = 0.0
        #: the answer deadline as configured (``None``: httpx's read timeout, see
        #: :meth:`answer_limit`).
        self.answer_timeout = check_answer_timeout(answer_timeout)
        self._traced_origins: dict[str, bool] = {}
        if credentials is not None:
            self._adopt(credentials)

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.clock_offset)

    def answer_limit(self) -> float | None:
        """Seconds an attempt waits for its answer's head (``None``: no deadline).

        ``answer_timeout`` if given, else twice the httpx client's read timeout (120 s with
        the SDK's own): a server that keeps silent still ends in httpx's ``ReadTimeout``
        (the clearer message), while one that keeps a read alive by dripping bytes is cut
        off soon after. No read timeout: no deadline either (unless given).
        """
        limit = self.answer_timeout
        if limit is None:
            read = self.http.timeout.read
            limit = None if read is None else 2 * read
        return None if limit is None or math.isinf(limit) else limit

    @property
    def redact(self) -> Redactor:
        """Removes the secrets and STS tokens of the credentials used from a text (those
        of the last :data:`REDACT_HISTORY` credential sets, after rotations)."""
        if self._redactor is None:
            self._redactor = Redactor(self._secrets_used)
        return self._redactor

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
        """The credentials to sign with now, without asking the provider: for the
        synchronous signing helpers (POST policies, presigned URLs).

        Fixed credentials always; a provider's cached ones while they are fresh (not yet
        due for renewal).

        Raises:
            CredentialsError: with a provider, when none are cached yet, or they are due
                for renewal: the message says to make a request or call
                ``client.get_credentials()`` (which asks the provider) first.
        """
        creds = self._credentials
        if creds is not None and self._clock() < self._refresh_at:
            return creds
        name = type(self.credentials_provider).__name__
        state = ("has not been asked yet" if creds is None
                 else "gave credentials that are due for renewal")
        raise CredentialsError(
            f"no fresh credentials to sign with: the credentials provider ({name}) {state}, "
            "and signing here is synchronous, so it can't ask it; first call `await "
            "client.get_credentials()` (sync Client: `client.get_credentials()`) or make "
            "any request, then sign"
        )

    def cached_credentials(self) -> Credentials | None:
        """The credentials last used or obtained, fresh or not (``None``: none yet)."""
        return self._credentials

    def _usable(self) -> Credentials | None:
        """The cached credentials if a request may use them without asking the provider:
        fresh, or (after a failed renewal, for a short pause) not yet expired."""
        creds = self._credentials
        if creds is None:
            return None
        now = self._clock()
        if now < self._refresh_at or (now < self._pause_until and now < self._expires_at):
            return creds
        return None

    async def request_credentials(self) -> Credentials:
        """The credentials for a request: the cached ones, or the provider's new ones
        when none are cached or they are due for renewal (one provider call for all the
        requests that need it at the same time).

        Raises:
            CredentialsError: the provider failed or returned something unusable.
        """
        creds = self._usable()
        if creds is not None:
            return creds
        return await self._refresh(rejected=None)

    async def _refresh(self, rejected: Credentials | None) -> Credentials:
        """Ask the provider, once for all concurrent callers. ``rejected``: the credentials
        OSS just refused (renew unless another task already replaced them)."""
        seen = self._refreshes
        async with self._refresh_lock:
            if self._refreshes != seen:
                # A refresh ended while this task waited: share its outcome.
                usable = self._usable()
                if usable is not None:
                    return usable
                failure = self._last_failure
                if failure is not None:
                    raise CredentialsError(str(failure)) from failure.__cause__
                current = self._credentials
                assert current is not None
                return current
            current = self._credentials
            if rejected is not None and current is not None and current is not rejected:
                return current
            if rejected is None and (usable := self._usable()) is not None:
                return usable
            try:
                fresh = await self._ask_provider()
            except CredentialsError as exc:
                self._last_failure = exc
                self._refreshes += 1
                if rejected is None and current is not None and self._clock() < self._expires_at:
                    logger.warning("%s; using the cached credentials until they expire, and "
                                   "asking again in %g s", exc, FAILED_REFRESH_PAUSE)
                    self._pause_until = self._clock() + FAILED_REFRESH_PAUSE
                    return current
                raise
            self._last_failure = None
            self._refreshes += 1
            self._adopt(fresh)
            return fresh

    async def _ask_provider(self) -> Credentials:
        provider = self.credentials_provider
        assert provider is not None
        name = type(provider).__name__
        try:
            if self._provider_is_async:
                result: object = await provider.get_credentials()  # type: ignore[misc]
            else:
                result = await anyio.to_thread.run_sync(provider.get_credentials,
                                                        abandon_on_cancel=True)
                if inspect.isawaitable(result):
                    result = await result
        except CredentialsError:
            raise
        except Exception as exc:
            raise CredentialsError(
                f"asking the credentials provider ({name}) for credentials failed: "
                f"{type(exc).__name__}: {self.redact(str(exc))}"
            ) from exc
        if not isinstance(result, Credentials):
            raise CredentialsError(
                f"the credentials provider ({name}) returned {type(result).__name__}, not "
                "oss_callback.Credentials"
            )
        return result

    def _adopt(self, creds: Credentials) -> None:
        """Use ``creds`` from now on; schedule their renewal."""
        now = self._clock()
        self._credentials = creds
        self._pause_until = -math.inf
        if creds.expiration is None:
            self._refresh_at = self._expires_at = math.inf
        else:
            self._expires_at = creds.expiration.timestamp()
            lifetime = self._expires_at - now
            if lifetime <= 0:
                logger.warning(
                    "the credentials provider (%s) gave credentials (access key id %s) that "
                    "expired %.0f s ago (is the local clock right?); using them, and asking "
                    "again before the next request", type(self.credentials_provider).__name__,
                    creds.access_key_id, -lifetime)
                self._refresh_at = now
            else:
                self._refresh_at = self._expires_at - min(REFRESH_MARGIN, lifetime / 2)
        fresh = [s for s in (creds.access_key_secret, creds.security_token)
                 if s and s not in self._secrets_used]
        if fresh:
            self._secrets_used = [*self._secrets_used, *fresh][-2 * REDACT_HISTORY:]
            self._redactor = None

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

    def _traced(self, url: str) -> bool:
        """Whether the request goes through httpx's own transport (httpcore), whose trace
        events say when the request got its connection (cached per origin: a client's
        transports are fixed when it is built)."""
        scheme, _, rest = url.partition("://")
        origin = scheme + "://" + rest.partition("/")[0]
        traced = self._traced_origins.get(origin)
        if traced is None:
            pick = getattr(self.http, "_transport_for_url", None)
            traced = pick is not None and isinstance(pick(httpx.URL(origin)),
                                                     httpx.AsyncHTTPTransport)
            self._traced_origins[origin] = traced
        return traced

    def _build(self, method: str, url: str, headers: dict[str, str],
               stream: httpx.AsyncByteStream | None) -> httpx.Request:
        """The request, built once (``build_request`` and a second ``Request`` for a stream
        body cost about a tenth of a small put's client CPU).

        Like ``build_request``: the httpx client's own default headers first (the signature
        never covers them unless they are ``x-oss-*``/``Content-*``, which the SDK refuses
        at construction), then the request's, and the client's timeouts. Cookies are left
        out (OSS uses none). A body goes in as a stream of the SDK's, not as content httpx
        would wrap in a generator; with no body, httpx's own empty one, already "read", so
        transports send none (given as a stream, aiohttp would send an empty chunked one).
        """
        merged = dict(self.http.headers.items())
        merged.update(headers)
        extensions: dict[str, Any] = {"timeout": self.http.timeout.as_dict()}
        if stream is None:
            return httpx.Request(method, url, headers=merged, extensions=extensions)
        request = httpx.Request(method, url, headers=merged, stream=stream,
                                extensions=extensions)
        request.headers["host"] = request.url.netloc.decode("ascii")  # as httpx would add
        return request

    async def _transmit(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Body | bytes | None,
        on_bytes: Callable[[int], None] | None,
        *,
        what: str,
    ) -> httpx.Response:
        """One attempt: send; the response body is left unread.

        ``auth=None`` keeps an ``auth`` set on a user's client from replacing the OSS
        signature, and redirects are never followed (a signature is valid for one host).
        """
        stream: httpx.AsyncByteStream | None = None
        if isinstance(body, Body):
            stream = body.stream(on_bytes)
        elif body:
            stream = _OneChunk(bytes(body))
        limit = self.answer_limit()
        clock = None
        if limit is not None:
            clock = _AnswerClock(limit, armed=not self._traced(url), trace=None)
            if stream is not None:
                stream = _ClockedStream(stream, clock)
        request = self._build(method, url, headers, stream)
        if clock is not None:
            request.extensions["trace"] = clock.trace
        try:
            if clock is None:
                return await self.http.send(request, stream=True, auth=None,
                                            follow_redirects=False)
            with clock.scope:
                return await self.http.send(request, stream=True, auth=None,
                                            follow_redirects=False)
            # Only the deadline's cancellation ends the scope without a response.
            raise RequestError(
                f"{method} {what}: no answer came within {clock.limit:g} s (answer_timeout): "
                f"the server at {self.endpoint} did not send a complete response head in "
                "time (a stalled or dripping server or proxy); check the network and the "
                "endpoint, or raise answer_timeout"
            )
        finally:
            if stream is not None:
                # Normally the body is done by now; after an early answer, a cancellation or
                # a failure mid-body, this closes its file right away.
                with anyio.CancelScope(shield=True):
                    await stream.aclose()

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
                _raise_request_error(
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
                creds = self._usable() or await self.request_credentials()
                signed = self._headers(method, bucket, key, query, headers, body, creds)
                redact = self._attempt_redactor(signed, creds)
                try:
                    response = await self._transmit(
                        method, url, signed, body,
                        on_bytes if progress is not None else None, what=_what(bucket, key))
                except httpx.TimeoutException as exc:
                    if not _is_certificate_error(exc):
                        raise RequestError(
                            f"{method} {_what(bucket, key)} timed out ({type(exc).__name__}); "
                            "check the network or raise the timeout"
                        ) from exc
                    # httpx-aiohttp reports an untrusted certificate as ConnectTimeout
                    _raise_request_error(
                        f"{method} {_what(bucket, key)} failed: {_reason(exc)} (endpoint "
                        f"{self.endpoint}){_hint(exc, self.http.trust_env, url=url)}",
                        exc, redact,
                    )
                except httpx.TransportError as exc:
                    _raise_request_error(
                        f"{method} {_what(bucket, key)} failed: {type(exc).__name__}: "
                        f"{_reason(exc)} (endpoint {self.endpoint})"
                        f"{_hint(exc, self.http.trust_env, url=url)}",
                        exc, redact,
                    )
                status = response.status_code
                if status in ok:
                    _check_all_sent(method, bucket, key, body)
                    self._check_crc(response, body, redact)
                    return response
                data = await _read_limited(response, _MAX_ERROR_BODY, redact,
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
                    fresh = await self._refresh(rejected=creds)
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


class _AnswerClock:
    """The answer deadline of one attempt: a cancel scope whose deadline moves as it goes.

    Armed when the request gets its connection (the first httpcore trace event; with
    transports that send none, when the request is handed over), paused while the body
    streams, restarted in full once the body is sent, and armed again if httpcore starts
    reading the answer with the body unfinished (a write failed; an early answer).
    """

    def __init__(self, limit: float, *, armed: bool,
                 trace: Callable[[str, Any], Any] | None) -> None:
        self.limit = limit
        self.scope = anyio.CancelScope(
            deadline=anyio.current_time() + limit if armed else math.inf)
        self._streaming = False
        self._user_trace = trace

    def arm(self) -> None:
        if self.scope.deadline == math.inf:
            self.scope.deadline = anyio.current_time() + self.limit

    def body_started(self) -> None:
        self._streaming = True
        self.scope.deadline = math.inf

    def body_sent(self) -> None:
        self._streaming = False
        self.scope.deadline = anyio.current_time() + self.limit

    async def trace(self, name: str, info: Any) -> None:
        if name.endswith(".started") and (
            not self._streaming or name.endswith("receive_response_headers.started")
        ):
            self.arm()
        if self._user_trace is not None:
            await self._user_trace(name, info)


class _OneChunk(httpx.AsyncByteStream):
    """A small in-memory body (an XML document) as one chunk, without a generator."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._done = False
        self._closed = False

    def __aiter__(self) -> _OneChunk:
        self._done = self._closed
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        self._done = True
        return self._data

    async def aclose(self) -> None:
        self._done = self._closed = True


class _ClockedStream(httpx.AsyncByteStream):
    """A request body that tells the answer clock when it starts and when it is all sent.

    A plain iterator (like :class:`~oss_callback.client._body.BodyStream`, which it wraps): no
    generator is left to the garbage collector when a request stops mid-body.
    """

    def __init__(self, inner: httpx.AsyncByteStream, clock: _AnswerClock) -> None:
        self._inner = inner
        self._clock = clock
        self._it: AsyncIterator[bytes] | None = None
        self._started = False

    def __aiter__(self) -> _ClockedStream:
        self._it = self._inner.__aiter__()
        self._started = False
        return self

    async def __anext__(self) -> bytes:
        if self._it is None:
            raise StopAsyncIteration
        if not self._started:
            self._started = True
            self._clock.body_started()
        try:
            return await self._it.__anext__()
        except StopAsyncIteration:
            self._clock.body_sent()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


def _check_all_sent(method: str, bucket: str | None, key: str | None,
                    body: Body | bytes | None) -> None:
    """A success answer to a body that was not sent whole is not a success."""
    if isinstance(body, Body) and body.size is not None and body.sent != body.size:
        raise RequestError(
            f"{method} {_what(bucket, key)}: the server answered before the whole body was "
            f"sent ({body.sent} of {body.size} bytes); not counted as stored"
        )


def _raise_request_error(message: str, exc: BaseException, redact: Redact) -> NoReturn:
    """Raise a :class:`RequestError` made of redacted text, from ``exc``; but if ``exc`` (or
    one down its chain) carries a secret (e.g. a protocol error quoting an echoed header),
    from nothing: a traceback must not show it either."""
    error = RequestError(redact(message))
    if any(redact(str(cause)) != str(cause) for cause in _causes(exc)):
        raise error from None
    raise error from exc


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
        _raise_request_error(f"reading the response failed: {type(exc).__name__}: {exc}",
                             exc, redact)
    return b"".join(chunks)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (trio's TLS errors hide below two wrappers)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _reason(exc: BaseException) -> str:
    """The first non-empty message down the cause chain (some wrappers carry none)."""
    for cause in _causes(exc):
        if str(cause):
            return str(cause) if cause is exc else f"{type(cause).__name__}: {cause}"
    return "connection error"


def _is_certificate_error(exc: BaseException) -> bool:
    return any(isinstance(c, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(c)
               for c in _causes(exc))


def _hint(exc: httpx.TransportError, trust_env: bool, url: str) -> str:
    """What to do about the transport errors people configure their way out of."""
    if _is_certificate_error(exc):
        return ("; the server's certificate is not trusted: point SSL_CERT_FILE (or "
                "SSL_CERT_DIR) at your CA bundle, or pass http_client=httpx.AsyncClient("
                "verify=ssl.create_default_context(cafile=...))")
    proxy = _env_proxy(url) if trust_env else None
    if isinstance(exc, httpx.ProxyError) or (proxy and isinstance(exc, httpx.ConnectError)):
        via = f" {proxy[1]} (from {proxy[0]})" if proxy else ""
        return (f"; the request went through the proxy{via}, which refused or failed: check "
                "that it is up and the HTTPS_PROXY/HTTP_PROXY/ALL_PROXY setting (or the proxy= "
                "of your http_client), or exclude this host with NO_PROXY")
    return ""


def _env_proxy(url: str) -> tuple[str, str] | None:
    """``(variable, proxy URL without credentials)`` the environment routes ``url`` through.

    Only for the error message; httpx decides the routing (its rules match these).
    """
    parsed = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    host = parsed.hostname or ""
    for entry in (e.strip().lower() for e in proxies.get("no", "").split(",")):
        entry = entry.split("://", 1)[-1].split(":", 1)[0] if not entry.startswith("[") else entry
        if entry == "*" or (entry and (host == entry.lstrip(".")
                                       or host.endswith("." + entry.lstrip(".")))):
            return None
    for scheme in (parsed.scheme, "all"):
        if proxies.get(scheme):
            proxy = urllib.parse.urlsplit(proxies[scheme] if "://" in proxies[scheme]
                                          else "http://" + proxies[scheme])
            where = proxy.hostname or ""
            if proxy.port:
                where += f":{proxy.port}"
            return f"{scheme.upper()}_PROXY", f"{proxy.scheme}://{where}"
    return None


def _what(bucket: str | None, key: str | None) -> str:
    if bucket is None:
        return "/"
    return f"oss://{bucket}/{key or ''}"


def _describe(error: BaseException) -> str:
    if isinstance(error, ServiceError):
        return f"HTTP {error.status} {error.code}".strip()
    return type(error).__name__
