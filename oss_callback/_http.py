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
"""

from __future__ import annotations

import contextlib
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
import httpx

from ._body import Body, ProgressFn
from ._credentials import Credentials
from ._endpoint import Endpoint
from ._errors import MAX_ERROR_BODY as _MAX_ERROR_BODY
from ._errors import (
    InconsistentError,
    OSSError,
    Redactor,
    RequestError,
    ServiceError,
    make_service_error,
)
from ._retry import RetryPolicy
from ._signing import sign_v1, sign_v4
from ._version import __version__

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
        credentials: Credentials,
        signature_version: str,
        region: str | None,
        retry: RetryPolicy,
        gate: anyio.Semaphore | None = None,
        user_agent: str = USER_AGENT,
        answer_timeout: float | None = None,
    ) -> None:
        self.http = http
        #: Requests in flight (sent, response not yet closed) when the SDK built the pool:
        #: as many as it has connections, so the rest wait here, not in httpcore's queue
        #: (whose bookkeeping is O(queued x connections) per request). ``None``: no gate.
        self.gate = gate
        self.user_agent = user_agent
        self.endpoint = endpoint
        self.credentials = credentials
        self.signature_version = signature_version
        self.region = region
        self.retry = retry
        #: seconds to add to the local clock (learned from RequestTimeTooSkewed answers).
        self.clock_offset = 0.0
        #: the answer deadline as configured (``None``: httpx's read timeout, see
        #: :meth:`answer_limit`).
        self.answer_timeout = check_answer_timeout(answer_timeout)
        self._redactor: tuple[tuple[str, str | None], Redactor] | None = None
        self._traced_origins: dict[str, bool] = {}

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
        """Removes the credentials' secret and STS token from a text."""
        creds = self.credentials
        key = (creds.access_key_secret, creds.security_token)
        if self._redactor is None or self._redactor[0] != key:
            self._redactor = (key, Redactor(key))
        return self._redactor[1]

    def _attempt_redactor(self, headers: Mapping[str, str]) -> Redactor:
        """:attr:`redact` plus this attempt's ``Authorization`` value and signature."""
        authorization = headers.get("authorization")
        if not authorization:
            return self.redact
        match = _SIGNATURE.search(authorization)
        return self.redact.with_secrets(match.group(1) if match else None,
                                        exact=(authorization,))

    def _sign(self, method: str, bucket: str | None, key: str | None, query: Query,
              headers: dict[str, str]) -> None:
        if self.signature_version == "v1":
            sign_v1(method, bucket, key, query, headers, self.credentials, self.now())
        else:
            assert self.region is not None
            sign_v4(method, bucket, key, query, headers, self.credentials, self.now(), self.region)

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
        self._sign(method, bucket, key, query, h)
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
        while True:
            done = 0

            def on_bytes(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(done, total)

            response: httpx.Response | None = None
            try:
                if progress is not None and attempt:
                    progress(0, total)  # a retry starts over: progress rewinds
                signed = self._headers(method, bucket, key, query, headers, body)
                redact = self._attempt_redactor(signed)
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

    A plain iterator (like :class:`~oss_callback._body.BodyStream`, which it wraps): no
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
