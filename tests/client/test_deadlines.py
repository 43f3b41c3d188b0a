"""Hangs (issue #14, part 5): every attempt gets a total deadline for its answer's head.

httpx's read timeout restarts with every byte, so before the deadline a server dripping its
response head (or ``100 Continue`` lines) a byte at a time held a request for 30-40 s and
longer. Small raw servers on 127.0.0.1 misbehave on purpose here; the deadline must cut them
off without cutting off what legitimately takes long (a slow body upload, a queue for a
pooled connection, a slow download). The emulator's side: a connection that doesn't deliver
a complete request head in time (idle, slowloris) is dropped.

Timing: drips are 0.1-0.2 s apart and deadlines around 1 s; only generous upper bounds are
asserted (a hang shows up as tens of seconds).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from support.helpers import HTTPX_STOPPED_READ

from oss_callback import AsyncClient, Client, RequestError, RetryPolicy, ServiceError
from oss_callback.protocol._crc64 import crc64
from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._signing import sign_v4
from oss_callback.testing import OSSEmulator
from oss_callback.testing._cli import build_parser

MiB = 1024 * 1024
OK = (b"HTTP/1.1 200 OK\r\nETag: \"0123456789ABCDEF0123456789ABCDEF\"\r\n"
      b"x-oss-request-id: 5C0000000000000000000001\r\nContent-Length: 0\r\n\r\n")
#: Far below the read timeouts used with it: every drip keeps a read alive.
DRIP = 0.2
#: Generous: the deadlines here are ~1 s; a hang would be the 30 s of the drip loops.
BOUND = 15.0


# --------------------------------------------------------------------------- raw servers


def read_request(conn: socket.socket) -> bytes | None:
    """Read one request (head + Content-Length body); return the head, or None at EOF."""
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
    received = len(rest)
    while received < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return None
        received += len(chunk)
    return head


class RawServer:
    """``handler(conn, index)`` per accepted connection, each in a thread; counts them."""

    def __init__(self, handler: Callable[[socket.socket, int], None],
                 stop: threading.Event) -> None:
        self.handler = handler
        self.stop = stop
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            index = self.accepted
            self.accepted += 1
            t = threading.Thread(target=self._run, args=(conn, index), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, conn: socket.socket, index: int) -> None:
        try:
            self.handler(conn, index)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(5)
        self.sock.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket, int], None]], RawServer]]:
    stop = threading.Event()
    servers: list[RawServer] = []

    def start(handler: Callable[[socket.socket, int], None]) -> RawServer:
        server = RawServer(handler, stop)
        servers.append(server)
        return server

    yield start
    stop.set()
    for server in servers:
        server.close()


def drip(conn: socket.socket, data: bytes) -> None:
    """Send ``data`` one byte every DRIP seconds (until the client hangs up)."""
    for byte in data:
        conn.sendall(bytes([byte]))
        time.sleep(DRIP)


#: A head that never ends: 30 s of dripping at one byte per DRIP.
ENDLESS_HEAD = b"HTTP/1.1 200 OK\r\nx-oss-request-id: 5C02\r\nX-Padding: " + b"a" * 150


def dripping_head(conn: socket.socket, _: int) -> None:
    if read_request(conn) is not None:
        drip(conn, ENDLESS_HEAD)


def continue_forever(conn: socket.socket, _: int) -> None:
    """``100 Continue`` every DRIP seconds: each is a complete interim response that
    httpcore reads and skips, so each one restarts the read timeout."""
    if read_request(conn) is None:
        return
    for _ in range(150):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(DRIP)


def client_on(server: RawServer, **kw: Any) -> AsyncClient:
    kw.setdefault("retry", RetryPolicy.no_wait(max_attempts=1))
    return AsyncClient(server.endpoint, "AKIDEXAMPLE", "secret-never-logged",
                       region="cn-hangzhou", **kw)


async def call(client: AsyncClient, operation: str) -> Any:
    bucket = client.get_bucket("bucket")
    if operation == "put_object":
        return await bucket.put_object("k", b"x" * 100_000)
    if operation == "put_object_file_body":
        return await bucket.put_object("k", [b"streamed ", b"body"])  # chunked, not replayable
    if operation == "head_object":
        return await bucket.head_object("k")
    if operation == "get_object":
        return await bucket.get_object("k")
    raise AssertionError(operation)


# --------------------------------------------------------------------------- the SDK's deadline


@pytest.mark.parametrize("operation", ["put_object", "head_object", "get_object"])
async def test_a_dripping_response_head_is_cut_off_and_retried(
    serve: Any, operation: str
) -> None:
    server = serve(dripping_head)
    started = time.monotonic()
    async with client_on(server, timeout=5, answer_timeout=1,
                         retry=RetryPolicy.no_wait(max_attempts=2)) as client:
        with pytest.raises(RequestError) as info:
            await call(client, operation)
    elapsed = time.monotonic() - started
    assert "no answer came within 1 s (answer_timeout)" in str(info.value)
    assert str(info.value).startswith(("PUT oss://bucket/k", "HEAD oss://bucket/k",
                                       "GET oss://bucket/k"))
    assert server.accepted == 2  # retried like a timeout, on a fresh connection
    assert elapsed < BOUND  # before: 30 s per attempt here (each byte re-armed the read)


async def test_a_100_continue_drip_is_covered_by_the_deadline_alone(serve: Any) -> None:
    """No separate cap on 1xx answers is needed: httpcore skips interim responses inside
    the one call the deadline wraps, so an endless series of them runs into it."""
    server = serve(continue_forever)
    started = time.monotonic()
    async with client_on(server, timeout=5, answer_timeout=1) as client:
        with pytest.raises(RequestError, match=r"no answer came within 1 s"):
            await call(client, "put_object")
    assert time.monotonic() - started < BOUND
    assert server.accepted == 1


async def test_a_dripping_head_after_a_non_replayable_body_is_cut_off_once(
    serve: Any
) -> None:
    server = serve(dripping_head)
    async with client_on(server, timeout=5, answer_timeout=1,
                         retry=RetryPolicy.no_wait(max_attempts=3)) as client:
        with pytest.raises(RequestError, match="no answer came within"):
            await call(client, "put_object_file_body")
    assert server.accepted == 1  # an iterable body can't be sent again


async def test_the_default_deadline_is_derived_from_the_read_timeout(serve: Any) -> None:
    server = serve(dripping_head)
    async with client_on(server, timeout=0.6) as client:
        assert client._session.answer_limit() == pytest.approx(1.2)
        with pytest.raises(RequestError, match=r"no answer came within 1\.2 s"):
            await call(client, "head_object")


async def test_a_silent_server_still_ends_in_the_read_timeout(serve: Any) -> None:
    """The derived deadline (twice the read timeout) leaves a server that says nothing to
    httpx's ReadTimeout, the clearer message; only a drip runs into the deadline."""
    release = threading.Event()

    def silent(conn: socket.socket, _: int) -> None:
        if read_request(conn) is not None:
            release.wait(30)

    server = serve(silent)
    try:
        async with client_on(server, timeout=0.5) as client:
            with pytest.raises(RequestError, match="timed out") as info:
                await call(client, "put_object")
    finally:
        release.set()
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)


def test_answer_limit_follows_the_configuration() -> None:
    def limit(**kw: Any) -> float | None:
        client = AsyncClient("http://127.0.0.1:1", "ak", "sk", region="cn-hangzhou", **kw)
        try:
            return client._session.answer_limit()
        finally:
            anyio.run(client.aclose)

    assert limit() == 120.0  # twice the SDK's 60 s read timeout
    assert limit(timeout=httpx.Timeout(5, read=7)) == 14.0
    assert limit(timeout=httpx.Timeout(5, read=None)) is None  # no read timeout: none
    assert limit(answer_timeout=3) == 3.0
    assert limit(timeout=httpx.Timeout(None), answer_timeout=2.5) == 2.5
    assert limit(answer_timeout=math.inf) is None
    for bad in (0, -1, math.nan):
        with pytest.raises(ValueError, match="answer_timeout"):
            AsyncClient("http://127.0.0.1:1", "ak", "sk", region="cn-hangzhou",
                        answer_timeout=bad)
    for wrong in ("5", True):
        with pytest.raises(TypeError, match="answer_timeout"):
            AsyncClient("http://127.0.0.1:1", "ak", "sk", region="cn-hangzhou",
                        answer_timeout=wrong)  # type: ignore[arg-type]


@pytest.mark.parametrize("answer_timeout", [None, 1.0])
async def test_the_deadline_applies_to_a_user_http_client(
    serve: Any, answer_timeout: float | None
) -> None:
    server = serve(dripping_head)
    async with httpx.AsyncClient(timeout=0.5) as http:
        async with AsyncClient(server.endpoint, "ak", "sk", region="cn-hangzhou",
                               http_client=http, answer_timeout=answer_timeout,
                               retry=RetryPolicy.no_wait(max_attempts=1)) as client:
            expected = 1.0  # given, or twice the user client's read timeout
            assert client._session.answer_limit() == expected
            with pytest.raises(RequestError, match="no answer came within 1 s"):
                await call(client, "put_object")
        assert not http.is_closed


def test_the_sync_client_takes_answer_timeout(serve: Any) -> None:
    server = serve(dripping_head)
    with Client(server.endpoint, "ak", "sk", region="cn-hangzhou", timeout=5,
                answer_timeout=1, retry=RetryPolicy.no_wait(max_attempts=1)) as client:
        started = time.monotonic()
        with pytest.raises(RequestError, match="no answer came within 1 s"):
            client.get_bucket("bucket").head_object("k")
    assert time.monotonic() - started < BOUND


# --------------------------------------------------------------------------- not cut off


def pausing_reader(pause: float, paused: threading.Event | None = None,
                   ) -> Callable[[socket.socket, int], None]:
    """Reads 1 MiB of the body, stops reading for ``pause`` s (the client's writes block:
    the body is far bigger than the socket buffers), then reads the rest and answers.
    ``paused`` is set when the pause begins."""

    def handler(conn: socket.socket, _: int) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        received = len(rest)
        stopped = False
        while received < length:
            if received >= MiB and not stopped:
                stopped = True
                if paused is not None:
                    paused.set()
                time.sleep(pause)
            chunk = conn.recv(1 << 16)
            if not chunk:
                return
            received += len(chunk)
        conn.sendall(OK)

    return handler


async def test_a_body_upload_longer_than_the_deadline_is_not_cut_off(serve: Any) -> None:
    server = serve(pausing_reader(pause=3.0))
    seen: list[int] = []
    async with client_on(server, timeout=10, answer_timeout=1) as client:
        result = await client.get_bucket("bucket").put_object(
            "big", b"\0" * (64 * MiB), progress=lambda done, total: seen.append(done))
    assert result.etag == "0123456789ABCDEF0123456789ABCDEF"
    assert seen[-1] == 64 * MiB
    assert server.accepted == 1


async def test_a_server_that_thinks_after_the_body_within_the_deadline_is_fine(
    serve: Any
) -> None:
    def thinking(conn: socket.socket, _: int) -> None:
        if read_request(conn) is not None:
            time.sleep(0.3)
            conn.sendall(OK)

    server = serve(thinking)
    async with client_on(server, answer_timeout=3) as client:
        result = await call(client, "put_object")
    assert result.etag == "0123456789ABCDEF0123456789ABCDEF"


async def test_waiting_for_a_pooled_connection_is_not_under_the_deadline(serve: Any) -> None:
    """A user's client with one connection: the second upload waits in httpcore's pool
    while the first (slow body) holds it, far longer than the deadline, and succeeds."""
    order: list[str] = []
    paused = threading.Event()

    def handler(conn: socket.socket, index: int) -> None:
        pausing_reader(pause=3.0, paused=paused)(conn, index)  # the first body is slow
        while read_request(conn) is not None:  # the next request, kept alive
            conn.sendall(OK)

    server = serve(handler)
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=10)
    async with http, AsyncClient(server.endpoint, "ak", "sk", region="cn-hangzhou",
                                 http_client=http, answer_timeout=1,
                                 retry=RetryPolicy.no_wait(max_attempts=1)) as client:
        bucket = client.get_bucket("bucket")

        async def upload(key: str, size: int) -> None:
            await bucket.put_object(key, b"\0" * size)
            order.append(key)

        async with anyio.create_task_group() as tg:
            tg.start_soon(upload, "slow", 64 * MiB)
            # the slow one holds the only connection, mid-body
            assert await anyio.to_thread.run_sync(paused.wait, BOUND)
            tg.start_soon(upload, "queued", 1000)
    assert sorted(order) == ["queued", "slow"]
    assert server.accepted == 1  # one connection, reused: nothing was cut off


async def test_a_slow_download_body_is_not_under_the_deadline(serve: Any) -> None:
    body = bytes(range(256)) * 40  # 10 KiB, in 20 pieces 0.1 s apart: 2 s > the deadline

    def slow_body(conn: socket.socket, _: int) -> None:
        if read_request(conn) is None:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nETag: \"E\"\r\nx-oss-request-id: 5C03\r\n"
                     b"x-oss-hash-crc64ecma: " + str(crc64(body)).encode() +
                     b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        for start in range(0, len(body), 512):
            conn.sendall(body[start:start + 512])
            time.sleep(0.1)

    server = serve(slow_body)
    async with client_on(server, timeout=5, answer_timeout=0.5) as client:
        assert await call(client, "get_object") == body


@HTTPX_STOPPED_READ
async def test_a_dripping_error_body_ends_in_a_service_error(serve: Any) -> None:
    def dripping_error(conn: socket.socket, _: int) -> None:
        if read_request(conn) is None:
            return
        xml = (b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>"
               + b"x" * 2000 + b"</Message></Error>")
        conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n"
                     b"x-oss-request-id: 5C04\r\nContent-Length: "
                     + str(len(xml)).encode() + b"\r\n\r\n")
        drip(conn, xml)

    server = serve(dripping_error)
    started = time.monotonic()
    async with client_on(server, timeout=5, answer_timeout=1) as client:
        with pytest.raises(ServiceError) as info:
            await call(client, "put_object")
    assert time.monotonic() - started < BOUND  # not the 400 s the whole body would drip
    assert info.value.status == 403
    assert info.value.request_id == "5C04"


# --------------------------------------------------------------------------- the emulator


def connect(emu: OSSEmulator) -> socket.socket:
    return socket.create_connection(("127.0.0.1", emu.port), timeout=BOUND)


def closed_within(sock: socket.socket, seconds: float, drip_bytes: bytes = b"") -> bool:
    """Whether the server closes ``sock`` within ``seconds``, while the client says nothing
    (or drips ``drip_bytes``, one byte every DRIP seconds)."""
    deadline = time.monotonic() + seconds
    pending = iter(drip_bytes)
    sock.settimeout(DRIP)
    while time.monotonic() < deadline:
        try:
            byte = next(pending, None)
            if byte is not None:
                sock.sendall(bytes([byte]))
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


@pytest.fixture(scope="module")
def guarded() -> Iterator[OSSEmulator]:
    with OSSEmulator(header_timeout=1.0, buckets=["guarded-bucket"]) as emu:
        yield emu


def test_the_emulator_drops_a_connection_that_says_nothing(guarded: OSSEmulator) -> None:
    with connect(guarded) as sock:
        assert closed_within(sock, BOUND)


def test_the_emulator_drops_a_slowloris_head(guarded: OSSEmulator) -> None:
    head = (b"GET /guarded-bucket/k HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(b"X-Drip-%d: %s\r\n" % (i, b"a" * 20) for i in range(100)))
    started = time.monotonic()
    with connect(guarded) as sock:
        assert closed_within(sock, BOUND, drip_bytes=head)  # 2,700 bytes: 9 minutes
    assert time.monotonic() - started < BOUND


def test_the_emulator_drops_an_idle_kept_alive_connection(guarded: OSSEmulator) -> None:
    with connect(guarded) as sock:
        sock.sendall(b"GET /guarded-bucket/k HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 403")  # anonymous, answered, kept alive
        assert b"connection: close" not in answer.lower()
        assert closed_within(sock, BOUND)


def test_a_slow_body_after_a_complete_head_is_not_cut_off(guarded: OSSEmulator) -> None:
    """The guard is for heads: a signed upload whose body takes longer is stored."""
    body = b"z" * 30
    headers = {"content-length": str(len(body)), "host": f"127.0.0.1:{guarded.port}"}
    credentials = Credentials(access_key_id=guarded.access_key_id,
                              access_key_secret=guarded.access_key_secret)
    sign_v4("PUT", "guarded-bucket", "slow-body", [], headers, credentials,
            datetime.now(timezone.utc), guarded.region)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with connect(guarded) as sock:
        sock.sendall(b"PUT /guarded-bucket/slow-body HTTP/1.1\r\n" + head.encode() + b"\r\n")
        for i in range(0, len(body), 3):  # 10 pieces, 0.2 s apart: 2 s > header_timeout
            sock.sendall(body[i:i + 3])
            time.sleep(DRIP)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert guarded.get_object("guarded-bucket", "slow-body") == body


async def test_the_emulator_still_serves_clients_normally(guarded: OSSEmulator) -> None:
    async with AsyncClient(guarded.endpoint, guarded.access_key_id,
                           guarded.access_key_secret, region=guarded.region,
                           retry=RetryPolicy.no_wait()) as client:
        bucket = client.get_bucket("guarded-bucket")
        await bucket.put_object("k", b"kept")
        assert await bucket.get_object("k") == b"kept"


def test_header_timeout_is_validated_and_on_the_command_line() -> None:
    with pytest.raises(ValueError, match="header_timeout"):
        OSSEmulator(header_timeout=0)
    assert build_parser().parse_args([]).header_timeout == 30.0
    assert build_parser().parse_args(["--header-timeout", "2.5"]).header_timeout == 2.5
    assert OSSEmulator().header_timeout == 30.0


def test_the_deadline_holds_with_the_aiohttp_engine(serve: Any) -> None:
    pytest.importorskip("httpx_aiohttp")
    server = serve(dripping_head)

    async def upload() -> BaseException | None:
        async with client_on(server, timeout=5, answer_timeout=1,
                             http_engine="aiohttp") as client:
            try:
                await call(client, "put_object")
            except RequestError as exc:
                return exc
        return None

    started = time.monotonic()
    error = anyio.run(upload, backend="asyncio")  # aiohttp runs on asyncio only
    assert isinstance(error, RequestError)
    assert "no answer came within 1 s" in str(error)
    assert time.monotonic() - started < BOUND
