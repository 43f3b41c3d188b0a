"""Helpers for the reliability and security suites (import as ``reliability_helpers``).

* clients for either facade with custom options (short timeouts, other credentials);
* assertions on what the emulator stored: "absent or byte-identical, never partial";
* small real servers on 127.0.0.1: an HTTP server answering whatever a test wants (HTML, a
  50 MB error body, garbage), a raw TCP server, and a listener that only counts connections;
* a log collector for the "no secret in any log line" checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import attrs

from oss_callback import AsyncClient, Client, RetryPolicy
from oss_callback.protocol._crc64 import crc64
from oss_callback.testing import OSSEmulator, RequestRecord
from support.facades import Api

KiB = 1024
MiB = 1024 * KiB
PART = 100 * KiB  # the smallest part OSS allows: many parts from small files


# --------------------------------------------------------------------------- data


def write_file(path: Path, size: int) -> bytes:
    """Write ``size`` random bytes to ``path``; return them."""
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def md5_etag(data: bytes) -> str:
    return hashlib.md5(data).hexdigest().upper()


# --------------------------------------------------------------------------- clients


@contextlib.asynccontextmanager
async def open_api(
    emu: OSSEmulator | None,
    bucket: str,
    kind: str,
    *,
    endpoint: str | None = None,
    access_key_id: str | None = None,
    access_key_secret: str | None = None,
    **client_kwargs: Any,
) -> AsyncIterator[Api]:
    """A bucket through ``AsyncBucket`` (``kind="async"``) or the sync ``Bucket``.

    Defaults: the emulator's endpoint, credentials and region, and retries without sleeps.
    """
    kwargs: dict[str, Any] = {"retry": RetryPolicy.no_wait()}
    if emu is not None:
        endpoint = endpoint or emu.endpoint
        access_key_id = access_key_id or emu.access_key_id
        access_key_secret = access_key_secret or emu.access_key_secret
        kwargs["region"] = emu.region
    else:
        kwargs["region"] = "cn-hangzhou"
    kwargs.update(client_kwargs)
    assert endpoint is not None
    if kind == "async":
        async with AsyncClient(endpoint, access_key_id, access_key_secret, **kwargs) as client:
            yield Api(client.get_bucket(bucket), is_async=True)
        return
    sync_client = Client(endpoint, access_key_id, access_key_secret, **kwargs)
    try:
        yield Api(sync_client.get_bucket(bucket), is_async=False)
    finally:
        sync_client.close()


# --------------------------------------------------------------------------- emulator state


def records(emu: OSSEmulator, operation: str, *, since: int = 0,
            key: str | None = None) -> list[RequestRecord]:
    """The emulator's records of ``operation`` (from index ``since`` of ``emu.requests``)."""
    return [r for r in emu.requests[since:]
            if r.operation == operation and (key is None or r.key == key)]


def part_numbers(recs: Iterable[RequestRecord], *, ok_only: bool = True) -> list[int]:
    """The ``partNumber`` of UploadPart records, in order (successful ones by default)."""
    return [int(dict(r.query)["partNumber"]) for r in recs
            if r.operation == "UploadPart" and (not ok_only or r.status == 200)]


def assert_stored_exactly(emu: OSSEmulator, bucket: str, key: str, data: bytes) -> None:
    """The object exists and is byte-identical to ``data`` (size and CRC-64 agree too)."""
    head = emu.head_object(bucket, key)
    assert head is not None, f"{key!r} was not stored"
    assert head.size == len(data)
    assert head.crc64 == crc64(data)
    assert emu.get_object(bucket, key) == data


def assert_absent_or_identical(emu: OSSEmulator, bucket: str, key: str, data: bytes) -> None:
    """Never a partial or wrong object: either nothing, or exactly ``data``."""
    if emu.head_object(bucket, key) is not None:
        assert_stored_exactly(emu, bucket, key, data)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
               what: str = "condition") -> None:
    """Poll ``predicate`` (bounded); fail the test if it never holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


async def await_until(predicate: Callable[[], bool], timeout: float = 10.0,
                      what: str = "condition") -> None:
    """:func:`wait_until` for async tests (does not block the event loop)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.01)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- servers


@attrs.define
class Seen:
    """One request a :class:`LocalHTTPServer` received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


#: ``respond(handler, seen)`` writes the whole answer with ``handler`` (a BaseHTTPRequestHandler).
Responder = Callable[[BaseHTTPRequestHandler, Seen], None]


class LocalHTTPServer:
    """A real HTTP/1.1 server on 127.0.0.1; ``respond`` writes each answer."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path,
                            {k.lower(): v for k, v in self.headers.items()}, body)
                with owner._lock:
                    owner.seen.append(seen)
                try:
                    owner.respond(self, seen)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client stopped reading: fine

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client hanging up is not an error here

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LocalHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def send_answer(handler: BaseHTTPRequestHandler, status: int, body: bytes | Iterable[bytes],
                *, content_type: str = "text/html", length: int | None = None,
                headers: Iterable[tuple[str, str]] = ()) -> None:
    """Write a complete answer (``body`` may be chunks; give ``length`` then, or none)."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    for name, value in headers:
        handler.send_header(name, value)
    if isinstance(body, bytes):
        length = len(body)
        chunks: Iterable[bytes] = (body,)
    else:
        chunks = body
    if length is not None:
        handler.send_header("Content-Length", str(length))
    else:
        handler.send_header("Connection", "close")
        handler.close_connection = True
    handler.end_headers()
    if handler.command == "HEAD":
        return
    for chunk in chunks:
        handler.wfile.write(chunk)


class RawTCPServer:
    """Accepts connections on 127.0.0.1 and answers each with fixed bytes, then closes.

    ``accepted`` counts connections (``answer=None`` closes without a byte).
    """

    def __init__(self, answer: bytes | None = None) -> None:
        self.answer = answer
        self.accepted = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    conn.recv(65536)  # the request head (whatever it is)
                    if self.answer is not None:
                        conn.sendall(self.answer)

    def __enter__(self) -> RawTCPServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(10)
        self._sock.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to 127.0.0.1:port, half-close, and read the answer until EOF/timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
        answer = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(answer) < 1 << 20:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        return bytes(answer)


# --------------------------------------------------------------------------- logs


class LogCollector(logging.Handler):
    """Collects every record of some loggers at DEBUG, fully formatted (tracebacks too)."""

    def __init__(self, *names: str) -> None:
        super().__init__(level=logging.DEBUG)
        self.names = names
        self.texts: list[str] = []
        self._saved: list[tuple[logging.Logger, int]] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + "".join(traceback.format_exception(record.exc_info[1]))
        self.texts.append(text + "\n" + repr(record.args))

    def __enter__(self) -> LogCollector:
        for name in self.names:
            logger = logging.getLogger(name)
            self._saved.append((logger, logger.level))
            logger.setLevel(logging.DEBUG)
            logger.addHandler(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for logger, level in self._saved:
            logger.removeHandler(self)
            logger.setLevel(level)


def every_text_of(error: BaseException) -> str:
    """str, repr and the full formatted traceback (chained causes included) of an error."""
    return "\n".join([str(error), repr(error),
                      "".join(traceback.format_exception(error))])


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)
