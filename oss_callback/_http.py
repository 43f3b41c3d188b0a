"""One signed, retried OSS request: signing, error mapping and CRC checks in one place.

Every request goes through one :class:`httpx.AsyncClient` (``client.send``), so whatever is
configured on it applies to every request: proxies, TLS, limits, event hooks, transports,
respx. This is the only module that sends; no ``httpx`` exception escapes it (they become
:class:`RequestError`, chained with ``from``).
"""

from __future__ import annotations

import contextlib
import logging
import platform
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

import anyio
import httpx

from ._body import Body, ProgressFn
from ._credentials import Credentials
from ._endpoint import Endpoint
from ._errors import MAX_ERROR_BODY as _MAX_ERROR_BODY
from ._errors import (
    InconsistentError,
    OSSError,
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
#: Builds the exception for a 203 from the response (only uploads with a callback pass one).
On203 = Callable[[httpx.Response, bytes], OSSError]


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
        credentials: Credentials,
        signature_version: str,
        region: str | None,
        retry: RetryPolicy,
        gate: anyio.Semaphore | None = None,
        user_agent: str = USER_AGENT,
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

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.clock_offset)

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

    def _redact(self, error: ServiceError) -> None:
        """Drop the STS token from what OSS echoes back (``StringToSign``, ...)."""
        token = self.credentials.security_token
        if not token:
            return
        forms = (token, " ".join(f"{b:02x}" for b in token.encode()),
                 " ".join(f"{b:02X}" for b in token.encode()))
        for name, value in error.details.items():
            for form in forms:
                value = value.replace(form, "<redacted>")
            error.details[name] = value

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

    async def _transmit(
        self,
        method: str,
        bucket: str | None,
        key: str | None,
        query: Query,
        headers: Mapping[str, str] | None,
        body: Body | bytes | None,
        on_bytes: Callable[[int], None] | None,
    ) -> httpx.Response:
        """One attempt: sign and send; the response body is left unread.

        ``build_request`` adds the httpx client's own default headers (the signature never
        covers them unless they are ``x-oss-*``/``Content-*``, which the SDK refuses at
        construction); ``auth=None`` keeps an ``auth`` set on a user's client from replacing
        the OSS signature, and redirects are never followed (OSS doesn't redirect uploads).
        """
        h = self._headers(method, bucket, key, query, headers, body)
        url = self.endpoint.url(bucket, key, query)
        if not isinstance(body, Body):
            request = self.http.build_request(method, url, headers=h, content=body)
            return await self.http.send(request, stream=True, auth=None,
                                        follow_redirects=False)
        # build_request merges the client's headers, Host and timeouts; the body goes in as a
        # stream of the SDK's (closed below), not as content httpx would wrap in a generator.
        built = self.http.build_request(method, url, headers=h)
        stream = body.stream(on_bytes)
        request = httpx.Request(method, built.url, headers=built.headers, stream=stream,
                                extensions=built.extensions)
        try:
            return await self.http.send(request, stream=True, auth=None,
                                        follow_redirects=False)
        finally:
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
                raise RequestError(
                    f"reading {_what(bucket, key)} failed: {type(exc).__name__}: {exc}"
                ) from exc
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
                try:
                    response = await self._transmit(
                        method, bucket, key, query, headers, body,
                        on_bytes if progress is not None else None)
                except httpx.TimeoutException as exc:
                    raise RequestError(
                        f"{method} {_what(bucket, key)} timed out ({type(exc).__name__}); "
                        "check the network or raise the timeout"
                    ) from exc
                except httpx.TransportError as exc:
                    raise RequestError(
                        f"{method} {_what(bucket, key)} failed: {type(exc).__name__}: "
                        f"{_reason(exc)} (endpoint {self.endpoint})"
                        f"{_hint(exc, self.http.trust_env, url=self.endpoint.url(bucket, key))}"
                    ) from exc
                status = response.status_code
                if status in ok:
                    _check_all_sent(method, bucket, key, body)
                    self._check_crc(response, body)
                    return response
                data = await _read_limited(response, _MAX_ERROR_BODY)
                if status == 203 and on_203 is not None:
                    self._check_crc(response, body)
                    callback_error = on_203(response, data)
                    if isinstance(callback_error, ServiceError):
                        self._redact(callback_error)
                    raise callback_error
                error = make_service_error(status, response.headers, data)
                self._redact(error)
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
            data = await _read_limited(response, max_body)
        return response, data

    def _check_crc(self, response: httpx.Response, body: Body | bytes | None) -> None:
        if not isinstance(body, Body):
            return
        server = parse_crc(response.headers.get("x-oss-hash-crc64ecma"))
        if server is None or (body.sent != body.size and body.size is not None):
            return
        if server != body.crc:
            raise InconsistentError(
                f"CRC-64 mismatch: sent {body.crc}, OSS stored {server} "
                f"(request_id={response.headers.get('x-oss-request-id')}); the data was "
                "corrupted in transit",
                client_crc=body.crc,
                server_crc=server,
                request_id=response.headers.get("x-oss-request-id"),
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


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        async with closing_iter(response.aiter_bytes()) as body:
            async for chunk in body:
                size += len(chunk)
                if size > limit:
                    break
                chunks.append(chunk)
    except httpx.TransportError as exc:
        raise RequestError(f"reading the response failed: {type(exc).__name__}: {exc}") from exc
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


def _hint(exc: httpx.TransportError, trust_env: bool, url: str) -> str:
    """What to do about the transport errors people configure their way out of."""
    if any(isinstance(c, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(c)
           for c in _causes(exc)):
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
