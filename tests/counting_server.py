"""An asyncio test server that counts connections; subclasses answer in ``_handle``."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from typing import Any

import anyio


class CountingServer:
    """Serves on 127.0.0.1 (TLS with ``ssl_context``) and counts accepted, open and the
    most open connections at once. ``_handle(reader, writer)`` serves one connection;
    connection errors and shutdown cancellation end it quietly."""

    #: what ends a connection quietly (a subclass adds its protocol errors)
    quiet: tuple[type[BaseException], ...] = (ConnectionError, asyncio.IncompleteReadError,
                                              ssl.SSLError)

    def __init__(self, *, ssl_context: Any = None) -> None:
        self.ssl_context = ssl_context
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Any:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                  ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._server.wait_closed()

    async def wait_open(self, n: int, timeout: float = 5.0) -> None:
        """Wait until the server sees at most ``n`` open connections."""
        with anyio.fail_after(timeout):
            while self.open > n:
                await asyncio.sleep(0.01)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self._handle(reader, writer)
        except self.quiet:
            pass
        except asyncio.CancelledError:
            pass  # server shutdown (Python 3.11's streams log a cancelled handler task)
        finally:
            self.open -= 1
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port nobody listens on (bound, so that nobody else takes it meanwhile): connecting
    to it is refused."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()
