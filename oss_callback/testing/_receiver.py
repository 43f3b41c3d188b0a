"""CallbackReceiver: a tiny real HTTP server that records upload callbacks (for tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import attrs

__all__ = ["CallbackReceiver", "ReceivedCallback"]


@attrs.frozen(kw_only=True)
class ReceivedCallback:
    """One request the receiver got.

    Attributes:
        method: The HTTP method (OSS always POSTs).
        path: The request path, as sent (still percent-encoded).
        query: The raw query string (``""`` if none).
        headers: The headers, lower-case names.
        body: The raw body.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@attrs.define(kw_only=True)
class _Behaviour:
    status: int = 200
    body: bytes = b'{"Status":"OK"}'
    content_type: str = "application/json"
    delay: float = 0.0


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        record = ReceivedCallback(
            method=self.command,
            path=path,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        owner = self.server.owner
        behaviour = owner._behaviour
        with owner._cond:
            owner._received.append(record)
            owner._cond.notify_all()
        if behaviour.delay and owner._closing.wait(behaviour.delay):
            return
        self.send_response(behaviour.status)
        self.send_header("Content-Type", behaviour.content_type)
        self.send_header("Content-Length", str(len(behaviour.body)))
        self.end_headers()
        self.wfile.write(behaviour.body)

    do_POST = do_PUT = do_GET = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: CallbackReceiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (e.g. after a callback timeout) is not an error here."""


class CallbackReceiver:
    """A real HTTP server on 127.0.0.1 that records what it receives and answers a fixed
    response (by default ``200 {"Status":"OK"}``, what an OSS callback server returns).

    Example:
        >>> with CallbackReceiver() as receiver:
        ...     cb_url = receiver.url + "/oss-callback"
        ...     # upload with a callback to cb_url, then:
        ...     receiver.received[0].body

    Args:
        host: Interface to listen on.
        status: HTTP status to answer.
        body: Body to answer.
        content_type: Content-Type to answer.
        delay: Seconds to wait before answering (to provoke a callback timeout).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        status: int = 200,
        body: bytes = b'{"Status":"OK"}',
        content_type: str = "application/json",
        delay: float = 0.0,
    ) -> None:
        self._host = host
        self._behaviour = _Behaviour(
            status=status, body=body, content_type=content_type, delay=delay
        )
        self._received: list[ReceivedCallback] = []
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def respond(
        self,
        *,
        status: int | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        delay: float | None = None,
    ) -> None:
        """Change how later requests are answered (unspecified parts stay as they are)."""
        b = self._behaviour
        self._behaviour = _Behaviour(
            status=b.status if status is None else status,
            body=b.body if body is None else body,
            content_type=b.content_type if content_type is None else content_type,
            delay=b.delay if delay is None else delay,
        )

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        if self._server is None:
            raise RuntimeError("the CallbackReceiver is not running")
        return f"http://{self._host}:{self._server.server_address[1]}"

    @property
    def received(self) -> list[ReceivedCallback]:
        """What was received so far (a snapshot)."""
        with self._cond:
            return list(self._received)

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedCallback]:
        """Wait until ``count`` requests arrived; returns them.

        Raises:
            TimeoutError: if they did not arrive in time.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"received {len(self._received)} of {count} requests")
                self._cond.wait(left)
            return list(self._received)

    def clear(self) -> None:
        """Forget what was received."""
        with self._cond:
            self._received.clear()

    def start(self) -> CallbackReceiver:
        """Start listening (on a free port)."""
        if self._server is not None:
            raise RuntimeError("the CallbackReceiver is already running")
        self._server = _Server((self._host, 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening (idempotent)."""
        if self._server is None:
            return
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> CallbackReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
