"""A small real HTTP proxy on 127.0.0.1 for the proxy tests (import as ``proxy_helpers``).

It speaks the two forms an HTTP client uses through a proxy:

* ``CONNECT host:port`` (https:// URLs): it answers ``200 Connection established`` and then
  pipes the (TLS) bytes both ways;
* absolute-form requests (``PUT http://host:port/path HTTP/1.1``, http:// URLs): it connects
  to that host:port, forwards the request head as is (uvicorn accepts absolute-form) and then
  pipes both ways until either side closes. A client reuses such a connection only for the
  same origin, so every later request on it goes to the same upstream.

It records, per client connection, the first request line (method and target) and the bytes
it forwarded upstream. ``refuse_status=403`` makes it answer every request with that status
instead (a proxy that refuses).

One thread accepts; each connection gets a thread per direction. Sockets have timeouts and
readiness is polled, so nothing hangs: on exit every socket is shut down and closed and every
thread joined.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["ProxyConnection", "TestProxy", "closed_port"]

_HEAD_LIMIT = 64 * 1024
_POLL = 0.1
_IO_TIMEOUT = 30.0


class ProxyConnection:
    """One client connection the proxy accepted."""

    def __init__(self, client: socket.socket) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.method: str | None = None
        self.target: str | None = None
        self.bytes_up = 0  # bytes forwarded to the upstream server (request heads included)
        self.bytes_down = 0  # bytes forwarded back to the client
        self.error: str | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()

    @property
    def request_line(self) -> str:
        """``"METHOD target"`` of the first request, ``""`` if none was read."""
        return f"{self.method} {self.target}" if self.method else ""

    def add_up(self, n: int) -> None:
        with self._lock:
            self.bytes_up += n

    def add_down(self, n: int) -> None:
        with self._lock:
            self.bytes_down += n

    def shutdown(self) -> None:
        """Wake both pumps (they see EOF or an error and finish)."""
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class TestProxy:
    """An HTTP proxy on ``127.0.0.1:port`` in background threads; use as a context manager.

    Attributes:
        url: ``http://127.0.0.1:PORT``, for ``HTTP_PROXY``/``HTTPS_PROXY`` or ``proxy=``.
        connections: the client connections accepted, in order.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, *, refuse_status: int | None = None) -> None:
        self.refuse_status = refuse_status
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[ProxyConnection] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="test-proxy-accept",
                                          daemon=True)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> TestProxy:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._acceptor.is_alive():
            self._acceptor.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            conn.shutdown()
        for thread in threads:
            thread.join(5)
        for conn in connections:
            conn.close()

    # ------------------------------------------------------------------ what it saw

    @property
    def connections(self) -> list[ProxyConnection]:
        with self._lock:
            return list(self._connections)

    @property
    def request_lines(self) -> list[str]:
        """The first request line of every connection (``"CONNECT 127.0.0.1:PORT"``, ...)."""
        return [c.request_line for c in self.connections]

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded to upstream servers, over all connections."""
        return sum(c.bytes_up for c in self.connections)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every connection accepted so far has finished (clients closed theirs)."""
        return all(conn.done.wait(timeout) for conn in self.connections)

    # ------------------------------------------------------------------ serving

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(_IO_TIMEOUT)
            conn = ProxyConnection(sock)
            thread = threading.Thread(target=self._serve, args=(conn,),
                                      name="test-proxy-conn", daemon=True)
            with self._lock:
                if self._stop.is_set():
                    conn.close()
                    return
                self._connections.append(conn)
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: ProxyConnection) -> None:
        try:
            head, rest = self._read_head(conn.client)
            if head is None:
                return
            first = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = first.split(" ")
            if len(parts) != 3:
                conn.client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                    b"Connection: close\r\n\r\n")
                return
            conn.method, conn.target = parts[0], parts[1]
            if self.refuse_status is not None:
                conn.client.sendall(
                    f"HTTP/1.1 {self.refuse_status} Refused by test proxy\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
                return
            if conn.method.upper() == "CONNECT":
                host, _, port = conn.target.rpartition(":")
                address = (host.strip("[]"), int(port))
                forward = rest
            else:
                url = urlsplit(conn.target)
                if url.scheme != "http" or not url.hostname:
                    conn.client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                        b"Connection: close\r\n\r\n")
                    return
                address = (url.hostname, url.port or 80)
                forward = head + rest
            try:
                conn.upstream = socket.create_connection(address, timeout=_IO_TIMEOUT)
            except OSError as exc:
                conn.error = f"connect {address}: {exc}"
                conn.client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                    b"Connection: close\r\n\r\n")
                return
            if conn.method.upper() == "CONNECT":
                conn.client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if forward:
                conn.add_up(len(forward))
                conn.upstream.sendall(forward)
            down = threading.Thread(target=self._pump,
                                    args=(conn, conn.upstream, conn.client, conn.add_down),
                                    name="test-proxy-down", daemon=True)
            down.start()
            self._pump(conn, conn.client, conn.upstream, conn.add_up)
            down.join()
        except (OSError, ValueError) as exc:
            conn.error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.shutdown()
            conn.close()
            conn.done.set()

    def _read_head(self, sock: socket.socket) -> tuple[bytes | None, bytes]:
        """The request head (through the blank line) and whatever followed it."""
        buf = b""
        while b"\r\n\r\n" not in buf:
            if len(buf) > _HEAD_LIMIT or not self._wait_readable(sock):
                return None, b""
            chunk = sock.recv(65536)
            if not chunk:
                return None, b""
            buf += chunk
        end = buf.index(b"\r\n\r\n") + 4
        return buf[:end], buf[end:]

    def _wait_readable(self, sock: socket.socket) -> bool:
        """Poll until ``sock`` is readable; ``False`` once the proxy stops."""
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                if sel.select(_POLL):
                    return True
        return False

    def _pump(self, conn: ProxyConnection, src: socket.socket, dst: socket.socket,
              count: Callable[[int], None]) -> None:
        """Copy ``src`` to ``dst`` until EOF (then half-close ``dst``) or an error (then
        shut both sockets down so the other direction finishes too)."""
        try:
            while self._wait_readable(src):
                data = src.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                count(len(data))  # counted before sending: seen by the time it's answered
                dst.sendall(data)
            conn.shutdown()  # the proxy is stopping
        except (OSError, ValueError) as exc:
            if conn.error is None:
                conn.error = f"{type(exc).__name__}: {exc}"
            conn.shutdown()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
