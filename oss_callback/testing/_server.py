"""Serving the emulator: uvicorn on its own thread and event loop, on a socket bound up
front (so ``port=0`` is known before it starts), with HTTPS from a made-up CA if asked, and
a guard against clients that never finish a request head."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oss_callback.testing._app import EmulatorApp
from oss_callback.testing._tls import write_tls_files

__all__ = ["ServerThread"]

logger = logging.getLogger("oss_callback.testing")


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is an optional speed-up
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _http_impl() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover
        return "h11"
    return "httptools"


class _HeadGuard:
    """Drops a connection that doesn't deliver a complete request head in time.

    uvicorn only limits the wait for the *first byte* of the next request on a kept-alive
    connection (``timeout_keep_alive``, disarmed by any byte): a client that connects and
    says nothing, or drips its head a byte at a time (slowloris), would hold a connection
    (and a file descriptor) for ever. The guard is armed when the connection opens and
    whenever a response completes, and disarmed when a request's head is complete (uvicorn
    has made the request's cycle); if it fires first, the connection is closed.
    """

    def __init__(self, protocol: Any, timeout: float) -> None:
        self._protocol = protocol
        self._timeout = timeout
        self._handle: asyncio.TimerHandle | None = None
        self._cycle: object = None

    def arm(self) -> None:
        self.disarm()
        self._cycle = self._protocol.cycle
        self._handle = self._protocol.loop.call_later(self._timeout, self._expire)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def after_data(self) -> None:
        if self._handle is not None and self._protocol.cycle is not self._cycle:
            self.disarm()  # a request head is complete

    def after_response(self) -> None:
        # uvicorn arms its keep-alive timer exactly when the connection now waits for the
        # next request (not closing, no pipelined request already parsed).
        if self._protocol.timeout_keep_alive_task is not None:
            self.arm()

    def _expire(self) -> None:
        self._handle = None
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            logger.debug("oss emulator: no complete request head within %.3g s; closing",
                         self._timeout)
            transport.close()


def _guarded_protocol(impl: str, header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (``httptools`` or ``h11``) with a :class:`_HeadGuard`."""
    base: type[Any]
    if impl == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class Guarded(base):  # type: ignore[misc]  # either of uvicorn's protocols
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._head_guard = _HeadGuard(self, header_timeout)
            self._head_guard.arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._head_guard.after_data()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._head_guard.after_response()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_guard.disarm()
            super().connection_lost(exc)

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock




class ServerThread:
    """uvicorn serving an :class:`EmulatorApp` on a background thread with its own event loop.

    :meth:`bind` takes the socket (the real port is then known), :meth:`start` serves and
    returns once the socket accepts connections, :meth:`stop` ends it all (idempotent).
    """

    def __init__(
        self, app: EmulatorApp, *, host: str, port: int, tls: bool, header_timeout: float
    ) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self.tls = tls
        self.header_timeout = header_timeout
        self.port = 0
        #: With ``tls``: the directory holding ``ca.pem`` (removed on :meth:`stop`).
        self.tls_dir: str | None = None
        #: With ``tls``: the PEM certificate of the private CA that issued the server's.
        self.ca_pem: bytes | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    def bind(self) -> int:
        """Take the socket; returns the port (the real one when asked for port 0)."""
        self._sock = _bind(self.host, self._requested_port)
        self.port = self._sock.getsockname()[1]
        return self.port

    def start(self) -> None:
        """Serve on the bound socket (blocks until it accepts connections).

        Raises:
            RuntimeError: the server failed to start, or did not within 30 s.
        """
        import uvicorn

        assert self._sock is not None
        ssl_options: dict[str, Any] = {}
        if self.tls:
            self.tls_dir = tempfile.mkdtemp(prefix="oss-emulator-tls-")
            self.ca_pem, cert_file, key_file = write_tls_files(Path(self.tls_dir), self.host)
            ssl_options = {"ssl_certfile": str(cert_file), "ssl_keyfile": str(key_file)}

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # the owner of the process handles signals, not the emulator

        config = uvicorn.Config(
            self.app,
            http=_guarded_protocol(_http_impl(), self.header_timeout),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=3,
            **ssl_options,
        )
        self._server = _Server(config)
        self._thread = threading.Thread(
            target=self._run, name=f"oss-emulator-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the OSS emulator server failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError("the OSS emulator server did not start within 30 s")
            time.sleep(0.002)

    def _run(self) -> None:
        loop = _new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self) -> None:
        assert self._sock is not None
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            await self.app.aclose()

    def stop(self) -> None:
        """Stop serving, wait for the server thread, close the socket, remove the TLS files."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():  # pragma: no cover - a stuck handler
                self._server.force_exit = True
                self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        if self.tls_dir is not None:
            shutil.rmtree(self.tls_dir, ignore_errors=True)
