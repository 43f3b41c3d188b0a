"""File uploads sent from a worker thread: one thread hop per request instead of per chunk.

A part (or a whole file for ``put_object(file=...)``) is sent by one blocking job in a worker
thread over a keep-alive connection of its own: the request line and headers, then a loop of
``readinto`` -> CRC-64 -> ``sendall`` over one reused buffer (1 MiB; 256 KiB for bodies over
32 MiB), then the (small)
response. Compared with streaming the file through the event loop (a worker-thread hop per
2 MiB read, asyncio transport buffers, an event-loop wake-up per socket write), this takes
about a quarter less client CPU on a 1 GiB resumable upload into the nginx sink (the
``ablations`` group of ``benchmarks/``), and holds 1 MiB per request instead of two 2 MiB
chunks. Reading, CRC and ``sendall`` all release the GIL, so parts really run in parallel.

Only plain file paths take this route (:class:`~oss_callback._body.FileRangeBody`), and only
when the client uses its own network stack (a custom httpx ``transport=`` sends everything
through httpx, so tests with ``MockTransport``/respx see every request). Everything above the
wire is shared with the httpx path: signing, retries, error mapping and the CRC-64 check
happen in :class:`~oss_callback._http.Session`, which receives an ordinary
:class:`httpx.Response` and httpx exceptions from here.

Behaviour kept from the httpx path, and tested:

* the file is checked unchanged (size, mtime) before its last chunk leaves, so a changed file
  fails the request instead of storing a mixed object;
* timeouts: ``connect`` for connecting, ``write`` per blocked send, ``read`` per blocked
  receive; ``None`` waits forever;
* cancellation (task cancelled, Ctrl-C in the sync facade) shuts the socket down, which
  unblocks the thread at once; the connection is dropped, never reused;
* a server that answers before reading the whole body (an early 403, say) still has its
  answer read and returned; a reused keep-alive connection that the server had already
  closed is retried once on a fresh connection;
* progress is reported on the event loop thread every 1 MiB, and the sender waits for it
  (a callback that raises stops the upload before more bytes are sent).
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import httpx

from ._body import FileRangeBody
from ._crc64 import crc64
from ._errors import FileChangedError

__all__ = ["WirePool"]

logger = logging.getLogger("oss_callback")

#: Read/send buffer per request: all a request holds of the file. Measured into the nginx
#: sink (5 interleaved rounds each, repeated): for resumable parts of 8 MiB, 1 MiB used
#: 10-25% less CPU than 256 KiB (0.70-0.74 vs 0.82-0.93 CPU s/GiB); 2 and 4 MiB were no
#: better.
SEND_BUFFER = 1024 * 1024
#: ... but one long body (over ``LONG_BODY``: ``put_object`` of a large file, big parts)
#: is read in 256 KiB pieces: put_object of 1 GiB took 0.57-0.63 CPU s with 256 KiB against
#: 0.91-1.10 with 1 MiB (and 512 KiB was no better than 1 MiB); parts of 64 MiB were equal.
LONG_SEND_BUFFER = 256 * 1024
LONG_BODY = 32 * 1024 * 1024
#: Progress is posted to the event loop at most once per this many bytes.
PROGRESS_STEP = 1024 * 1024
#: Longest response body read (OSS answers uploads with an empty body, or the callback
#: server's answer; errors are a few hundred bytes).
MAX_RESPONSE_BODY = 16 * 1024 * 1024
#: How long a cancelled request waits for its thread to notice (it is woken at once by the
#: socket shutdown; this only bounds a thread stuck in a slow disk read).
_ABORT_WAIT = 10.0

_Origin = tuple[str, str, int]
_Result = tuple[int, list[tuple[str, str]], bytes, int, int]


class _Aborted(Exception):
    """The awaiting task was cancelled; the job stops and drops its connection."""


class WirePool:
    """Blocking keep-alive HTTP/1.1 connections for file bodies, shared by worker threads.

    Thread-safe. Idle connections are kept LIFO per origin (at most ``max_idle`` in all)
    and dropped after ``keepalive_expiry`` seconds or when the server has closed them.
    Requests run on threads of their own limiter (``max_idle`` at once), not anyio's
    default one (40 threads, shared with everything else that uses worker threads): a
    request holds its thread for as long as it sends, and must neither starve other
    thread work nor cap a resumable upload's concurrency at 40.
    """

    def __init__(self, *, timeout: httpx.Timeout, max_idle: int,
                 keepalive_expiry: float = 5.0, ssl_context: ssl.SSLContext | None = None
                 ) -> None:
        self.timeout = timeout
        self.max_idle = max_idle
        self.limiter = anyio.CapacityLimiter(max_idle)
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[_Origin, deque[tuple[http.client.HTTPConnection, float]]] = {}
        self._idle_count = 0
        self._lock = threading.Lock()
        self._ssl = ssl_context  # default: httpx's (certifi), made on first https use
        self._closed = False
        #: connections opened so far (tests assert reuse with it).
        self.connections_opened = 0

    # -- connections -------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            return self._ssl

    def _acquire(self, origin: _Origin) -> tuple[http.client.HTTPConnection, bool]:
        """An idle live connection to ``origin`` (reused=True) or a new, unconnected one."""
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise RuntimeError("this client is closed")
            idle = self._idle.get(origin)
            while idle:
                conn, since = idle.pop()
                self._idle_count -= 1
                if now - since < self.keepalive_expiry and _alive(conn):
                    return conn, True
                conn.close()
        scheme, host, port = origin
        connect = self.timeout.connect
        new: http.client.HTTPConnection
        if scheme == "https":
            new = http.client.HTTPSConnection(host, port, timeout=connect,
                                              context=self._ssl_context())
        else:
            new = http.client.HTTPConnection(host, port, timeout=connect)
        return new, False

    def _release(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._closed or conn.sock is None or self._idle_count >= self.max_idle:
                conn.close()
                return
            self._idle.setdefault(origin, deque()).append((conn, time.monotonic()))
            self._idle_count += 1

    def close(self) -> None:
        """Close idle connections; later sends raise. Idempotent."""
        with self._lock:
            self._closed = True
            idle, self._idle, self._idle_count = self._idle, {}, 0
        for conns in idle.values():
            for conn, _ in conns:
                conn.close()

    # -- the request -------------------------------------------------------------------
    async def send_file(
        self,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        body: FileRangeBody,
        on_bytes: Callable[[int], None] | None,
    ) -> httpx.Response:
        """Send ``body`` with ``headers`` (already signed); return the whole response.

        Raises httpx exceptions (``ConnectError``, ``WriteTimeout``, ...) like
        ``httpx.AsyncClient.send``, and :class:`FileChangedError` / ``OSError`` from reading
        the file. Sets ``body.crc`` and ``body.sent``.
        """
        request = httpx.Request(method, url, headers=headers)
        job = _Job(self, request, body)
        if on_bytes is not None:
            job.post = _poster(on_bytes, job)
        try:
            status, raw_headers, data, crc, sent = await anyio.to_thread.run_sync(
                job.run, abandon_on_cancel=True, limiter=self.limiter)
        except anyio.get_cancelled_exc_class():
            job.abort()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(job.finished.wait, _ABORT_WAIT)
            raise
        except Exception:
            if job.error is not None:
                raise job.error from None
            raise
        if job.error is not None:
            raise job.error
        body.crc, body.sent = crc, sent
        return httpx.Response(status, headers=raw_headers, content=data, request=request)


def _alive(conn: http.client.HTTPConnection) -> bool:
    """False if the server closed (or wrote to) the idle connection."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _poster(on_bytes: Callable[[int], None], job: _Job) -> Callable[[int], None]:
    """A thread-side function that runs ``on_bytes(n)`` on the event loop's thread.

    The sender waits for each report, as the streaming path does, so a progress callback
    that raises (to stop an upload) stops it before more bytes go out: the job is aborted
    and :meth:`WirePool.send_file` raises that exception.
    """
    token = anyio.lowlevel.current_token()

    def deliver(n: int) -> None:
        if job.error is not None:
            return
        try:
            on_bytes(n)
        except BaseException as exc:  # noqa: BLE001 - re-raised by send_file
            job.error = exc
            job.abort()

    def post(n: int) -> None:
        try:
            anyio.from_thread.run_sync(deliver, n, token=token)
        except Exception as exc:  # noqa: BLE001 - the event loop is gone (re-raised)
            if job.error is None:
                job.error = exc
            job.abort()

    return post


class _Job:
    """One request in a worker thread; :meth:`abort` may be called from the event loop."""

    def __init__(self, pool: WirePool, request: httpx.Request, body: FileRangeBody) -> None:
        self.pool = pool
        self.request = request
        self.body = body
        self.post: Callable[[int], None] | None = None
        #: what the progress callback raised (it aborts the request).
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._aborted = False
        self._conn: http.client.HTTPConnection | None = None
        self._reported = 0

    def abort(self) -> None:
        self._aborted = True
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> _Result:
        try:
            url = self.request.url
            origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
            body = self.body
            with open(body.path, "rb", buffering=0) as f:
                for attempt in range(2):
                    conn, reused = self.pool._acquire(origin)
                    self._conn = conn
                    if self._aborted:  # abort() may have missed this connection
                        conn.close()
                        raise _Aborted
                    try:
                        result, keep = self._exchange(conn, f)
                    except _Stale:
                        conn.close()
                        if attempt == 0 and reused and not self._aborted:
                            logger.debug("keep-alive connection was closed by the server; "
                                         "sending again on a new one")
                            self._rewind()
                            continue
                        raise httpx.RemoteProtocolError(
                            "the server closed the connection without answering",
                            request=self.request) from None
                    except BaseException:
                        conn.close()
                        raise
                    if keep and not self._aborted:
                        self.pool._release(origin, conn)
                    else:
                        conn.close()
                    return result
            raise AssertionError("unreachable")  # pragma: no cover
        except _Aborted:
            raise httpx.WriteError("cancelled", request=self.request) from None
        finally:
            self._conn = None
            self.finished.set()

    def _rewind(self) -> None:
        if self.post is not None and self._reported:
            self.post(-self._reported)
        self._reported = 0

    def _connect(self, conn: http.client.HTTPConnection) -> None:
        timeout = self.pool.timeout
        try:
            conn.connect()
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting timed out: {exc}",
                                       request=self.request) from exc
        except OSError as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}",
                                     request=self.request) from exc
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(timeout.write)
        self.pool.connections_opened += 1

    def _exchange(self, conn: http.client.HTTPConnection, f: io.FileIO) -> tuple[_Result, bool]:
        """Send the request and read the answer; ``(result, keep_alive)``."""
        request, body = self.request, self.body
        fresh = conn.sock is None
        if fresh:
            self._connect(conn)
        sock = conn.sock
        assert sock is not None
        sock.settimeout(self.pool.timeout.write)
        head = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        size = body.size or 0
        f.seek(body.offset)
        crc = sent = unreported = 0
        buf = bytearray(min(LONG_SEND_BUFFER if size > LONG_BODY else SEND_BUFFER, size) or 1)
        view = memoryview(buf)
        try:
            try:
                sock.sendall(b"".join(head))
                while sent < size:
                    try:
                        n = f.readinto(view[: min(len(buf), size - sent)])
                    except OSError as exc:
                        raise _FileReadError(exc) from exc
                    if self._aborted:
                        raise _Aborted
                    if not n:
                        raise _shrank(body, size - sent)
                    if sent + n == size:
                        body.check_unchanged(f)
                    chunk = view[:n]
                    crc = crc64(chunk, crc)
                    sock.sendall(chunk)
                    sent += n
                    if self.post is not None:
                        unreported += n
                        if unreported >= PROGRESS_STEP or sent == size:
                            self.post(unreported)
                            self._reported += unreported
                            unreported = 0
                            if self._aborted:
                                raise _Aborted
            except TimeoutError as exc:
                raise httpx.WriteTimeout("sending the request timed out",
                                         request=request) from exc
            except OSError as exc:
                if self._aborted:
                    raise _Aborted from None
                # The server may have answered early (and closed): read that answer.
                try:
                    answer = self._read_response(conn, sock)
                except (_Stale, httpx.TransportError):
                    if not fresh and sent == 0:
                        raise _Stale from exc
                    raise httpx.WriteError(f"{type(exc).__name__}: {exc}",
                                           request=request) from exc
                return (answer[0], answer[1], answer[2], crc, sent), False
            status, headers, data, keep = self._read_response(conn, sock)
        except _FileReadError as exc:
            raise exc.error from None
        except _Stale:
            if fresh:
                raise httpx.RemoteProtocolError(
                    "the server closed the connection without answering",
                    request=request) from None
            raise
        return (status, headers, data, crc, sent), keep

    def _read_response(self, conn: http.client.HTTPConnection, sock: socket.socket
                       ) -> tuple[int, list[tuple[str, str]], bytes, bool]:
        request = self.request
        try:
            sock.settimeout(self.pool.timeout.read)
            response = http.client.HTTPResponse(sock, method=request.method)
            try:
                try:
                    response.begin()
                except http.client.RemoteDisconnected:
                    raise _Stale from None
                data = response.read(MAX_RESPONSE_BODY + 1)
                if len(data) > MAX_RESPONSE_BODY:
                    raise httpx.RemoteProtocolError(
                        f"response body over {MAX_RESPONSE_BODY} bytes", request=request)
                keep = not response.will_close and response.isclosed()
                headers = response.getheaders()
                status = response.status
            finally:
                response.close()  # its socket file, not the socket
        except TimeoutError as exc:
            raise httpx.ReadTimeout("waiting for the response timed out",
                                    request=request) from exc
        except http.client.HTTPException as exc:
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}",
                                            request=request) from exc
        except OSError as exc:
            if self._aborted:
                raise _Aborted from None
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return status, headers, data, keep


class _Stale(Exception):
    """The connection was closed by the server before any answer."""


class _FileReadError(Exception):
    """Reading the source file failed (kept apart from socket errors, also ``OSError``)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _shrank(body: FileRangeBody, missing: int) -> FileChangedError:
    return FileChangedError(
        f"{body.path} shrank while it was being uploaded ({missing} bytes missing at offset "
        f"{body.offset + (body.size or 0) - missing}); upload it again"
    )
