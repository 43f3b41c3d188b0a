"""LeanHTTP (asyncio + httptools HTTP/1.1 client) against real sockets on 127.0.0.1.

Most tests drive a small raw asyncio server written here, so that each test controls the
exact bytes the server sends (garbage, truncated bodies, chunked or close-delimited bodies,
stalls, early answers) and can count the TCP connections it accepts. One test round-trips
signed requests through the OSS emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gc
import hashlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import psutil
import pytest
from counting_server import CountingServer, refusing_port
from tls_helpers import self_signed

from oss_callback._credentials import Credentials
from oss_callback._endpoint import encode_key
from oss_callback._lean import MAX_HEAD_SIZE, READ_BUFFER_LIMIT, LeanHTTP, usable
from oss_callback._signing import sign_v4

MiB = 1024 * 1024


# -- a raw HTTP/1.1 server -------------------------------------------------------------------


class Req:
    """One request as the server read it."""

    def __init__(self, head: bytes, method: str, target: str,
                 headers: dict[str, str], body: bytes) -> None:
        self.head = head
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body


async def read_head(reader: asyncio.StreamReader) -> tuple[bytes, str, str, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return head, method, target, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    return b""


def ok(body: bytes = b"ok", *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), head.encode(),
                                                                     body)


class Server(CountingServer):
    """An asyncio HTTP/1.1 server that counts connections and misbehaves on request.

    Routes (by request target): ``/`` answers ``ok:<body length>``; ``/sleep/<ms>``
    answers after a delay; ``/big/<n>`` answers ``n`` bytes; ``/chunked`` a chunked body;
    ``/eof`` a close-delimited body; ``/close`` with ``Connection: close``; ``/hang``
    never answers; ``/noread`` never reads the request body; ``/garbage`` a bad status
    line; ``/cut`` closes mid-body; ``/nothing`` closes without answering; ``/head-like``
    a content-length without a body (for HEAD); ``/204`` and ``/304``; ``/early`` answers
    413 before reading the body; ``/early-ok`` 200 before reading it (then reads it);
    ``/continue`` sends ``100 Continue`` first.

    ``stale_after``: on a connection's request number ``stale_after + 1``, close it
    without answering (what a server does that closes an idle connection just as the
    client reuses it).
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None,
                 stale_after: int | None = None, idle_close: float | None = None) -> None:
        super().__init__(ssl_context=ssl_context)
        self.stale_after = stale_after
        self.idle_close = idle_close
        self.requests: list[Req] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            try:
                head, method, target, headers = await asyncio.wait_for(
                    read_head(reader), self.idle_close)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError):
                return
            if self.stale_after is not None and n == self.stale_after:
                return
            n += 1
            if not await self._answer(reader, writer, head, method, target, headers):
                return

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes, method: str, target: str, headers: dict[str, str]) -> bool:
        """Answer one request; False to close the connection."""
        if target == "/noread":
            self.requests.append(Req(head, method, target, headers, b""))
            await asyncio.sleep(3600)
        if target == "/early-ok":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            body = await read_body(reader, headers)
            self.requests.append(Req(head, method, target, headers, body))
            return True
        if target == "/early":
            self.requests.append(Req(head, method, target, headers, b""))
            writer.write(b"HTTP/1.1 413 Too Large\r\ncontent-length: 4\r\n"
                         b"connection: close\r\n\r\nbig!")
            await writer.drain()
            with contextlib.suppress(Exception):  # drain the body: no RST on close
                while await reader.read(MiB):
                    pass
            return False
        body = await read_body(reader, headers)
        self.requests.append(Req(head, method, target, headers, body))
        if target == "/hang":
            while await reader.read(65536):  # never answer; wait for the client to hang up
                pass
            return False
        if target.startswith("/sleep/"):
            await asyncio.sleep(int(target.rsplit("/", 1)[1]) / 1000)
        elif target.startswith("/big/"):
            size = int(target.rsplit("/", 1)[1])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
            piece = b"x" * MiB
            for start in range(0, size, MiB):
                writer.write(piece[: min(MiB, size - start)])
                await writer.drain()
            return True
        elif target == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: 1\r\n\r\n")
            await writer.drain()
            return True
        elif target == "/eof":
            writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
            await writer.drain()
            return False
        elif target == "/close":
            writer.write(ok(b"bye", "connection: close"))
            await writer.drain()
            return False
        elif target == "/garbage":
            writer.write(b"HTTX/1.1 ??? nonsense\r\n\r\n")
            await writer.drain()
            while await reader.read(65536):  # until the client hangs up
                pass
            return False
        elif target == "/cut":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
            await writer.drain()
            return False
        elif target == "/stall":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nsome")
            await writer.drain()
            while await reader.read(65536):  # wait for the client to hang up
                pass
            return False
        elif target == "/endless-headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            with contextlib.suppress(ConnectionError):
                for i in range(100_000):
                    writer.write(b"x-filler-%d: %s\r\n" % (i, b"f" * 1000))
                    await writer.drain()
            return False
        elif target == "/nothing":
            return False
        elif target == "/head-like":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 12345\r\netag: \"e\"\r\n\r\n")
            await writer.drain()
            return True
        elif target in ("/204", "/304"):
            writer.write(b"HTTP/1.1 %s X\r\netag: \"e\"\r\n\r\n" % target[1:].encode())
            await writer.drain()
            return True
        elif target == "/continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(ok(b"ok:%d" % len(body), "x-oss-request-id: rid"))
        await writer.drain()
        return True


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server() as s:
        yield s


@pytest.fixture(autouse=True)
def _collect_garbage() -> Any:
    # An unclosed transport warns (ResourceWarning, an error here) only when collected:
    # collect within the test that leaked it.
    yield
    gc.collect()


def lean(max_connections: int = 4, timeout: float = 5.0, **kwargs: Any) -> LeanHTTP:
    return LeanHTTP(timeout=kwargs.pop("timeouts", httpx.Timeout(timeout)),
                    max_connections=max_connections, **kwargs)


def client_sockets(port: int) -> int:
    """Open TCP sockets of this process to ``port`` (the client side)."""
    return sum(
        1 for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status != psutil.CONN_TIME_WAIT
    )


async def wait_sockets(port: int, n: int, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while client_sockets(port) != n:
            await asyncio.sleep(0.01)


async def get(http: LeanHTTP, url: str, **kwargs: Any) -> httpx.Response:
    return await http.send(httpx.Request("GET", url, **kwargs))


async def body_chunks(n: int, size: int = MiB, pulled: list[int] | None = None
                      ) -> AsyncIterator[bytes]:
    for i in range(n):
        if pulled is not None:
            pulled.append(i)
        yield bytes([i % 256]) * size


# -- basics ---------------------------------------------------------------------------------


def test_usable() -> None:
    assert usable() is True


async def test_response_is_a_real_httpx_response(server: Server) -> None:
    async with lean() as http:
        request = httpx.Request("PUT", f"{server.url}/?a=1&b=%2F", content=b"hello",
                                headers={"x-oss-meta-k": "v"})
        response = await http.send(request)
        assert response.status_code == 200
        assert response.request is request
        assert response.content == b"ok:5"
        assert response.headers["x-oss-request-id"] == "rid"
        assert response.headers["content-length"] == "4"
        assert response.http_version == "HTTP/1.1"
        assert response.reason_phrase == "OK"
        assert response.is_closed
    seen = server.requests[0]
    assert seen.target == "/?a=1&b=%2F"
    assert seen.body == b"hello"


async def test_request_head_is_exactly_the_raw_headers(server: Server) -> None:
    async with lean() as http:
        request = httpx.Request("POST", f"{server.url}/x?q", content=b"abc",
                                headers=[("X-Mixed-Case", "1"), ("x-dup", "a"), ("x-dup", "b")])
        await http.send(request)
    expected = b"POST /x?q HTTP/1.1\r\n" + b"".join(
        name + b": " + value + b"\r\n" for name, value in request.headers.raw) + b"\r\n"
    assert server.requests[0].head == expected
    assert b"X-Mixed-Case: 1" in expected and expected.count(b"x-dup") == 2


async def test_header_injection_is_refused(server: Server) -> None:
    async with lean() as http:
        request = httpx.Request("GET", server.url, headers={"x-evil": "a\r\nx-injected: 1"})
        with pytest.raises(httpx.LocalProtocolError):
            await http.send(request)
        assert http.num_connections == 0
    assert server.requests == []


async def test_streaming_body_with_content_length(server: Server) -> None:
    async with lean() as http:
        data = [bytes([i]) * (MiB + i) for i in range(5)]

        async def gen() -> AsyncIterator[bytes]:
            for piece in data:
                yield piece

        total = sum(map(len, data))
        request = httpx.Request("PUT", server.url, content=gen(),
                                headers={"content-length": str(total)})
        response = await http.send(request)
        assert response.text == f"ok:{total}"
    assert server.requests[0].headers["content-length"] == str(total)
    assert "transfer-encoding" not in server.requests[0].headers
    assert server.requests[0].body == b"".join(data)


async def test_streaming_body_without_length_is_chunked(server: Server) -> None:
    async with lean() as http:
        async def gen() -> AsyncIterator[Any]:
            yield b"abc"
            yield b""  # empty chunks must not end the chunked body early
            yield memoryview(b"defg")

        response = await http.send(httpx.Request("PUT", server.url, content=gen()))
        assert response.text == "ok:7"
    assert server.requests[0].headers["transfer-encoding"] == "chunked"
    assert server.requests[0].body == b"abcdefg"


@pytest.mark.parametrize(("declared", "pieces"), [(5, [b"abc"]), (2, [b"abc"])])
async def test_body_not_matching_content_length(server: Server, declared: int,
                                                pieces: list[bytes]) -> None:
    async with lean() as http:
        async def gen() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        request = httpx.Request("PUT", server.url, content=gen(),
                                headers={"content-length": str(declared)})
        with pytest.raises(httpx.LocalProtocolError) as info:
            await http.send(request)
        assert info.value.request is request
        assert http.num_connections == 0  # the half-sent connection was closed


async def test_body_iterator_error_propagates_and_closes(server: Server) -> None:
    async with lean() as http:
        async def gen() -> AsyncIterator[bytes]:
            yield b"x" * 100
            raise OSError("the file went away")

        with pytest.raises(OSError, match="the file went away"):
            await http.send(httpx.Request("PUT", server.url, content=gen(),
                                          headers={"content-length": "200"}))
        assert http.num_connections == 0
        assert (await get(http, server.url)).text == "ok:0"
    assert server.accepted == 2


async def test_sdk_style_streamed_request_and_response(server: Server) -> None:
    """What Session does: send(stream=True), aiter_bytes, aclose."""
    async with lean() as http:
        response = await http.send(httpx.Request("GET", f"{server.url}/big/3000000"),
                                   stream=True)
        assert response.headers["content-length"] == "3000000"
        assert not response.is_closed
        total = 0
        async for chunk in response.aiter_bytes():
            total += len(chunk)
        await response.aclose()
        assert total == 3000000
        assert http.num_idle == 1  # read to the end: back in the pool


# -- keep-alive and the pool ------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(server: Server) -> None:
    async with lean() as http:
        for i in range(20):
            response = await http.send(httpx.Request("PUT", server.url, content=b"x" * i))
            assert response.text == f"ok:{i}"
        assert http.connections_created == 1
        assert http.num_idle == 1
    assert server.accepted == 1
    assert len(server.requests) == 20


async def test_concurrency_is_bounded_and_connections_reused(server: Server) -> None:
    async with lean(max_connections=8) as http:
        results: list[str] = []

        async def one(i: int) -> None:
            response = await http.send(httpx.Request("PUT", f"{server.url}/sleep/20",
                                                     content=b"y" * (4096 + i)))
            results.append(response.text)

        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(one, i)
        assert sorted(results) == sorted(f"ok:{4096 + i}" for i in range(64))
        assert http.num_connections <= 8
        assert http.num_waiting == 0
    assert server.max_open == 8  # bounded, and the bound was reached
    assert server.accepted == 8  # every connection reused


async def test_waiters_are_served_in_order(server: Server) -> None:
    async with lean(max_connections=1) as http:
        order: list[int] = []

        async def one(i: int) -> None:
            await get(http, f"{server.url}/sleep/30")
            order.append(i)

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)
                await asyncio.sleep(0.005)  # queue in a known order
        assert order == list(range(6))
    assert server.accepted == 1


async def test_pool_timeout(server: Server) -> None:
    timeouts = httpx.Timeout(5.0, pool=0.1)
    async with lean(max_connections=1, timeouts=timeouts) as http:
        async with anyio.create_task_group() as tg:
            tg.start_soon(get, http, f"{server.url}/sleep/500")
            await asyncio.sleep(0.05)
            request = httpx.Request("GET", server.url)
            with pytest.raises(httpx.PoolTimeout) as info:
                await http.send(request)
            assert info.value.request is request
            assert http.num_waiting == 0
        assert (await get(http, server.url)).text == "ok:0"  # the slot is still usable


async def test_connection_close_response_is_not_reused(server: Server) -> None:
    async with lean() as http:
        assert (await get(http, f"{server.url}/close")).text == "bye"
        assert http.num_connections == 0
        assert (await get(http, server.url)).text == "ok:0"
    assert server.accepted == 2


async def test_server_closing_idle_connection_is_detected() -> None:
    async with Server(idle_close=0.05) as server, lean() as http:
        assert (await get(http, server.url)).text == "ok:0"
        await server.wait_open(0)
        await asyncio.sleep(0.05)
        assert (await get(http, server.url)).text == "ok:0"
        assert http.retries == 0  # the EOF was seen: the dead connection was skipped
        assert server.accepted == 2


async def test_stale_reused_connection_is_retried_once() -> None:
    # The server closes each connection when a second request arrives on it, without
    # answering: the race with a server's idle timeout, every time.
    async with Server(stale_after=1) as server, lean() as http:
        for i in range(3):
            response = await http.send(httpx.Request("PUT", server.url, content=b"z" * i))
            assert response.text == f"ok:{i}"
        assert http.retries == 2
        assert server.accepted == 3
        assert [r.body for r in server.requests] == [b"", b"z", b"zz"]


async def test_stale_connection_not_retried_with_a_streamed_body() -> None:
    async with Server(stale_after=1) as server, lean() as http:
        await get(http, server.url)

        async def gen() -> AsyncIterator[bytes]:
            yield b"abc"

        request = httpx.Request("PUT", server.url, content=gen())
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)) \
                as info:
            await http.send(request)
        assert info.value.request is request
        assert http.retries == 0
        assert server.accepted == 1
        assert http.num_connections == 0


async def test_reused_connection_failing_after_response_bytes_is_not_retried(
        server: Server) -> None:
    async with lean() as http:
        await get(http, server.url)
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            await get(http, f"{server.url}/cut")  # reused, and the server had answered
        assert http.retries == 0
    assert server.accepted == 1
    assert len(server.requests) == 2


async def test_fresh_connection_failure_is_not_retried(server: Server) -> None:
    async with lean() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await get(http, f"{server.url}/nothing")
        assert http.retries == 0
    assert server.accepted == 1


async def test_keepalive_expiry_closes_idle_connections(server: Server) -> None:
    async with lean(keepalive_expiry=0.1) as http:
        await get(http, server.url)
        assert http.num_idle == 1
        await server.wait_open(0, timeout=2.0)  # closed by the client's sweep
        assert http.num_idle == 0
        assert http.num_connections == 0
        await get(http, server.url)
    assert server.accepted == 2


async def test_full_pool_evicts_idle_connection_of_other_origin(server: Server) -> None:
    async with Server() as other, lean(max_connections=1) as http:
        await get(http, server.url)
        assert (await get(http, other.url)).text == "ok:0"
        await server.wait_open(0)
        assert http.num_connections == 1


# -- response framing -------------------------------------------------------------------------


async def test_chunked_response(server: Server) -> None:
    async with lean() as http:
        response = await get(http, f"{server.url}/chunked")
        assert response.content == b"hello world"
        assert (await get(http, server.url)).text == "ok:0"
    assert server.accepted == 1  # a chunked response leaves the connection reusable


async def test_close_delimited_response(server: Server) -> None:
    async with lean() as http:
        response = await get(http, f"{server.url}/eof")
        assert response.content == b"until the end"
        assert http.num_connections == 0
        assert (await get(http, server.url)).text == "ok:0"
    assert server.accepted == 2


async def test_head_204_304_have_no_body_and_keep_the_connection(server: Server) -> None:
    async with lean() as http:
        response = await http.send(httpx.Request("HEAD", f"{server.url}/head-like"))
        assert response.status_code == 200
        assert response.headers["content-length"] == "12345"
        assert response.content == b""
        for status in (204, 304):
            response = await get(http, f"{server.url}/{status}")
            assert response.status_code == status
            assert response.headers["etag"] == '"e"'
            assert response.content == b""
        assert (await get(http, server.url)).text == "ok:0"
    assert server.accepted == 1


async def test_informational_response_is_skipped(server: Server) -> None:
    async with lean() as http:
        response = await http.send(httpx.Request("PUT", f"{server.url}/continue",
                                                 content=b"abc"))
        assert response.status_code == 200
        assert response.text == "ok:3"
        assert (await get(http, server.url)).text == "ok:0"
    assert server.accepted == 1


async def test_early_answer_while_uploading(server: Server) -> None:
    pulled: list[int] = []
    async with lean() as http:
        request = httpx.Request("PUT", f"{server.url}/early",
                                content=body_chunks(512, pulled=pulled),
                                headers={"content-length": str(512 * MiB)})
        response = await http.send(request)
        assert response.status_code == 413
        assert response.content == b"big!"
        assert len(pulled) < 512  # stopped sending
        assert http.num_connections == 0  # not reused: the request was cut short


async def test_early_success_answer_does_not_cut_the_body_short(server: Server) -> None:
    pulled: list[int] = []
    async with lean() as http:
        request = httpx.Request("PUT", f"{server.url}/early-ok",
                                content=body_chunks(8, pulled=pulled),
                                headers={"content-length": str(8 * MiB)})
        response = await http.send(request)
        assert response.status_code == 200
        assert len(pulled) == 8  # the whole body was sent anyway
        with anyio.fail_after(5):
            while not server.requests:
                await asyncio.sleep(0.01)
        assert len(server.requests[-1].body) == 8 * MiB
        assert http.num_idle == 1  # and the connection is still good


# -- errors -----------------------------------------------------------------------------------


async def test_garbage_status_line(server: Server) -> None:
    async with lean() as http:
        request = httpx.Request("GET", f"{server.url}/garbage")
        with pytest.raises(httpx.RemoteProtocolError, match="invalid HTTP response") as info:
            await http.send(request)
        assert info.value.request is request
        assert http.num_connections == 0
    await server.wait_open(0)


async def test_endless_response_headers_are_refused(server: Server) -> None:
    async with lean() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="headers larger than"):
            await get(http, f"{server.url}/endless-headers")
        assert http.num_connections == 0
    assert MAX_HEAD_SIZE < 100_000 * 1000
    await server.wait_open(0)


async def test_close_mid_body(server: Server) -> None:
    async with lean() as http:
        with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
            await get(http, f"{server.url}/cut")
        assert http.num_connections == 0
        response = await http.send(httpx.Request("GET", f"{server.url}/cut"), stream=True)
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError) as info:
            await response.aread()
        assert info.value.request is response.request
        assert http.num_connections == 0
    await wait_sockets(server.port, 0)


async def test_connect_error() -> None:
    with refusing_port() as port:
        async with lean() as http:
            request = httpx.Request("GET", f"http://127.0.0.1:{port}/")
            with pytest.raises(httpx.ConnectError) as info:
                await http.send(request)
            assert info.value.request is request
            assert http.num_connections == 0


async def test_connect_timeout_covers_tls_handshake() -> None:
    # A TCP server that never answers the TLS ClientHello.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    tcp = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        async with lean(timeouts=httpx.Timeout(5.0, connect=0.2)) as http:
            request = httpx.Request("GET", f"https://127.0.0.1:{port}/")
            with anyio.fail_after(3):
                with pytest.raises(httpx.ConnectTimeout) as info:
                    await http.send(request)
            assert info.value.request is request
            assert http.num_connections == 0
            await wait_sockets(port, 0)
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_read_timeout(server: Server) -> None:
    async with lean(timeouts=httpx.Timeout(5.0, read=0.2)) as http:
        request = httpx.Request("GET", f"{server.url}/hang")
        with anyio.fail_after(3), pytest.raises(httpx.ReadTimeout) as info:
            await http.send(request)
        assert info.value.request is request
        assert http.num_connections == 0
    await server.wait_open(0)


async def test_read_timeout_between_body_chunks() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()  # until the client hangs up
        writer.close()

    tcp = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        async with lean(timeouts=httpx.Timeout(5.0, read=0.2)) as http:
            response = await http.send(httpx.Request("GET", f"http://127.0.0.1:{port}/"),
                                       stream=True)
            chunks: list[bytes] = []

            async def read_all() -> None:
                async for chunk in response.aiter_raw():
                    chunks.append(chunk)

            with pytest.raises(httpx.ReadTimeout):
                await read_all()
            assert chunks == [b"abc"]
            assert http.num_connections == 0
            await wait_sockets(port, 0)
    finally:
        tcp.close()
        await tcp.wait_closed()


async def test_per_request_timeout_extension_wins(server: Server) -> None:
    async with lean(timeout=30.0) as http:
        request = httpx.Request("GET", f"{server.url}/hang",
                                extensions={"timeout": httpx.Timeout(30.0, read=0.1).as_dict()})
        with anyio.fail_after(3), pytest.raises(httpx.ReadTimeout):
            await http.send(request)


async def test_write_timeout_and_bounded_send_buffer(server: Server) -> None:
    pulled: list[int] = []
    async with lean(timeouts=httpx.Timeout(5.0, write=0.3)) as http:
        request = httpx.Request("PUT", f"{server.url}/noread",
                                content=body_chunks(256, pulled=pulled),
                                headers={"content-length": str(256 * MiB)})
        with anyio.fail_after(10), pytest.raises(httpx.WriteTimeout) as info:
            await http.send(request)
        assert info.value.request is request
        # Kernel buffers (a few MiB on loopback) plus our high-water mark, not 256 MiB.
        assert len(pulled) < 40
        assert http.num_connections == 0
    await wait_sockets(server.port, 0)


async def test_write_timeout_with_a_bytes_body(server: Server) -> None:
    async with lean(timeouts=httpx.Timeout(5.0, write=0.3)) as http:
        request = httpx.Request("PUT", f"{server.url}/noread", content=b"q" * (48 * MiB))
        with anyio.fail_after(10), pytest.raises(httpx.WriteTimeout):
            await http.send(request)
        assert http.num_connections == 0


async def test_unsupported_protocol_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        lean(max_connections=0)
    async with lean() as http:
        request = httpx.Request("GET", "ftp://example.com/")
        with pytest.raises(httpx.UnsupportedProtocol) as info:
            await http.send(request)
        assert info.value.request is request
        assert http.num_connections == 0


def test_refuses_to_run_outside_asyncio() -> None:
    # Not under asyncio (as on trio): a clear error, not a confusing failure later.
    http = lean()
    coro = http.send(httpx.Request("GET", "http://127.0.0.1:1/"))
    with pytest.raises(RuntimeError, match="only runs under asyncio"):
        coro.send(None)
    assert http.num_connections == 0


# -- cancellation --------------------------------------------------------------------------------


async def test_cancel_mid_body_closes_the_connection(server: Server) -> None:
    async with lean() as http:
        received = 0
        with anyio.move_on_after(0.3) as scope:
            response = await http.send(httpx.Request("GET", f"{server.url}/big/{512 * MiB}"),
                                       stream=True)
            try:
                async for chunk in response.aiter_raw():
                    received += len(chunk)
                    await asyncio.sleep(0.001)
            finally:
                with anyio.CancelScope(shield=True):
                    await response.aclose()
        assert scope.cancelled_caught
        assert 0 < received < 512 * MiB
        assert http.num_connections == 0 and http.num_idle == 0
        await server.wait_open(0)
        await wait_sockets(server.port, 0)  # no socket leaked
        assert (await get(http, server.url)).text == "ok:0"
    assert server.accepted == 2  # the cancelled connection was not reused


async def test_cancel_while_reading_body_frees_the_connection(server: Server) -> None:
    # Cancelled inside the body iterator, and the response is never closed: the
    # connection is closed and its slot freed anyway.
    async with lean(max_connections=1) as http:
        chunks: list[bytes] = []
        with anyio.move_on_after(0.2) as scope:
            response = await http.send(httpx.Request("GET", f"{server.url}/stall"),
                                       stream=True)
            async for chunk in response.aiter_raw():
                chunks.append(chunk)
        assert scope.cancelled_caught
        assert chunks == [b"some"]
        assert http.num_connections == 0
        await server.wait_open(0)
        assert (await get(http, server.url)).text == "ok:0"
    assert server.accepted == 2


async def test_cancel_waiting_for_response(server: Server) -> None:
    async with lean(max_connections=1) as http:
        with anyio.move_on_after(0.1):
            await get(http, f"{server.url}/hang")
        assert http.num_connections == 0
        await wait_sockets(server.port, 0)
        assert (await get(http, server.url)).text == "ok:0"


async def test_cancel_while_uploading(server: Server) -> None:
    async with lean(max_connections=1) as http:
        with anyio.move_on_after(0.2):
            await http.send(httpx.Request("PUT", f"{server.url}/noread",
                                          content=body_chunks(256),
                                          headers={"content-length": str(256 * MiB)}))
        assert http.num_connections == 0
        await wait_sockets(server.port, 0)


async def test_cancelled_waiter_does_not_leak_a_slot(server: Server) -> None:
    async with lean(max_connections=2) as http:
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(get, http, f"{server.url}/sleep/200")
            await asyncio.sleep(0.05)
            with anyio.move_on_after(0.05):
                await get(http, server.url)  # queued, then cancelled
            assert http.num_waiting == 0
        assert http.num_connections == 2
        # Both slots still work at once.
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(get, http, f"{server.url}/sleep/100")
        assert server.max_open == 2


async def test_cancel_during_connect_does_not_leak() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    tcp = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = tcp.sockets[0].getsockname()[1]
    try:
        async with lean() as http:
            with anyio.move_on_after(0.1):
                await http.send(httpx.Request("GET", f"https://127.0.0.1:{port}/"))
            assert http.num_connections == 0
            await wait_sockets(port, 0)
    finally:
        tcp.close()
        await tcp.wait_closed()


# -- large responses --------------------------------------------------------------------------


async def test_streaming_64_mib_response_has_bounded_buffer(server: Server) -> None:
    size = 64 * MiB
    async with lean() as http:
        response = await http.send(httpx.Request("GET", f"{server.url}/big/{size}"),
                                   stream=True)
        digest = hashlib.sha256()
        total = 0
        slept = False
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            total += len(chunk)
            if not slept:
                await asyncio.sleep(0.3)  # a slow consumer: the buffer fills up
                slept = True
        await response.aclose()
        assert total == size
        assert digest.digest() == hashlib.sha256(b"x" * size).digest()
        peak = response.stream.peak_buffered  # type: ignore[attr-defined]
        assert READ_BUFFER_LIMIT // 2 < peak <= READ_BUFFER_LIMIT + MiB // 2
        assert http.num_idle == 1
        assert (await get(http, server.url)).text == "ok:0"
    assert server.accepted == 1


async def test_partly_read_response_closes_its_connection(server: Server) -> None:
    async with lean() as http:
        response = await http.send(httpx.Request("GET", f"{server.url}/big/{16 * MiB}"),
                                   stream=True)
        async for _ in response.aiter_raw():
            break
        await response.aclose()
        assert http.num_connections == 0
        with pytest.raises((httpx.StreamClosed, httpx.StreamConsumed)):
            await response.aread()
        await get(http, server.url)
    assert server.accepted == 2


# -- https -------------------------------------------------------------------------------------


async def test_https_verified_streamed_and_reused() -> None:
    server_ctx, client_ctx = self_signed()
    async with Server(ssl_context=server_ctx) as server:
        async with lean(ssl_context=client_ctx) as http:
            for i in range(5):
                response = await http.send(httpx.Request("PUT", server.url, content=b"s" * i))
                assert response.text == f"ok:{i}"
            response = await get(http, f"{server.url}/big/{8 * MiB}")
            assert len(response.content) == 8 * MiB
            assert http.connections_created == 1
        assert server.accepted == 1
        # Without the context, the default one (system CAs) does not trust this server.
        async with lean() as strict:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await get(strict, server.url)
            assert strict.num_connections == 0


# -- closing -------------------------------------------------------------------------------------


async def test_aclose_closes_sockets_and_refuses_requests(server: Server) -> None:
    http = lean(max_connections=4)
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(get, http, f"{server.url}/sleep/50")
    assert http.num_idle == 4
    assert client_sockets(server.port) == 4
    await http.aclose()
    assert client_sockets(server.port) == 0
    await server.wait_open(0)
    assert http.is_closed and http.num_connections == 0
    with pytest.raises(RuntimeError, match="closed"):
        await get(http, server.url)


async def test_aclose_wakes_waiters_and_fails_active_requests(server: Server) -> None:
    http = lean(max_connections=1)
    errors: list[BaseException] = []

    async def call(path: str) -> None:
        try:
            await get(http, f"{server.url}{path}")
        except (RuntimeError, httpx.TransportError) as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "/hang")
        await asyncio.sleep(0.05)
        tg.start_soon(call, "/")
        await asyncio.sleep(0.05)
        assert http.num_waiting == 1
        await http.aclose()
    assert sorted(type(e).__name__ for e in errors) == ["ReadError", "RuntimeError"]
    assert http.num_connections == 0
    assert client_sockets(server.port) == 0


# -- the OSS emulator ---------------------------------------------------------------------------


def signed(emu: Any, method: str, bucket: str, key: str, body: bytes | None = None,
           headers: dict[str, str] | None = None) -> httpx.Request:
    hdrs = dict(headers or {})
    if body is not None:
        hdrs["content-length"] = str(len(body))
    creds = Credentials(access_key_id=emu.access_key_id,
                        access_key_secret=emu.access_key_secret)
    sign_v4(method, bucket, key, [], hdrs, creds, datetime.datetime.now(datetime.timezone.utc),
            emu.region)
    return httpx.Request(method, f"{emu.endpoint}/{bucket}/{encode_key(key)}", headers=hdrs,
                         content=body)


async def test_round_trips_on_the_emulator(oss_emulator: Any) -> None:
    bucket = oss_emulator.create_bucket("lean-bucket")
    data = {f"k/{i}": bytes([i]) * (4096 + i) for i in range(64)}
    async with lean(max_connections=8) as http:
        async def put_get(key: str) -> None:
            response = await http.send(signed(oss_emulator, "PUT", bucket, key, data[key]))
            assert response.status_code == 200, response.text
            assert response.headers["etag"]
            assert response.headers["x-oss-request-id"]
            assert response.headers["x-oss-hash-crc64ecma"].isdigit()
            response = await http.send(signed(oss_emulator, "GET", bucket, key))
            assert response.content == data[key]

        async with anyio.create_task_group() as tg:
            for key in data:
                tg.start_soon(put_get, key)
        assert http.num_connections <= 8

        response = await http.send(signed(oss_emulator, "HEAD", bucket, "k/7"))
        assert response.status_code == 200
        assert response.headers["content-length"] == str(4096 + 7)
        assert response.content == b""

        big = bytes(range(256)) * (3 * MiB // 256 + 1)

        async def gen() -> AsyncIterator[bytes]:
            for start in range(0, len(big), MiB):
                yield big[start:start + MiB]

        request = signed(oss_emulator, "PUT", bucket, "big", None,
                         {"content-length": str(len(big))})
        request = httpx.Request("PUT", request.url, headers=request.headers, content=gen())
        assert (await http.send(request)).status_code == 200
        response = await http.send(signed(oss_emulator, "GET", bucket, "big"), stream=True)
        assert b"".join([c async for c in response.aiter_bytes()]) == big

        response = await http.send(signed(oss_emulator, "GET", bucket, "missing"))
        assert response.status_code == 404
        assert b"NoSuchKey" in response.content
        assert http.connections_created <= 8
    for key, value in data.items():
        assert oss_emulator.get_object(bucket, key) == value



# -- uvloop -------------------------------------------------------------------------------------


def test_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenarios() -> None:
        async with Server() as server, lean(max_connections=4,
                                            timeouts=httpx.Timeout(5.0, read=0.2)) as http:
            for i in range(5):
                assert (await http.send(httpx.Request("PUT", server.url,
                                                      content=b"u" * i))).text == f"ok:{i}"
            response = await http.send(httpx.Request("PUT", server.url, content=body_chunks(3)))
            assert response.text == f"ok:{3 * MiB}"
            assert server.accepted == 1

            response = await http.send(httpx.Request("GET", f"{server.url}/big/{32 * MiB}"),
                                       stream=True)
            total = 0
            async for chunk in response.aiter_raw():
                if not total:
                    await asyncio.sleep(0.2)
                total += len(chunk)
            assert total == 32 * MiB
            peak = response.stream.peak_buffered  # type: ignore[attr-defined]
            assert peak <= READ_BUFFER_LIMIT + MiB // 2

            with pytest.raises(httpx.ReadTimeout):
                await get(http, f"{server.url}/hang")
            with anyio.move_on_after(0.1):
                response = await http.send(httpx.Request("GET", f"{server.url}/stall"),
                                           stream=True)
                await response.aread()
            assert http.num_connections == 0  # both broken connections closed
            await server.wait_open(0)
            assert (await get(http, server.url)).text == "ok:0"
        async with Server(stale_after=1) as server, lean() as http:
            for _ in range(3):
                assert (await get(http, server.url)).text == "ok:0"
            assert http.retries == 2

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(scenarios())
    finally:
        loop.close()
