"""One attempt on the wire: the request built once, sent under the answer deadline.

Every request goes through the one :class:`httpx.AsyncClient` (``client.send``), so whatever
is configured on it applies to every request: proxies, TLS, limits, event hooks,
transports, respx.

Beyond httpx's per-operation timeouts, the answer deadline (``answer_timeout``) bounds an
attempt: httpx's read timeout restarts with every byte, so a server that drips its
response head (or ``100 Continue`` lines) a byte at a time would hold a request for ever.
Each attempt gets ``answer_timeout`` seconds to connect and then, once the request body is
sent (at once for a bodiless request), as many again for the complete response head.
Sending the body is not under it (an upload may take hours; the write timeout catches a
stall), and neither is reading a response body (a big download; the read timeout catches
a stall). Waiting for a free connection of the pool isn't either, with httpx's own
transport (its trace events say when the request got one); with other transports the
clock starts when the request is handed over.

The session (:mod:`oss_callback.client._http`) signs, retries and maps errors around it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx

from oss_callback.client._body import Body
from oss_callback.protocol._endpoint import Endpoint
from oss_callback.protocol._errors import RequestError

__all__ = ["Transmitter", "check_answer_timeout"]


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


class Transmitter:
    """Sends one attempt's request through the httpx client and waits for the answer's
    head, within the answer deadline; the session around it signs, retries and maps errors.
    """

    def __init__(self, http: httpx.AsyncClient, endpoint: Endpoint,
                 answer_timeout: float | None) -> None:
        self.http = http
        self.endpoint = endpoint
        #: the answer deadline as configured (``None``: httpx's read timeout, see
        #: :meth:`answer_limit`).
        self.answer_timeout = check_answer_timeout(answer_timeout)
        self._traced_origins: dict[str, bool] = {}

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

    async def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Body | bytes | None,
        on_bytes: Callable[[int], None] | None,
        *,
        what: str,
    ) -> httpx.Response:
        """Send one attempt; the response body is left unread.

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

