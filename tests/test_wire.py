"""File bodies sent from worker threads (``_wire``): reuse, early answers, stale connections,
timeouts, cancellation, progress and TLS, against real sockets.

The emulator-backed suites already send every ``put_object(file=...)`` and part through this
path; these tests drive the edge cases with small raw servers that misbehave on purpose.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from tls_helpers import self_signed

from oss_callback import (
    AsyncBucket,
    AsyncClient,
    FileChangedError,
    RequestError,
    RetryPolicy,
    ServiceError,
)
from oss_callback._wire import WirePool

OK = (b"HTTP/1.1 200 OK\r\nETag: \"0123456789ABCDEF0123456789ABCDEF\"\r\n"
      b"x-oss-request-id: 5C0000000000000000000001\r\nServer: AliyunOSS\r\n"
      b"Content-Length: 0\r\n\r\n")
DENIED_XML = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>"
              b"<Message>early answer</Message><RequestId>5C01</RequestId></Error>")
DENIED = (b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n"
          b"x-oss-request-id: 5C01\r\nConnection: close\r\nContent-Length: "
          + str(len(DENIED_XML)).encode() + b"\r\n\r\n" + DENIED_XML)


def _read_request(conn: socket.socket) -> tuple[bytes, int] | None:
    """Read one request (headers + Content-Length body); ``(head, body_len)`` or None."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    got = len(rest)
    while got < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return None
        got += len(chunk)
    return head, got


class RawServer:
    """A TCP server running ``handler(conn, index)`` per accepted connection in threads."""

    def __init__(self, handler: Callable[[socket.socket, int], None] | None = None,
                 wrap: ssl.SSLContext | None = None) -> None:
        self.handler = handler or self.answer_ok
        self.wrap = wrap
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.bodies: list[int] = []
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer_ok(self, conn: socket.socket, _: int) -> None:
        """The default handler: record each request's body size and answer 200."""
        while (req := _read_request(conn)) is not None:
            self.bodies.append(req[1])
            conn.sendall(OK)

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            index = self.accepted
            self.accepted += 1
            t = threading.Thread(target=self._run, args=(conn, index), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, conn: socket.socket, index: int) -> None:
        try:
            if self.wrap is not None:
                try:
                    conn = self.wrap.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    return
            self.handler(conn, index)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Callable[[socket.socket, int], None] | None = None,
              **kw: Any) -> RawServer:
        server = RawServer(handler, **kw)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def bucket_on(endpoint: str, **kw: Any) -> tuple[AsyncClient, AsyncBucket]:
    client = AsyncClient(endpoint, "AKIDEXAMPLE", "secret-never-logged", region="cn-hangzhou",
                         retry=kw.pop("retry", RetryPolicy.no_wait()), **kw)
    return client, client.get_bucket("bucket")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    p = tmp_path / "src.bin"
    p.write_bytes(bytes(range(256)) * 4096 * 3)  # 3 MiB: several 256 KiB send buffers
    return p


async def test_keep_alive_connection_is_reused(serve: Any, src: Path) -> None:
    server = serve()
    client, bucket = bucket_on(server.endpoint)
    async with client:
        for i in range(5):
            result = await bucket.put_object(f"k{i}", file=src)
            assert result.etag == "0123456789ABCDEF0123456789ABCDEF"
        wire = client._session.wire
        assert wire is not None and wire.connections_opened == 1
    assert server.accepted == 1
    assert server.bodies == [src.stat().st_size] * 5


async def test_server_closing_an_idle_connection_is_retried_once_on_a_new_one(
    serve: Any, src: Path
) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        req = _read_request(conn)
        if req is not None:
            server.bodies.append(req[1])
            conn.sendall(OK)  # keep-alive promised, then the connection is closed anyway

    server = serve(handler)
    # no retries by the policy: only the wire's own stale-connection retry may resend
    client, bucket = bucket_on(server.endpoint, retry=RetryPolicy(max_attempts=1))
    async with client:
        await bucket.put_object("a", file=src)
        await anyio.sleep(0.1)  # the server has closed its end by now
        await bucket.put_object("b", file=src)
    assert server.accepted == 2
    assert server.bodies == [src.stat().st_size] * 2


async def test_an_early_answer_is_read_even_if_the_body_was_not(serve: Any, src: Path) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        conn.sendall(DENIED)  # answer before reading the 3 MiB body, then close
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.2)

    server = serve(handler)
    client, bucket = bucket_on(server.endpoint)
    async with client:
        with pytest.raises(ServiceError) as info:
            await bucket.put_object("denied", file=src)
    assert info.value.status == 403
    assert info.value.code == "AccessDenied"
    assert info.value.request_id == "5C01"


async def test_garbage_answer_is_a_request_error_that_is_retried(serve: Any, src: Path) -> None:
    def handler(conn: socket.socket, index: int) -> None:
        if _read_request(conn) is None:
            return
        conn.sendall(b"SPDY/9 what\r\n\r\n" if index == 0 else OK)

    server = serve(handler)
    client, bucket = bucket_on(server.endpoint)
    async with client:
        result = await bucket.put_object("k", file=src)
    assert result.etag == "0123456789ABCDEF0123456789ABCDEF"
    assert server.accepted == 2  # the garbage connection was not reused


async def test_read_timeout_is_a_clear_request_error(serve: Any, src: Path) -> None:
    release = threading.Event()

    def handler(conn: socket.socket, _: int) -> None:
        _read_request(conn)
        release.wait(10)  # never answers

    server = serve(handler)
    client, bucket = bucket_on(server.endpoint, timeout=httpx.Timeout(5.0, read=0.3),
                               retry=RetryPolicy(max_attempts=1))
    try:
        async with client:
            started = time.monotonic()
            with pytest.raises(RequestError, match="timed out"):
                await bucket.put_object("k", file=src)
            assert time.monotonic() - started < 4
    finally:
        release.set()


async def test_write_timeout_when_the_server_stops_reading(serve: Any, tmp_path: Path) -> None:
    release = threading.Event()
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (64 * 1024 * 1024))  # far more than socket buffers hold

    def handler(conn: socket.socket, _: int) -> None:
        release.wait(10)  # reads nothing

    server = serve(handler)
    client, bucket = bucket_on(server.endpoint, timeout=httpx.Timeout(5.0, write=0.3),
                               retry=RetryPolicy(max_attempts=1))
    try:
        async with client:
            with pytest.raises(RequestError, match="timed out") as info:
                await bucket.put_object("k", file=big)
        assert isinstance(info.value.__cause__, httpx.WriteTimeout)
    finally:
        release.set()


async def test_cancellation_unblocks_the_thread_and_drops_the_connection(
    serve: Any, tmp_path: Path
) -> None:
    release = threading.Event()
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (64 * 1024 * 1024))

    def handler(conn: socket.socket, index: int) -> None:
        if index == 0:
            release.wait(10)  # stalls the first upload
            return
        while (req := _read_request(conn)) is not None:
            server.bodies.append(req[1])
            conn.sendall(OK)

    server = serve(handler)
    client, bucket = bucket_on(server.endpoint)
    try:
        async with client:
            started = time.monotonic()
            with anyio.move_on_after(0.3):
                await bucket.put_object("stalled", file=big)
            assert time.monotonic() - started < 3  # not the 60 s write timeout
            small = tmp_path / "small.bin"
            small.write_bytes(b"x" * 1000)
            await bucket.put_object("next", file=small)
    finally:
        release.set()
    assert server.accepted == 2  # the stalled connection was not reused
    assert server.bodies == [1000]


async def test_progress_is_reported_on_the_loop_thread_and_ends_at_the_size(
    serve: Any, src: Path
) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        while _read_request(conn) is not None:
            conn.sendall(OK)

    server = serve(handler)
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int | None, int]] = []
    client, bucket = bucket_on(server.endpoint)
    async with client:
        await bucket.put_object("k", file=src,
                                progress=lambda d, t: seen.append((d, t, threading.get_ident())))
    size = src.stat().st_size
    assert seen[-1][:2] == (size, size)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    assert len(seen) >= 3  # every MiB, not once at the end
    assert {tid for _, _, tid in seen} == {loop_thread}


async def test_a_file_changed_mid_upload_fails_before_its_last_byte(
    serve: Any, tmp_path: Path
) -> None:
    got: list[int] = []

    def handler(conn: socket.socket, _: int) -> None:
        req = _read_request(conn)
        if req is not None:
            got.append(req[1])
            conn.sendall(OK)

    server = serve(handler)
    path = tmp_path / "changing.bin"
    path.write_bytes(b"a" * (4 * 1024 * 1024))
    client, bucket = bucket_on(server.endpoint)

    def grow(done: int, total: int | None) -> None:
        if done < 2 * 1024 * 1024:
            with path.open("ab") as f:
                f.write(b"b")

    async with client:
        with pytest.raises(FileChangedError, match="changed while it was being uploaded"):
            await bucket.put_object("k", file=path, progress=grow)
    assert got == []  # the server never received a complete body
    assert server.accepted == 1


async def test_tls_certificates_are_verified(serve: Any, src: Path) -> None:
    server_ctx, client_ctx = self_signed()

    server = serve(wrap=server_ctx)
    endpoint = f"https://127.0.0.1:{server.port}"
    client, bucket = bucket_on(endpoint, retry=RetryPolicy(max_attempts=1))
    async with client:  # the default trust store does not know this certificate
        with pytest.raises(RequestError, match="CERTIFICATE_VERIFY_FAILED"):
            await bucket.put_object("k", file=src)
    client, bucket = bucket_on(endpoint)
    client._session.wire = WirePool(timeout=httpx.Timeout(5.0), max_idle=4,
                                    ssl_context=client_ctx)
    async with client:
        for _ in range(3):
            await bucket.put_object("k", file=src)
        assert client._session.wire.connections_opened == 1
    assert server.bodies == [src.stat().st_size] * 3


async def test_a_custom_transport_sees_file_uploads(src: Path) -> None:
    seen: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(len(await request.aread()))
        return httpx.Response(200, headers={"etag": '"AB"', "x-oss-request-id": "1",
                                            "server": "AliyunOSS"})

    async with AsyncClient("http://oss-cn-hangzhou.aliyuncs.com", "ak", "sk",
                           transport=httpx.MockTransport(handler)) as client:
        assert client._session.wire is None
        await client.get_bucket("bucket").put_object("k", file=src)
    assert seen == [src.stat().st_size]


async def test_default_client_sends_bytes_over_the_lean_pool_and_files_over_the_wire(
    serve: Any, src: Path
) -> None:
    server = serve()
    client, bucket = bucket_on(server.endpoint)
    async with client:
        lean, wire = client._session.lean, client._session.wire
        assert lean is not None and wire is not None
        for _ in range(3):
            await bucket.put_object("bytes", b"x" * 5000)
        await bucket.put_object("file", file=src)
        assert lean.connections_created == 1 and wire.connections_opened == 1
    assert server.bodies == [5000, 5000, 5000, src.stat().st_size]
    assert server.accepted == 2


async def test_a_success_answer_before_the_whole_body_is_not_a_success(serve: Any) -> None:
    def handler(conn: socket.socket, _: int) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        conn.sendall(OK.replace(b"Content-Length: 0", b"Connection: close\r\nContent-Length: 0"))
        conn.shutdown(socket.SHUT_WR)
        time.sleep(0.2)  # and never reads the body

    server = serve(handler)
    client, bucket = bucket_on(server.endpoint, retry=RetryPolicy(max_attempts=1))
    async with client:
        with pytest.raises(RequestError, match="before the whole body was sent"):
            await bucket.put_object("k", b"x" * (64 * 1024 * 1024))  # > socket buffers


async def test_file_uploads_are_not_capped_by_the_default_thread_limiter(
    serve: Any, tmp_path: Path
) -> None:
    import anyio.to_thread

    release = threading.Event()
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)

    def handler(conn: socket.socket, _: int) -> None:
        req = _read_request(conn)
        if req is not None:
            release.wait(10)  # every upload stays in flight until all have arrived
            conn.sendall(OK)

    server = serve(handler)
    n = anyio.to_thread.current_default_thread_limiter().total_tokens + 10  # 50
    client, bucket = bucket_on(server.endpoint, max_connections=n)
    try:
        async with client, anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(functools.partial(bucket.put_object, f"k{i}", file=small))
            with anyio.fail_after(10):
                while server.accepted < n:  # all in flight at once, not 40
                    await anyio.sleep(0.02)
            # and the default limiter is still free for other thread work meanwhile
            assert await anyio.to_thread.run_sync(lambda: 42) == 42
            release.set()
    finally:
        release.set()
