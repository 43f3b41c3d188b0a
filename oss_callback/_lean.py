"""A lean HTTP/1.1 client for asyncio: ``httpx.AsyncClient.send`` without httpx's machinery.

For small requests most of a client's CPU goes to ``httpx.AsyncClient.send``, httpcore, h11
and anyio's stream wrappers rather than to the network. :class:`LeanHTTP` replaces that part
with asyncio protocols (one per connection) whose responses are parsed by ``httptools``
(llhttp, in C), and still speaks httpx: it takes :class:`httpx.Request` objects, returns
:class:`httpx.Response` objects with a streaming body, and raises httpx's exceptions (with
the request attached), so code written against ``httpx.AsyncClient.send`` keeps working.

Scope: HTTP/1.1 over TCP or TLS, keep-alive, no HTTP/2, proxies, redirects, cookies or
authentication (the caller signs requests itself). **asyncio only**: :func:`usable` says
whether ``httptools`` is importable, and a caller running on another event loop (trio) must
use ``httpx.AsyncClient`` instead; :meth:`LeanHTTP.send` raises :class:`RuntimeError` outside
asyncio.

Pool accounting (as in :mod:`oss_callback._pool`): a *slot* is one unit of
``max_connections``, held by an idle connection, by a request from acquiring its connection
until the connection is released (connecting, sending, receiving), or by a waiter that was
handed a connection or slot but has not resumed yet. While anyone waits there is no idle
connection and every slot is held; a freed slot or released connection goes to the first
waiter (FIFO). Acquiring and releasing touch one connection and at most one waiter: O(1).

A connection is released as soon as its response has been received completely (so that
small responses free their connection before the caller even reads them); it is reused only
if the request was sent completely, the response allows keep-alive, and nothing else arrived
on it. A response closed before its end, an error, or a cancellation closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, cast

import httpx

from ._poolstats import PoolStats

if TYPE_CHECKING:
    import httptools
else:
    try:
        import httptools
    except ImportError:  # pragma: no cover - optional dependency
        httptools = None

__all__ = ["MAX_HEAD_SIZE", "READ_BUFFER_LIMIT", "LeanHTTP", "usable"]

#: Response bytes buffered per connection before reading the socket pauses (reading resumes
#: once the consumer has drained the buffer to a quarter of this). One ``data_received``
#: chunk (at most a few hundred KiB) may arrive on top of it.
READ_BUFFER_LIMIT = 1024 * 1024
_RESUME_READING_AT = READ_BUFFER_LIMIT // 4

#: The transport's write buffer: sending pauses above the high mark (waiting for the peer,
#: under the write timeout) until it drains below the low mark. A request body chunk is
#: written whole, so at most one chunk plus this is buffered.
_WRITE_HIGH_WATER = 1024 * 1024
_WRITE_LOW_WATER = 256 * 1024

#: The most bytes a response's status line and headers may take (a server streaming
#: endless headers must not grow memory without bound).
MAX_HEAD_SIZE = 256 * 1024

#: Bodies up to this size are written together with the request head (one send).
_COALESCE_LIMIT = 64 * 1024

#: Longest wait for aborted connections to report their socket closed in :meth:`aclose`.
_CLOSE_WAIT = 1.0

_Key = tuple[str, str, int]  # (scheme, host, port)

_NO_BODY_STATUS = frozenset((204, 304))


def usable() -> bool:
    """Whether :class:`LeanHTTP` can be used: ``httptools`` is importable.

    :class:`LeanHTTP` also needs an asyncio event loop (uvloop included); on trio, or when
    this is False, use ``httpx.AsyncClient``.
    """
    return httptools is not None


class _Exchange:
    """One request/response on a connection: what the parser produced, and its waiters."""

    __slots__ = (
        "buffered", "chunks", "close_delimited", "done", "error", "head", "head_size", "headers",
        "headers_done", "interim", "keep_alive", "peak_buffered", "reason", "released",
        "request", "rx", "sent_all", "status", "timer", "waiter",
    )

    def __init__(self, request: httpx.Request, head: bool) -> None:
        self.request = request
        self.head = head  # a HEAD request: the response has no body whatever it says
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.interim = False  # inside a 1xx response (skipped)
        self.close_delimited = False  # the body ends when the server closes
        self.done = False  # the response was received completely
        self.keep_alive = False
        self.sent_all = False  # the request was written completely
        self.rx = False  # any response byte arrived
        self.head_size = 0  # bytes received before the headers were complete
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.peak_buffered = 0
        self.error: httpx.TransportError | None = None
        self.waiter: asyncio.Future[bool] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.released = False  # the connection (and its slot) was given back


class _Conn(asyncio.Protocol):
    """One HTTP/1.1 connection: an asyncio protocol feeding an ``httptools`` parser."""

    def __init__(self, pool: LeanHTTP, key: _Key, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.alive = True  # False once closed, at EOF, broken or out of sync: never reuse
        self.uses = 0  # exchanges started on this connection
        self.idle_until = 0.0
        self.read_paused = False
        self.write_paused = False
        self.ex: _Exchange | None = None
        self.last_rx = 0.0
        self.drain_waiter: asyncio.Future[bool] | None = None
        self.tx_timer: asyncio.TimerHandle | None = None
        self.lost: asyncio.Future[None] = loop.create_future()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports implement asyncio.Transport without subclassing it)
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER, low=_WRITE_LOW_WATER)

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None or ex.done or ex.error is not None:
            # Bytes nobody asked for (after a complete response, or on an idle connection),
            # or after garbage: the connection is out of sync; it carries nothing more.
            self.abort()
            return
        ex.rx = True
        self.last_rx = self.loop.time()
        if not ex.headers_done:
            ex.head_size += len(data)
        parser = self.parser
        assert parser is not None
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ex, httpx.RemoteProtocolError(
                "the server switched protocols (upgrade), which is not supported",
                request=ex.request))
        except httptools.HttpParserError as exc:
            self._fail(ex, httpx.RemoteProtocolError(
                f"invalid HTTP response: {exc}", request=ex.request))
        self._after_feed(ex)

    def _after_feed(self, ex: _Exchange) -> None:
        if not ex.headers_done and ex.head_size > MAX_HEAD_SIZE and ex.error is None:
            self._fail(ex, httpx.RemoteProtocolError(
                f"response headers larger than {MAX_HEAD_SIZE} bytes", request=ex.request))
        elif ex.done:
            if ex.head:
                self.parser = None  # mid-message as far as llhttp knows: start afresh
            if ex.sent_all:
                self.pool._settle(self, ex)

    def eof_received(self) -> bool:
        self._closed_by_peer(None)
        return False  # let the transport close itself

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closed_by_peer(exc)
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        ex = self.ex
        if ex is not None and ex.headers_done and not ex.interim:
            # A second response in the same read: pipelining garbage; never reuse.
            self.alive = False

    def on_status(self, status: bytes) -> None:
        ex = self.ex
        if ex is not None:
            ex.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.ex
        if ex is not None:
            ex.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is None or ex.done:
            return
        assert self.parser is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # An informational response (100 Continue, 103 Early Hints): skip it.
            ex.interim = True
            ex.headers = []
            ex.reason = b""
            return
        ex.status = status
        ex.headers_done = True
        if ex.head:
            ex.keep_alive = self.parser.should_keep_alive()
            ex.done = True
        elif status not in _NO_BODY_STATUS:
            framed = False
            for name, _ in ex.headers:
                lower = name.lower()
                if lower == b"content-length" or lower == b"transfer-encoding":
                    framed = True
                    break
            ex.close_delimited = not framed
        self._wake(ex)

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is None or ex.done:
            return
        ex.chunks.append(body)
        ex.buffered += len(body)
        if ex.buffered > ex.peak_buffered:
            ex.peak_buffered = ex.buffered
        if ex.buffered > READ_BUFFER_LIMIT and not self.read_paused and self.transport:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake(ex)

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex is None or ex.done:
            return
        if ex.interim:
            ex.interim = False
            return
        assert self.parser is not None
        ex.keep_alive = self.parser.should_keep_alive()
        ex.done = True
        self._wake(ex)
        self._wake_writer()

    def on_chunk_header(self) -> None:
        pass

    def on_chunk_complete(self) -> None:
        pass

    # -- state -------------------------------------------------------------------------------

    def _closed_by_peer(self, exc: BaseException | None) -> None:
        self.alive = False
        self._wake_writer()
        ex = self.ex
        if ex is None or ex.done or ex.error is not None:
            return
        if ex.headers_done and ex.close_delimited and exc is None:
            ex.keep_alive = False
            ex.done = True  # the end of a close-delimited body
            self._wake(ex)
            if ex.sent_all:
                self.pool._settle(self, ex)
            return
        if exc is not None:
            error: httpx.TransportError = httpx.ReadError(
                f"connection lost: {str(exc) or type(exc).__name__}", request=ex.request)
        elif not ex.rx:
            error = httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=ex.request)
        elif not ex.headers_done:
            error = httpx.RemoteProtocolError(
                "peer closed connection without sending complete response headers",
                request=ex.request)
        else:
            error = httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body",
                request=ex.request)
        self._fail(ex, error)

    def _fail(self, ex: _Exchange, error: httpx.TransportError) -> None:
        self.alive = False
        if ex.error is None and not ex.done:
            ex.error = error
        self._wake(ex)
        self._wake_writer()
        if self.transport is not None:
            self.transport.abort()

    def close_by_client(self) -> None:
        """Abort, failing the request or response in progress with a read error."""
        ex = self.ex
        if ex is not None:
            self._fail(ex, httpx.ReadError("the client was closed", request=ex.request))
        self.abort()

    def write(self, ex: _Exchange, *data: bytes | memoryview) -> None:
        """Write to the transport (callers check ``alive`` first)."""
        transport = self.transport
        try:
            if transport is None:
                raise RuntimeError("not connected")
            if len(data) == 1:
                transport.write(data[0])
            else:
                transport.writelines(data)
        except (RuntimeError, OSError) as exc:  # uvloop: the handle closed meanwhile
            self.abort()
            raise httpx.WriteError(f"writing failed: {exc}", request=ex.request) from exc

    def abort(self) -> None:
        """Close the socket now (no flushing: the peer may not be reading)."""
        self.alive = False
        if self.transport is not None:
            self.transport.abort()

    def _wake(self, ex: _Exchange) -> None:
        waiter = ex.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _wake_writer(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    # -- waiting -------------------------------------------------------------------------

    async def wait_rx(self, ex: _Exchange, timeout: float | None) -> bool:
        """Wait for news on ``ex``: False if nothing arrived for ``timeout`` seconds."""
        loop = self.loop
        waiter: asyncio.Future[bool] = loop.create_future()
        ex.waiter = waiter
        if timeout is not None:
            self.last_rx = loop.time()
            ex.timer = loop.call_at(self.last_rx + timeout, self._rx_timer, ex, waiter, timeout)
        try:
            return await waiter
        finally:
            ex.waiter = None
            if ex.timer is not None:
                ex.timer.cancel()
                ex.timer = None

    def _rx_timer(self, ex: _Exchange, waiter: asyncio.Future[bool], timeout: float) -> None:
        if waiter.done():
            return
        deadline = self.last_rx + timeout
        if self.loop.time() < deadline:  # bytes arrived meanwhile: the clock restarts
            ex.timer = self.loop.call_at(deadline, self._rx_timer, ex, waiter, timeout)
        else:
            waiter.set_result(False)

    async def drain(self, timeout: float | None) -> bool:
        """Wait until the write buffer drained (or the connection broke, or the response
        ended): False if the peer took no bytes for ``timeout`` seconds."""
        loop = self.loop
        while self.write_paused and self.alive:
            ex = self.ex
            if ex is not None and (ex.error is not None or (ex.done and ex.status >= 300)):
                return True  # nothing more will be sent (an early 2xx keeps flow control)
            waiter: asyncio.Future[bool] = loop.create_future()
            self.drain_waiter = waiter
            if timeout is not None:
                size = self.transport.get_write_buffer_size() if self.transport else 0
                self.tx_timer = loop.call_later(timeout, self._tx_timer, waiter, size, timeout)
            try:
                if not await waiter:
                    return False
            finally:
                self.drain_waiter = None
                if self.tx_timer is not None:
                    self.tx_timer.cancel()
                    self.tx_timer = None
        return True

    def _tx_timer(self, waiter: asyncio.Future[bool], size: int, timeout: float) -> None:
        if waiter.done():
            return
        now = self.transport.get_write_buffer_size() if self.transport else 0
        if now < size:  # the peer is reading, slowly: the clock restarts
            self.tx_timer = self.loop.call_later(timeout, self._tx_timer, waiter, now, timeout)
        else:
            waiter.set_result(False)


class _ResponseStream(httpx.AsyncByteStream):
    """A response body read straight from its connection's buffer.

    ``peak_buffered`` is the most body bytes that were buffered at once (for tests: it
    stays near :data:`READ_BUFFER_LIMIT` however large the body).
    """

    def __init__(self, pool: LeanHTTP, conn: _Conn, ex: _Exchange,
                 read_timeout: float | None) -> None:
        self._pool = pool
        self._conn = conn
        self._ex = ex
        self._read_timeout = read_timeout
        self._closed = False

    @property
    def peak_buffered(self) -> int:
        """The most body bytes buffered at once."""
        return self._ex.peak_buffered

    def __aiter__(self) -> _ResponseStream:
        return self

    async def __anext__(self) -> bytes:
        ex = self._ex
        chunks = ex.chunks
        while True:
            if chunks:
                chunk = chunks.popleft()
                ex.buffered -= len(chunk)
                if ex.buffered <= _RESUME_READING_AT and not ex.released:
                    self._conn.resume_reading()
                return chunk
            if ex.done:
                self._pool._settle(self._conn, ex)
                raise StopAsyncIteration
            if ex.error is not None:
                self._pool._release(self._conn, ex, reuse=False)
                raise ex.error
            if self._closed:
                raise httpx.StreamClosed()
            try:
                woke = await self._conn.wait_rx(ex, self._read_timeout)
            except BaseException:
                self._pool._release(self._conn, ex, reuse=False)
                raise
            if not woke and not chunks and not ex.done and ex.error is None:
                self._pool._release(self._conn, ex, reuse=False)
                raise httpx.ReadTimeout(
                    f"no response bytes within {self._read_timeout} s", request=ex.request)

    async def aclose(self) -> None:
        """Release the connection: reused if the response was received completely."""
        self._closed = True
        ex = self._ex
        ex.chunks.clear()
        ex.buffered = 0
        if ex.done:
            self._pool._settle(self._conn, ex)
        else:
            self._pool._release(self._conn, ex, reuse=False)


class LeanHTTP(PoolStats[_Key, _Conn]):
    """``send``/``aclose`` of :class:`httpx.AsyncClient` over asyncio + ``httptools``.

    Args:
        timeout: ``connect`` (TCP + TLS handshake), ``write`` (the peer taking no request
            bytes), ``read`` (no response bytes) and ``pool`` (waiting for a connection;
            None waits forever). A request's own ``timeout`` extension, when set, wins.
        max_connections: the most connections open (or opening) at once, over all origins.
        ssl_context: for ``https``; ``ssl.create_default_context()`` (made on the first
            https request) when None.
        keepalive_expiry: seconds an idle connection is kept for reuse.

    Only for asyncio (see :func:`usable`); use ``httpx.AsyncClient`` on trio.
    """

    def __init__(
        self,
        *,
        timeout: httpx.Timeout,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = 5.0,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if httptools is None:  # pragma: no cover - optional dependency
            raise RuntimeError("LeanHTTP needs httptools; use httpx.AsyncClient instead")
        self._timeouts: dict[str, float | None] = timeout.as_dict()
        self._max = max_connections
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._loop: asyncio.AbstractEventLoop | None = None
        # Idle connections per origin, oldest first: reuse pops the newest.
        self._idle: dict[_Key, deque[_Conn]] = {}
        self._n_idle = 0
        self._active: set[_Conn] = set()
        self._total = 0
        # Futures of waiting requests; resolved with a connection or None (a bare slot).
        self._waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._created = 0
        self._retries = 0

    # -- introspection ---------------------------------------------------------------------

    @property
    def retries(self) -> int:
        """Requests re-sent on a fresh connection after a reused one turned out dead."""
        return self._retries

    # -- sending ---------------------------------------------------------------------------

    async def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send ``request`` and return its response (body unread when ``stream``).

        With ``stream=True`` the caller must read the body to its end or ``aclose()`` the
        response; the connection is reused only when the body was received completely.

        Raises:
            RuntimeError: the client is closed, or not running under asyncio.
            httpx.UnsupportedProtocol: the URL is not ``http``/``https``.
            httpx.TransportError: ``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``,
                ``WriteError``, ``WriteTimeout``, ``ReadError``, ``ReadTimeout``,
                ``RemoteProtocolError``, ``LocalProtocolError`` (a body not matching its
                ``content-length``), each with ``request`` set.
            Exception: whatever the request body iterator raised.
        """
        loop = self._bind_loop()
        url = request.url
        scheme = url.scheme
        if scheme == "http":
            port = url.port or 80
        elif scheme == "https":
            port = url.port or 443
        else:
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme}://'." if scheme
                else "Request URL is missing an 'http://' or 'https://' protocol.",
                request=request)
        key: _Key = (scheme, url.raw_host.decode("ascii"), port)  # IDNA-encoded, no []
        timeouts = request.extensions.get("timeout") or self._timeouts
        replayable = isinstance(request.stream, httpx.ByteStream)
        fresh = False
        while True:
            conn = await self._acquire(loop, key, request, timeouts, fresh)
            ex = _Exchange(request, request.method == "HEAD")
            reused = conn.uses > 0
            try:
                response = await self._exchange(conn, ex, timeouts)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                self._release(conn, ex, reuse=False)
                if reused and replayable and not ex.rx and not fresh:
                    # A kept-alive connection the server had closed (the race every client
                    # meets): nothing was processed, so send it again on a new connection.
                    fresh = True
                    self._retries += 1
                    continue
                raise
            except BaseException:
                self._release(conn, ex, reuse=False)
                raise
            break
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response

    async def _exchange(self, conn: _Conn, ex: _Exchange,
                        timeouts: dict[str, float | None]) -> httpx.Response:
        request = ex.request
        conn.ex = ex
        conn.uses += 1
        if conn.parser is None:
            conn.parser = httptools.HttpResponseParser(conn)
        if conn.transport is None or not conn.alive:
            raise httpx.WriteError("the connection was closed", request=request)

        body_stream = request.stream
        lines, raw_length, has_te = _head(request)
        declared: int | None = None
        if raw_length is not None:
            try:
                declared = int(raw_length)
            except ValueError:
                raise httpx.LocalProtocolError(
                    f"invalid content-length {raw_length!r}", request=request) from None
        body: bytes | None = None
        chunked = False
        if isinstance(body_stream, httpx.ByteStream):
            body = request.content
            if declared is None and body and not has_te:
                lines.append(b"Content-Length: %d\r\n" % len(body))
        elif declared is None:
            chunked = True
            if not has_te:
                lines.append(b"Transfer-Encoding: chunked\r\n")
        head = _join_head(request, lines)

        write_timeout = timeouts.get("write")
        if body is not None:
            if declared is not None and declared != len(body):
                raise httpx.LocalProtocolError(
                    f"the request body is {len(body)} bytes, its content-length says "
                    f"{declared}", request=request)
            if len(body) <= _COALESCE_LIMIT:
                conn.write(ex, head + body if body else head)
            else:
                # In slices, under flow control: the transport would copy it all otherwise.
                conn.write(ex, head)
                view = memoryview(body)
                for start in range(0, len(body), _WRITE_HIGH_WATER):
                    if not await conn.drain(write_timeout):
                        raise _write_timeout(request, write_timeout)
                    if self._stop_sending(conn, ex):
                        return self._response(conn, ex, timeouts)  # answered early
                    conn.write(ex, view[start:start + _WRITE_HIGH_WATER])
            ex.sent_all = True
        else:
            conn.write(ex, head)
            if not await self._send_body(conn, ex, body_stream, declared, chunked,
                                         write_timeout):
                return self._response(conn, ex, timeouts)  # answered early
            ex.sent_all = True
        if ex.done:
            self._settle(conn, ex)
        elif conn.write_paused and not await conn.drain(write_timeout):
            # The tail of the request still sits in the transport's buffer.
            raise _write_timeout(request, write_timeout)

        read_timeout = timeouts.get("read")
        while not ex.headers_done:
            if ex.error is not None:
                raise ex.error
            if not await conn.wait_rx(ex, read_timeout) and not _has_news(ex):
                raise httpx.ReadTimeout(
                    f"no response within {read_timeout} s", request=request)
        return self._response(conn, ex, timeouts)

    async def _send_body(self, conn: _Conn, ex: _Exchange, body_stream: object,
                         declared: int | None, chunked: bool,
                         write_timeout: float | None) -> bool:
        """Write a streamed body; False if the server answered before it was all sent."""
        request = ex.request
        if not hasattr(body_stream, "__aiter__"):
            raise RuntimeError("Attempted to send a sync request with an async client.")
        iterator: AsyncIterator[bytes] = body_stream.__aiter__()
        sent = 0
        try:
            while True:
                if not await conn.drain(write_timeout):
                    raise _write_timeout(request, write_timeout)
                if self._stop_sending(conn, ex):
                    return False
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                if not chunk:
                    continue
                size = len(chunk)
                sent += size
                if declared is not None and sent > declared:
                    raise httpx.LocalProtocolError(
                        f"the request body is longer than its content-length ({declared})",
                        request=request)
                if self._stop_sending(conn, ex):
                    return False
                if chunked:
                    conn.write(ex, b"%x\r\n" % size, chunk, b"\r\n")
                else:
                    conn.write(ex, chunk)
        finally:
            aclose: Callable[[], Any] | None = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        if declared is not None and sent != declared:
            raise httpx.LocalProtocolError(
                f"the request body is {sent} bytes, its content-length says {declared}",
                request=request)
        if chunked:
            if self._stop_sending(conn, ex):
                return False
            conn.write(ex, b"0\r\n\r\n")
        return True

    def _stop_sending(self, conn: _Conn, ex: _Exchange) -> bool:
        """Whether to stop writing the body: answered already, or the connection broke."""
        if (ex.done or ex.headers_done) and (not conn.alive or ex.status >= 300):
            return True  # the server answered (early): return that answer
        # An early 2xx on a live connection (nginx answers before discarding the body) does
        # not stop the body: OSS only stores what it received, so all of it is sent.
        if ex.error is not None or not conn.alive or conn.transport is None:
            if ex.error is not None and ex.rx:
                raise ex.error
            raise httpx.WriteError("the connection was lost while sending the request",
                                   request=ex.request)
        return False

    def _response(self, conn: _Conn, ex: _Exchange,
                  timeouts: dict[str, float | None]) -> httpx.Response:
        return httpx.Response(
            ex.status,
            headers=ex.headers,
            stream=_ResponseStream(self, conn, ex, timeouts.get("read")),
            request=ex.request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": ex.reason},
        )

    # -- the pool ----------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "LeanHTTP only runs under asyncio; use httpx.AsyncClient on other event "
                "loops (trio)") from None
        self._check_open()
        if loop is not self._loop:
            if self._loop is not None:
                if self._active or self._waiters:
                    raise RuntimeError("LeanHTTP is in use by another event loop")
                self._drop_idle()  # connections of a previous loop cannot be used here
            self._loop = loop
        return loop

    async def _acquire(self, loop: asyncio.AbstractEventLoop, key: _Key,
                       request: httpx.Request, timeouts: dict[str, float | None],
                       fresh: bool) -> _Conn:
        """A connection (reused, or new and connected) holding one slot."""
        self._check_open()
        conn: _Conn | None = None
        have_slot = False
        if not fresh:
            idle = self._idle.get(key)
            if idle:
                now = loop.time()
                while idle:
                    candidate = idle.pop()
                    self._n_idle -= 1
                    if candidate.alive and now < candidate.idle_until:
                        conn = candidate
                        have_slot = True
                        break
                    candidate.abort()
                    self._total -= 1  # nobody waits while a connection is idle
        if not have_slot:
            if self._total < self._max:
                self._total += 1
                have_slot = True
            elif self._n_idle:
                self._pop_oldest_idle().abort()  # its slot is ours
                have_slot = True
        if not have_slot:
            conn = await self._wait(loop, request, timeouts.get("pool"))
            if conn is not None and (fresh or conn.key != key or not conn.alive
                                     or loop.time() >= conn.idle_until):
                conn.abort()  # another origin's, or dead: keep the slot, replace it
                conn = None
        if conn is None:
            try:
                conn = await self._connect(loop, key, request, timeouts.get("connect"))
            except BaseException:
                self._free_slot()
                raise
        if self._closed:  # closed while we connected or waited: do not leak the socket
            conn.abort()
            self._free_slot()
            self._check_open()
        self._active.add(conn)
        return conn

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("LeanHTTP is closed")

    async def _wait(self, loop: asyncio.AbstractEventLoop, request: httpx.Request,
                    timeout: float | None) -> _Conn | None:
        """Queue for a slot (FIFO); return the connection handed over with it, if any."""
        waiter: asyncio.Future[_Conn | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, self._pool_timeout, waiter, request, timeout)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a slot, then cancelled before resuming: pass it on.
                granted = waiter.result()
                if granted is not None:
                    self._put_idle(granted)
                else:
                    self._free_slot()
            elif not waiter.done() or waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _pool_timeout(self, waiter: asyncio.Future[_Conn | None], request: httpx.Request,
                      timeout: float) -> None:
        if waiter.done():
            return
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        waiter.set_exception(httpx.PoolTimeout(
            f"no connection available within {timeout} s (all {self._max} connections busy)",
            request=request))

    async def _connect(self, loop: asyncio.AbstractEventLoop, key: _Key,
                       request: httpx.Request, timeout: float | None) -> _Conn:
        scheme, host, port = key
        conn = _Conn(self, key, loop)
        ssl_context = None
        server_hostname = None
        if scheme == "https":
            if self._ssl_context is None:
                self._ssl_context = ssl.create_default_context()
            ssl_context = self._ssl_context
            sni = request.extensions.get("sni_hostname")
            server_hostname = sni if isinstance(sni, str) else host
        task = loop.create_task(loop.create_connection(
            lambda: conn, host, port, ssl=ssl_context, server_hostname=server_hostname))
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        except BaseException:
            _reap(task)
            raise
        if not done:
            _reap(task)
            raise httpx.ConnectTimeout(
                f"connecting to {host}:{port} took longer than {timeout} s", request=request)
        try:
            task.result()
        except (OSError, ValueError) as exc:  # refused, unreachable, DNS, TLS (an OSError)
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from exc
        self._created += 1
        return conn

    def _settle(self, conn: _Conn, ex: _Exchange) -> None:
        """The response was received completely: release, reusing if allowed."""
        if not ex.released:
            self._release(conn, ex, reuse=ex.sent_all and ex.keep_alive and ex.error is None)

    def _release(self, conn: _Conn, ex: _Exchange, *, reuse: bool) -> None:
        """Give back ``conn`` and its slot (once per exchange): idle, to a waiter, or closed."""
        if ex.released:
            return
        ex.released = True
        if conn.ex is ex:
            conn.ex = None
        self._active.discard(conn)
        if reuse and conn.alive and not self._closed:
            conn.resume_reading()
            self._put_idle(conn)
        else:
            conn.abort()
            self._free_slot()

    def _put_idle(self, conn: _Conn) -> None:
        """Hand a reusable connection (with its slot) to the first waiter, or park it."""
        loop = conn.loop
        conn.idle_until = loop.time() + self._keepalive_expiry
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # (a cancelled waiter has yet to remove itself)
                waiter.set_result(conn)
                return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = deque()
        idle.append(conn)
        self._n_idle += 1
        if self._sweeper is None:
            self._sweeper = loop.call_at(conn.idle_until, self._sweep)

    def _free_slot(self) -> None:
        """Hand a slot to the first waiter, or give it back."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # (a cancelled waiter has yet to remove itself)
                waiter.set_result(None)
                return
        self._total -= 1

    def _sweep(self) -> None:
        """Close idle connections past their keep-alive (or dead); re-arm while any idle."""
        self._sweeper = None
        if self._loop is None:
            return
        now = self._loop.time()
        next_due: float | None = None
        for key in list(self._idle):
            idle = self._idle[key]
            while idle and (now >= idle[0].idle_until or not idle[0].alive):
                idle.popleft().abort()
                self._n_idle -= 1
                self._total -= 1  # nobody waits while a connection is idle
            if idle:
                due = idle[0].idle_until
                next_due = due if next_due is None else min(next_due, due)
            else:
                del self._idle[key]
        if next_due is not None:
            self._sweeper = self._loop.call_at(next_due, self._sweep)

    def _drop_idle(self) -> list[_Conn]:
        dropped = [conn for idle in self._idle.values() for conn in idle]
        self._idle.clear()
        self._total -= self._n_idle
        self._n_idle = 0
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in dropped:
            with contextlib.suppress(RuntimeError):  # the loop it belonged to is closed
                conn.abort()
        return dropped

    async def aclose(self) -> None:
        """Close every connection; later :meth:`send` calls raise :class:`RuntimeError`.

        Waiting requests raise :class:`RuntimeError`; responses still being received fail
        with a read error.
        """
        if self._closed:
            return
        self._closed = True
        closing = self._drop_idle()
        active = list(self._active)
        self._active.clear()
        for conn in active:
            conn.close_by_client()
        closing += active
        waiters = list(self._waiters)
        self._waiters.clear()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("LeanHTTP is closed"))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - closed outside a loop
            return
        pending = [c.lost for c in closing if c.loop is loop and not c.lost.done()]
        if pending:
            # Shielded and bounded: the sockets close on the next loop iterations.
            await asyncio.shield(asyncio.wait(pending, timeout=_CLOSE_WAIT))

    async def __aenter__(self) -> LeanHTTP:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _head(request: httpx.Request) -> tuple[list[bytes], bytes | None, bool]:
    """The request line and header lines (exactly ``request.headers.raw``), the
    ``content-length`` value, and whether there is a ``transfer-encoding`` header."""
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    length: bytes | None = None
    has_te = False
    for name, value in request.headers.raw:
        lines.append(b"%s: %s\r\n" % (name, value))
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            length = value
        elif size == 17 and name.lower() == b"transfer-encoding":
            has_te = True
    return lines, length, has_te


def _join_head(request: httpx.Request, lines: list[bytes]) -> bytes:
    lines.append(b"\r\n")
    head = b"".join(lines)
    # One CR LF per line and no other CR or LF: no header smuggled in through a value.
    if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines):
        raise httpx.LocalProtocolError("illegal CR or LF in the request line or a header",
                                       request=request)
    return head


def _write_timeout(request: httpx.Request, timeout: float | None) -> httpx.WriteTimeout:
    return httpx.WriteTimeout(f"the server took no request bytes for {timeout} s",
                              request=request)


def _has_news(ex: _Exchange) -> bool:
    """Whether the response headers (or an error) arrived for ``ex``."""
    return ex.headers_done or ex.error is not None


def _reap(task: asyncio.Task[Any]) -> None:
    """Cancel a connection attempt; close its transport if it succeeded anyway."""

    def done(task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        transport, _ = task.result()
        transport.abort()

    task.cancel()
    task.add_done_callback(done)
