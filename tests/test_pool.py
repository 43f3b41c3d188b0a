"""FastHTTPTransport / FastConnectionPool against real sockets on 127.0.0.1.

The server is a small h11 server in the test's own event loop, so that each test controls
exactly what the server does (delay, stall, close idle connections, not read the body) and
can count the TCP connections it sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import anyio
import h11
import httpx
import psutil
import pytest
from counting_server import CountingServer, refusing_port
from tls_helpers import self_signed

from oss_callback import AsyncClient
from oss_callback._pool import FastConnectionPool, FastHTTPTransport, PoolClosedError

BIG = 8 * 1024 * 1024


class Server(CountingServer):
    """An HTTP/1.1 server (h11 over asyncio streams) that counts connections.

    Routes: ``/`` answers ``ok:<request body length>``; ``/sleep/<ms>`` answers after a
    delay; ``/big/<n>`` answers ``n`` bytes in 64 KiB chunks; ``/close`` answers with
    ``Connection: close``; ``/hang`` never answers; ``/noread`` stops reading the request.
    """

    quiet = (*CountingServer.quiet, h11.ProtocolError)

    def __init__(self, *, idle_close: float | None = None, ssl_context: Any = None) -> None:
        super().__init__(ssl_context=ssl_context)
        self.idle_close = idle_close
        self.requests = 0
        self.bodies: list[int] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._cycles(h11.Connection(h11.SERVER), reader, writer)

    async def _next(self, conn: h11.Connection, reader: asyncio.StreamReader,
                    timeout: float | None = None) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await asyncio.wait_for(reader.read(65536), timeout)
            except asyncio.TimeoutError:
                return None  # idle too long: close the connection
            conn.receive_data(data)

    async def _cycles(self, conn: h11.Connection, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while True:
            request = await self._next(conn, reader, self.idle_close)
            if not isinstance(request, h11.Request):
                return
            self.requests += 1
            path = request.target.decode()
            if path == "/noread":
                await asyncio.sleep(3600)
            size = 0
            while True:
                event = await self._next(conn, reader)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            self.bodies.append(size)
            headers = [("content-type", "text/plain")]
            body = f"ok:{size}".encode()
            chunks = [body]
            if path == "/hang":
                await asyncio.sleep(3600)
            elif path.startswith("/sleep/"):
                await asyncio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            elif path.startswith("/big/"):
                n = int(path.rsplit("/", 1)[1])
                chunk = b"x" * 65536
                chunks = [chunk[: min(65536, n - i)] for i in range(0, n, 65536)]
                body = b""
            elif path == "/close":
                headers.append(("connection", "close"))
            total = sum(len(c) for c in chunks)
            headers.append(("content-length", str(total)))
            writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
            for c in chunks:
                writer.write(conn.send(h11.Data(data=c)) or b"")
                await writer.drain()
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server() as s:
        yield s


@pytest.fixture(autouse=True)
def _collect_garbage() -> Any:
    # A socket left unclosed warns (ResourceWarning, an error here) only when collected:
    # collect within the test that leaked it.
    yield
    gc.collect()


def make_client(max_connections: int = 4, **kwargs: Any) -> tuple[httpx.AsyncClient,
                                                                     FastConnectionPool]:
    timeout = kwargs.pop("timeout", httpx.Timeout(5.0))
    transport = FastHTTPTransport(max_connections=max_connections, **kwargs)
    return httpx.AsyncClient(transport=transport, timeout=timeout), transport.pool


def client_sockets(port: int) -> int:
    """Open TCP sockets of this process to ``port`` (the client side)."""
    return sum(
        1 for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status != psutil.CONN_TIME_WAIT
    )


async def assert_free_slots(client: httpx.AsyncClient, server: Server, n: int) -> None:
    """``n`` requests that each hold a connection for 300 ms all get one at once."""
    results: list[str] = []

    async def one() -> None:
        response = await client.get(f"{server.url}/sleep/300",
                                    timeout=httpx.Timeout(5.0, pool=0.2))
        results.append(response.text)

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    assert results == ["ok:0"] * n


# -- throughput, bounds, reuse ------------------------------------------------------------


@pytest.mark.parametrize("max_connections", [16, 64])
async def test_many_concurrent_requests_bounded_and_reused(server: Server,
                                                           max_connections: int) -> None:
    client, pool = make_client(max_connections)
    limiter = anyio.CapacityLimiter(64)
    seen = 0
    payload = b"p" * 4096

    async def one(i: int) -> None:
        nonlocal seen
        async with limiter:
            path = "/sleep/2" if i % 3 == 0 else "/"
            response = await client.put(f"{server.url}{path}", content=payload)
            assert response.text == "ok:4096"
            seen = max(seen, pool.num_connections)

    async with client, anyio.create_task_group() as tg:
        for i in range(500):
            tg.start_soon(one, i)
    assert server.requests == 500
    assert server.max_open <= max_connections
    assert seen <= max_connections
    assert server.accepted <= max_connections  # every connection reused, none replaced
    assert pool.connections_created == server.accepted
    assert pool.num_connections == 0 and pool.num_waiting == 0  # aclose gave all back
    await server.wait_open(0)


async def test_sequential_requests_reuse_one_connection(server: Server) -> None:
    client, pool = make_client()
    async with client:
        for _ in range(20):
            assert (await client.get(server.url)).text == "ok:0"
        assert pool.connections_created == 1
        assert pool.num_connections == pool.num_idle == 1
    assert server.accepted == 1


async def test_waiters_are_served_in_order(server: Server) -> None:
    client, _ = make_client(1)
    order: list[int] = []

    async def one(i: int) -> None:
        await client.get(f"{server.url}/sleep/20")
        order.append(i)

    async with client, anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(one, i)
            await anyio.sleep(0.005)  # queue in a known order
    assert order == list(range(6))
    assert server.accepted == 1


# -- stale and expired connections ---------------------------------------------------------


async def test_server_closing_idle_connection_is_detected() -> None:
    async with Server(idle_close=0.1) as server:
        client, pool = make_client()
        async with client:
            assert (await client.get(server.url)).text == "ok:0"
            await server.wait_open(0)  # the server closed the kept-alive connection
            assert pool.num_idle == 1
            assert (await client.get(server.url)).text == "ok:0"
            assert pool.connections_created == 2
            assert pool.num_connections == 1
        assert server.accepted == 2


async def test_keepalive_expiry_closes_idle_connections(server: Server) -> None:
    client, pool = make_client(keepalive_expiry=0.05)
    async with client:
        await client.get(server.url)
        await anyio.sleep(0.1)
        await client.get(server.url)
        assert pool.connections_created == 2
        await server.wait_open(1)  # the expired one was closed, not just dropped
    assert client_sockets(server.port) == 0


async def test_connection_close_response_is_not_reused(server: Server) -> None:
    client, pool = make_client()
    async with client:
        assert (await client.get(f"{server.url}/close")).text == "ok:0"
        assert pool.num_connections == 0
        assert (await client.get(server.url)).text == "ok:0"
        assert pool.connections_created == 2


# -- failures and cancellation free the slot -----------------------------------------------


class BodyError(Exception):
    pass


@pytest.mark.parametrize("fail_after_chunks", [0, 2])
async def test_body_iterator_exception_frees_slot(server: Server, fail_after_chunks: int) -> None:
    client, pool = make_client(2)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(fail_after_chunks):
            yield b"x" * 1000
        raise BodyError("the file changed")

    async with client:
        for _ in range(3):
            with pytest.raises(BodyError, match="the file changed"):
                await client.put(server.url, content=body())
        assert pool.num_connections == 0
        await assert_free_slots(client, server, 2)
    await server.wait_open(0)


async def test_cancel_mid_body_frees_slot(server: Server) -> None:
    client, pool = make_client(2)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b"x" * 1000
        sent += 1
        await anyio.sleep(3600)
        yield b""

    async with client:
        with anyio.move_on_after(0.3):
            async with anyio.create_task_group() as tg:
                for _ in range(2):
                    tg.start_soon(lambda: client.put(server.url, content=body()))
        assert sent == 2
        assert pool.num_connections == 0
        await server.wait_open(0)  # the half-sent requests' connections were closed
        await assert_free_slots(client, server, 2)


async def test_cancel_waiting_for_response_frees_slot(server: Server) -> None:
    client, pool = make_client(1)
    async with client:
        with anyio.move_on_after(0.2):
            await client.get(f"{server.url}/hang")
        assert pool.num_connections == 0
        await assert_free_slots(client, server, 1)


async def test_connect_error_frees_slot() -> None:
    with refusing_port() as port:  # bound, not listening: refused
        client, pool = make_client(1)
        async with client:
            for _ in range(3):
                with pytest.raises(httpx.ConnectError):
                    await client.get(f"http://127.0.0.1:{port}/")
            assert pool.num_connections == 0


async def test_cancelled_waiter_does_not_leak_a_slot(server: Server) -> None:
    client, pool = make_client(1)
    async with client:
        held = await client.send(client.build_request("GET", f"{server.url}/big/100000"),
                                 stream=True)
        with anyio.move_on_after(0.1):
            await client.get(server.url)  # waits: the one connection is held
        assert pool.num_waiting == 0
        await held.aread()
        await held.aclose()
        assert pool.num_connections == pool.num_idle == 1
        await assert_free_slots(client, server, 1)


async def test_cancelled_waiter_passes_its_wakeup_on(server: Server) -> None:
    """A waiter cancelled just as it is handed the connection hands it to the next."""
    client, pool = make_client(1)
    scope = anyio.CancelScope()

    async def trace(event: str, info: dict[str, Any]) -> None:
        # Runs inside the release, right before the connection is handed to `first`:
        # `first` is cancelled and then granted before it can run again.
        if event == "http11.response_closed.complete":
            scope.cancel()

    async def first() -> None:
        with scope:
            await client.get(server.url)
        assert scope.cancelled_caught

    async def second() -> None:
        response = await client.get(server.url, timeout=httpx.Timeout(5.0, pool=2.0))
        assert response.text == "ok:0"

    async with client:
        request = client.build_request("GET", server.url, extensions={"trace": trace})
        held = await client.send(request, stream=True)
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.sleep(0.05)
            tg.start_soon(second)
            await anyio.sleep(0.05)
            assert pool.num_waiting == 2
            await held.aread()  # reads to the end and releases the connection
        assert pool.num_connections == pool.num_idle == 1
        assert pool.connections_created == 1  # `second` got the very same connection


# -- timeouts -------------------------------------------------------------------------------


async def test_pool_timeout(server: Server) -> None:
    client, pool = make_client(1)
    async with client:
        async with client.stream("GET", f"{server.url}/big/100000") as held:
            with pytest.raises(httpx.PoolTimeout):
                await client.get(server.url, timeout=httpx.Timeout(5.0, pool=0.1))
            assert pool.num_waiting == 0
            await held.aread()
        assert (await client.get(server.url)).text == "ok:0"
        assert pool.connections_created == 1


async def test_read_timeout(server: Server) -> None:
    client, pool = make_client(1)
    async with client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"{server.url}/hang", timeout=httpx.Timeout(5.0, read=0.1))
        assert pool.num_connections == 0
        assert (await client.get(server.url)).text == "ok:0"


async def test_write_timeout(server: Server) -> None:
    client, pool = make_client(1)
    chunk = b"w" * (1024 * 1024)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(1024):  # far more than the socket buffers hold
            yield chunk

    async with client:
        with pytest.raises(httpx.WriteTimeout):
            await client.put(f"{server.url}/noread", content=body(),
                             timeout=httpx.Timeout(5.0, write=0.2))
        assert pool.num_connections == 0


@contextlib.asynccontextmanager
async def stalling_server() -> AsyncIterator[int]:
    """A TCP server (yields its port) that accepts and never says a word: TLS stalls."""
    tasks: set[asyncio.Task[Any]] = set()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await reader.read()
        finally:
            writer.close()

    srv = await asyncio.start_server(stall, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await srv.wait_closed()
        if tasks:  # the client closed its end: each handler sees EOF and closes
            await asyncio.wait(tasks, timeout=5)


async def test_connect_timeout_covers_tls_handshake() -> None:
    async with stalling_server() as port:
        client, pool = make_client(1, verify=False)
        async with client:
            with pytest.raises(httpx.ConnectTimeout):
                await client.get(f"https://127.0.0.1:{port}/",
                                 timeout=httpx.Timeout(5.0, connect=0.1))
            assert pool.num_connections == 0
            assert client_sockets(port) == 0


async def test_cancel_during_tls_handshake_closes_socket() -> None:
    async with stalling_server() as port:
        client, pool = make_client(1, verify=False)
        async with client:
            with anyio.move_on_after(0.1):
                await client.get(f"https://127.0.0.1:{port}/")
            assert pool.num_connections == 0
            assert client_sockets(port) == 0  # httpcore's own pool leaks this one


# -- responses -----------------------------------------------------------------------------


async def test_streaming_large_response(server: Server) -> None:
    client, pool = make_client(1)
    async with client:
        received = bytearray()
        chunks = 0
        async with client.stream("GET", f"{server.url}/big/{BIG}") as response:
            async for chunk in response.aiter_bytes():
                received += chunk
                chunks += 1
        assert len(received) == BIG and set(received) == {ord("x")}
        assert chunks > 1
        assert (await client.get(server.url)).text == "ok:0"
        assert pool.connections_created == 1  # fully read: reused


async def test_partly_read_response_closes_its_connection(server: Server) -> None:
    client, pool = make_client(1)
    async with client:
        async with client.stream("GET", f"{server.url}/big/{BIG}") as response:
            async for _ in response.aiter_bytes():
                break
        assert pool.num_connections == 0  # closed, not put back with unread data
        await server.wait_open(0)
        assert (await client.get(server.url)).text == "ok:0"
        assert pool.connections_created == 2


async def test_error_while_streaming_frees_slot(server: Server) -> None:
    client, pool = make_client(1)
    async with client:
        async def consume() -> None:
            async with client.stream("GET", f"{server.url}/big/{BIG}") as response:
                async for _ in response.aiter_bytes():
                    raise BodyError

        with pytest.raises(BodyError):
            await consume()
        assert pool.num_connections == 0
        await assert_free_slots(client, server, 1)


# -- several origins -----------------------------------------------------------------------


async def test_full_pool_evicts_idle_connection_of_other_origin(server: Server) -> None:
    async with Server() as other:
        client, pool = make_client(1)
        async with client:
            await client.get(server.url)
            assert pool.num_idle == 1
            response = await client.get(other.url, timeout=httpx.Timeout(5.0, pool=0.5))
            assert response.text == "ok:0"
            await server.wait_open(0)
            assert pool.num_connections == 1


async def test_waiter_for_other_origin_gets_the_slot(server: Server) -> None:
    async with Server() as other:
        client, pool = make_client(1)
        async with client:
            async with (client.stream("GET", f"{server.url}/big/100000") as held,
                        anyio.create_task_group() as tg):
                tg.start_soon(client.get, other.url)
                await anyio.sleep(0.05)
                assert pool.num_waiting == 1
                await held.aread()
            assert server.accepted == other.accepted == 1
            await server.wait_open(0)
            assert pool.num_connections == 1


# -- https ---------------------------------------------------------------------------------


async def test_https_verified_and_reused() -> None:
    server_ctx, client_ctx = self_signed()
    async with Server(ssl_context=server_ctx) as server:
        client, pool = make_client(2, verify=client_ctx)
        async with client:
            for _ in range(5):
                assert (await client.put(server.url, content=b"abc")).text == "ok:3"
            assert pool.connections_created == 1
        # Certificate checks are on: the default CA bundle does not trust this server.
        strict, _ = make_client(1)
        async with strict:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await strict.get(server.url)


# -- closing -------------------------------------------------------------------------------


async def test_aclose_closes_sockets_and_refuses_requests(server: Server) -> None:
    client, pool = make_client(4)
    transport = client._transport
    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(client.get, f"{server.url}/sleep/50")
    assert pool.num_idle == 4
    assert client_sockets(server.port) == 4
    await transport.aclose()
    assert client_sockets(server.port) == 0
    await server.wait_open(0)
    assert pool.is_closed and pool.num_connections == 0
    with pytest.raises(PoolClosedError):
        await client.get(server.url)
    await client.aclose()


async def test_aclose_wakes_waiters_and_closes_active_connections(server: Server) -> None:
    client, pool = make_client(1)
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await client.get(server.url)
        except PoolClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        async def hang() -> None:
            with pytest.raises(httpx.ReadError):
                await client.get(f"{server.url}/hang")

        tg.start_soon(hang)
        await anyio.sleep(0.05)
        tg.start_soon(waiter)
        await anyio.sleep(0.05)
        assert pool.num_waiting == 1
        await client.aclose()
    assert len(errors) == 1
    assert pool.num_connections == 0
    assert client_sockets(server.port) == 0


async def test_pool_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        FastConnectionPool(max_connections=0)
    client, _ = make_client(1)
    async with client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client._transport.handle_async_request(httpx.Request("GET", "ftp://x/"))


# -- end to end through the SDK --------------------------------------------------------------


async def test_sdk_round_trips_on_the_emulator(oss_emulator: Any) -> None:
    oss_emulator.create_bucket("pool-bucket")
    transport = FastHTTPTransport(max_connections=8)
    async with AsyncClient(oss_emulator.endpoint, oss_emulator.access_key_id,
                           oss_emulator.access_key_secret, region=oss_emulator.region,
                           transport=transport) as client:
        bucket = client.get_bucket("pool-bucket")
        data = {f"k{i}": bytes([i]) * (4096 + i) for i in range(64)}

        async def put_get(key: str) -> None:
            await bucket.put_object(key, data[key])
            assert await bucket.get_object(key) == data[key]

        async with anyio.create_task_group() as tg:
            for key in data:
                tg.start_soon(put_get, key)
        big = bytes(range(256)) * 8192  # 2 MiB: a streamed download
        await bucket.put_object("big", big)
        assert await bucket.get_object("big") == big
        assert transport.pool.connections_created <= 8
        assert transport.pool.num_connections <= 8
    assert transport.pool.is_closed
