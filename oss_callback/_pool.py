"""A fast HTTP/1.1 connection pool for httpx: O(1) per request, exception- and cancel-safe.

httpcore's :class:`~httpcore.AsyncConnectionPool` re-scans every queued request against every
connection on each request and release (``_assign_requests_to_connections``), which costs
O(queued x connections) Python calls per request: with 64 requests in flight that was ~65%
of the client's CPU. This pool keeps, per origin, a LIFO of idle connections and a FIFO of
waiters, so acquiring and releasing a connection touches one connection and at most one
waiter.

It speaks HTTP/1.1 only (what OSS speaks; no HTTP/2, proxies or Unix sockets) and reuses
httpcore's protocol implementation (:class:`httpcore.AsyncHTTP11Connection`) and httpx's
request/response conversion and exception mapping, so requests behave, and fail, exactly as
with ``httpx.AsyncHTTPTransport(http1=True, http2=False)``.

Accounting: a *slot* is one unit of ``max_connections``. A slot is held by an idle
connection, by a request between acquiring and releasing its connection (connecting,
sending, or streaming the response), or by a waiter that has been handed a connection or a
slot but has not resumed yet. ``_total`` counts held slots. While anyone waits, there is no
idle connection and ``_total == max_connections`` (released connections and freed slots go
to the first waiter before anything else), which is what makes the queue fair (FIFO) and the
hand-over race-free.
"""

from __future__ import annotations

import contextlib
import math
import select
import socket
import ssl
import sys
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

import anyio
import httpcore
import httpx
from httpx._transports.default import AsyncResponseStream, map_httpcore_exceptions

from ._poolstats import PoolStats

__all__ = ["FastConnectionPool", "FastHTTPTransport", "PoolClosedError"]

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_KEEPALIVE_EXPIRY = 5.0

# Closing a socket does not wait on the peer (httpcore's TLS streams are not
# "standard compatible", so there is no close_notify round trip), but it runs under a
# shield and so must be bounded anyway: a cancelled caller must never hang here.
_CLOSE_TIMEOUT = 5.0

# How often (seconds) the idle lists are swept for connections past their keep-alive.
# Only the connection popped for a request is checked otherwise, so without a sweep a
# connection at the bottom of a LIFO could sit in CLOSE_WAIT indefinitely under low load.
_SWEEP_INTERVAL = 1.0

_Key = tuple[bytes, bytes, int]  # (scheme, host, port): httpcore.Origin is unhashable

SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class PoolClosedError(RuntimeError):
    """A request was made on (or was waiting for) a pool that has been closed."""


class _Connection(httpcore.AsyncHTTP11Connection):
    """An HTTP/1.1 connection with the pool's bookkeeping."""

    def __init__(
        self,
        key: _Key,
        origin: httpcore.Origin,
        stream: httpcore.AsyncNetworkStream,
        keepalive_expiry: float | None,
    ) -> None:
        super().__init__(origin=origin, stream=stream, keepalive_expiry=keepalive_expiry)
        self.pool_key = key  # httpcore.Origin is unhashable
        # When an idle connection stops being reusable (set each time it is released).
        self.pool_idle_until = math.inf
        # Looked up once: httpcore's has_expired() asks the stream for it on every call,
        # and anyio builds a dict of all the stream's attributes to answer.
        self._pool_socket: socket.socket | None = stream.get_extra_info("socket")

    def is_stale(self, now: float) -> bool:
        """Whether an idle connection must not be reused.

        Past its keep-alive, or closed by the server: an idle HTTP/1.1 socket that is
        readable is at EOF (or holds bytes nobody asked for), like httpcore's check.
        """
        return now > self.pool_idle_until or _is_readable(self._pool_socket)


def _is_readable(sock: socket.socket | None) -> bool:
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True  # no socket to ask: treat as closed
    if sys.platform == "win32" or not hasattr(select, "poll"):
        return bool(select.select([fd], [], [], 0)[0])
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Waiter:
    """One request waiting for a connection; ``granted`` once handed a slot."""

    __slots__ = ("conn", "event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False
        # With ``granted``: a connection (idle, possibly of another origin) that comes
        # with its slot, or None for a bare slot (permission to open a new connection).
        self.conn: _Connection | None = None


class FastConnectionPool(PoolStats[_Key, _Connection]):
    """An HTTP/1.1 connection pool implementing httpcore's async request interface.

    Args:
        ssl_context: the context for ``https`` origins (httpcore's default if None).
        max_connections: the most connections open (or opening) at once, over all origins.
        keepalive_expiry: seconds an idle connection is kept; None keeps it until the
            server closes it.
        network_backend: httpcore's network backend (:class:`httpcore.AnyIOBackend` by
            default: works under asyncio and trio).
        socket_options: ``setsockopt`` arguments applied to each new socket.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry: float | None = DEFAULT_KEEPALIVE_EXPIRY,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if ssl_context is None:
            ssl_context = httpcore.default_ssl_context()
        # ALPN is set once here rather than per connection (as httpcore does): offering
        # only http/1.1 keeps servers from picking h2, which this pool cannot speak.
        ssl_context.set_alpn_protocols(["http/1.1"])
        self._ssl_context = ssl_context
        self._max = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._backend = network_backend if network_backend is not None else (
            httpcore.AnyIOBackend()
        )
        self._socket_options = list(socket_options) if socket_options is not None else None
        # Idle connections per origin, oldest first: reuse pops the newest (LIFO keeps the
        # working set small and warm), the sweep and eviction take the oldest.
        self._idle: dict[_Key, deque[_Connection]] = {}
        self._n_idle = 0
        # Connections handed to requests; only so that aclose() can close them too.
        self._active: set[_Connection] = set()
        self._total = 0
        self._waiters: deque[_Waiter] = deque()
        self._closed = False
        self._next_sweep = 0.0
        self._created = 0

    # -- the request interface -------------------------------------------------------------

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send ``request`` on a pooled connection; the response body is left unread.

        The connection goes back to the pool when the response stream is closed (reused if
        its HTTP/1.1 exchange completed, closed otherwise).

        Raises:
            httpcore.UnsupportedProtocol: the URL is not ``http``/``https``.
            httpcore.PoolTimeout: no connection within the ``pool`` timeout.
            PoolClosedError: the pool was closed.
            Exception: httpcore's connect/read/write errors and timeouts, or whatever the
                request body iterator raised; the connection is closed and its slot freed.
        """
        scheme = request.url.scheme
        if scheme not in (b"http", b"https"):
            raise httpcore.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{scheme.decode('ascii')}://'."
                if scheme
                else "Request URL is missing an 'http://' or 'https://' protocol."
            )
        conn = await self._acquire(request)
        try:
            response = await conn.handle_async_request(request)
        except BaseException:
            # httpcore has already closed the connection unless the exchange completed;
            # either way the slot must be given back, or the pool shrinks for good.
            await self._release(conn)
            raise
        assert isinstance(response.stream, AsyncIterable)
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_PooledStream(self, conn, response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every connection (idle and in use); later requests raise PoolClosedError.

        Requests waiting for a connection are woken and raise :class:`PoolClosedError`;
        responses still being read fail with a read error.
        """
        self._closed = True
        closing: list[_Connection] = list(self._active)
        self._active.clear()
        for idle in self._idle.values():
            closing.extend(idle)
        self._idle.clear()
        self._total -= self._n_idle
        self._n_idle = 0
        waiters = list(self._waiters)
        self._waiters.clear()
        for waiter in waiters:
            waiter.event.set()  # not granted: it sees the pool closed
        await _close_all(closing)

    async def __aenter__(self) -> FastConnectionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- acquiring -------------------------------------------------------------------------

    async def _acquire(self, request: httpcore.Request) -> _Connection:
        """Return a connection (reused, or new and connected) holding one slot."""
        self._raise_if_closed()
        origin = request.url.origin
        key: _Key = (origin.scheme, origin.host, origin.port)
        stale: list[_Connection] = []
        conn, have_slot = self._checkout(key, stale)
        if stale:
            await _close_all(stale)  # shielded: cannot be interrupted while we hold a slot
        if not have_slot:
            conn = await self._wait(request)
            if conn is not None and (conn.pool_key != key or conn.is_stale(time.monotonic())):
                # Handed another origin's connection (the pool is full, so one has to go to
                # make room) or one the server closed meanwhile: keep its slot, replace it.
                await _close_all([conn])
                conn = None
        if conn is None:
            try:
                conn = await self._connect(key, origin, request)
            except BaseException:
                self._free_slot()
                raise
        if self._closed:  # closed while we connected or waited: do not leak the socket
            await self._release(conn)
            self._raise_if_closed()
        self._active.add(conn)
        return conn

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise PoolClosedError("the connection pool is closed")

    def _checkout(self, key: _Key, stale: list[_Connection]) -> tuple[_Connection | None, bool]:
        """Take an idle connection or a slot without waiting: ``(conn, have_slot)``.

        Synchronous, so that the pool's state cannot change under it. Connections found
        expired are moved to ``stale`` (slot freed) for the caller to close.
        """
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_INTERVAL
            self._sweep(now, stale)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            self._n_idle -= 1
            # Only this connection is checked: keep-alive expiry, and whether the server
            # closed it (an idle socket that is readable is at EOF).
            if not conn.is_stale(now):
                return conn, True
            stale.append(conn)
            self._free_slot()
        if self._total < self._max:
            self._total += 1
            return None, True
        if self._n_idle:
            # Full, but with idle connections to other origins: evict one (its slot is ours).
            stale.append(self._pop_oldest_idle())
            return None, True
        return None, False

    def _sweep(self, now: float, stale: list[_Connection]) -> None:
        """Move stale idle connections, oldest first, to ``stale`` (slots freed)."""
        for idle in self._idle.values():
            while idle and idle[0].is_stale(now):
                stale.append(idle.popleft())
                self._n_idle -= 1
                self._free_slot()

    async def _wait(self, request: httpcore.Request) -> _Connection | None:
        """Queue for a slot; return the connection handed over with it, if any."""
        timeout = request.extensions.get("timeout", {}).get("pool")
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            with anyio.move_on_after(timeout):
                await waiter.event.wait()
        except BaseException:
            # Cancelled. If a slot was handed over meanwhile, pass it on to the next waiter
            # (or back to the pool): dropping it would shrink the pool by one for good.
            self._abandon(waiter)
            raise
        if not waiter.granted:
            self._abandon(waiter)
            self._raise_if_closed()
            raise httpcore.PoolTimeout(
                f"no connection available within {timeout} s "
                f"(all {self._max} connections busy)"
            )
        return waiter.conn

    def _abandon(self, waiter: _Waiter) -> None:
        if not waiter.granted:
            with contextlib.suppress(ValueError):  # aclose() already emptied the queue
                self._waiters.remove(waiter)
        elif waiter.conn is not None:
            self._put_idle(waiter.conn)
        else:
            self._free_slot()

    async def _connect(
        self, key: _Key, origin: httpcore.Origin, request: httpcore.Request
    ) -> _Connection:
        timeouts = request.extensions.get("timeout", {})
        timeout = timeouts.get("connect")
        host = origin.host.decode("ascii")
        stream = await self._backend.connect_tcp(
            host=host,
            port=origin.port,
            timeout=timeout,
            socket_options=self._socket_options,
        )
        if origin.scheme == b"https":
            try:
                stream = await stream.start_tls(
                    self._ssl_context,
                    server_hostname=request.extensions.get("sni_hostname") or host,
                    timeout=timeout,
                )
            except BaseException:
                # httpcore closes the socket when the handshake fails, but not when it is
                # cancelled: that socket would leak (a ResourceWarning at best).
                await _close_all([stream])
                raise
        self._created += 1
        return _Connection(key, origin, stream, self._keepalive_expiry)

    # -- releasing -------------------------------------------------------------------------

    async def _release(self, conn: _Connection) -> None:
        """Give back ``conn`` (and its slot): to a waiter, to the idle list, or closed."""
        self._active.discard(conn)
        if conn.is_idle() and not self._closed:
            self._put_idle(conn)
            return
        try:
            if not conn.is_closed():
                await _close_all([conn])
        finally:
            # Closed first, then freed: the next connection never opens before this
            # socket is gone, so at most max_connections sockets exist at any time.
            self._free_slot()

    def _put_idle(self, conn: _Connection) -> None:
        """Hand a reusable connection (with its slot) to the first waiter, or park it."""
        if self._keepalive_expiry is not None:
            conn.pool_idle_until = time.monotonic() + self._keepalive_expiry
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.granted = True
            waiter.conn = conn
            waiter.event.set()
            return
        idle = self._idle.get(conn.pool_key)
        if idle is None:
            idle = self._idle[conn.pool_key] = deque()
        idle.append(conn)
        self._n_idle += 1

    def _free_slot(self) -> None:
        """Hand a slot to the first waiter, or give it back."""
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.granted = True
            waiter.conn = None
            waiter.event.set()
        else:
            self._total -= 1


class _PooledStream:
    """The response body; closing it returns the connection to the pool."""

    def __init__(
        self, pool: FastConnectionPool, conn: _Connection, stream: AsyncIterable[bytes]
    ) -> None:
        self._pool = pool
        self._conn = conn
        self._stream = stream
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._stream:
                yield chunk
        except BaseException:
            # httpcore has closed the connection; give its slot back now rather than when
            # (if ever) the caller closes the response.
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Finish the HTTP/1.1 exchange (or close the connection) and release it."""
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self._stream, "aclose", None)
            if aclose is not None:
                # Marks the connection idle if the whole response was read, else closes it.
                with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    await aclose()
        finally:
            await self._pool._release(self._conn)


async def _close_all(closeables: Iterable[Any]) -> None:
    """Close connections or streams: shielded, bounded, errors ignored (best effort)."""
    with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
        for closeable in closeables:
            with contextlib.suppress(Exception):
                await closeable.aclose()


class FastHTTPTransport(httpx.AsyncBaseTransport):
    """An httpx transport over :class:`FastConnectionPool` (HTTP/1.1, no proxies).

    A drop-in for ``httpx.AsyncHTTPTransport(verify=..., trust_env=..., http1=True,
    http2=False, limits=httpx.Limits(max_connections=N, keepalive_expiry=...))``: the same
    request/response conversion, the same httpx exception types, and the per-request
    timeouts (connect, read, write, and pool: the wait for a free connection).

    Args:
        verify: True (certifi's CA bundle), False (no verification), or an
            :class:`ssl.SSLContext`.
        trust_env: honour ``SSL_CERT_FILE``/``SSL_CERT_DIR`` (as httpx does). Off by default,
            like the SDK's client.
        max_connections: the most connections open at once (over all origins).
        keepalive_expiry: seconds an idle connection is kept for reuse.
        socket_options: ``setsockopt`` arguments applied to each new socket.

    Example::

        client = httpx.AsyncClient(transport=FastHTTPTransport(max_connections=64))
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        trust_env: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_expiry: float | None = DEFAULT_KEEPALIVE_EXPIRY,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> None:
        self._pool = FastConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=trust_env),
            max_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
            socket_options=socket_options,
        )

    @property
    def pool(self) -> FastConnectionPool:
        """The connection pool (for its counters)."""
        return self._pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; the response body is streamed (closing it frees the connection).

        Raises:
            httpx.TransportError: the httpx exception matching httpcore's (as with
                :class:`httpx.AsyncHTTPTransport`), e.g. :class:`httpx.PoolTimeout`.
            PoolClosedError: the transport was closed.
            Exception: whatever the request body iterator raised.
        """
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with map_httpcore_exceptions():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=AsyncResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close all connections; later requests raise :class:`PoolClosedError`."""
        await self._pool.aclose()
