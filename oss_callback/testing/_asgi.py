"""Serve any ASGI app (e.g. your FastAPI callback receiver) on 127.0.0.1 in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

__all__ = ["ServeASGI"]


class ServeASGI:
    """Run ``app`` under uvicorn on ``127.0.0.1`` (a free port) in a background thread.

    ::

        with ServeASGI(app) as server:
            Callback(server.url + "/oss-callback")

    Works the same inside and outside a running event loop (the server has its own).
    """

    def __init__(
        self, app: Any, *, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 10.0
    ) -> None:
        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._start_timeout = start_timeout
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # signals belong to the host program

        self._server = _Server(config)
        self._thread = threading.Thread(target=self._run, name="oss-callback-asgi", daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def __enter__(self) -> ServeASGI:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the ASGI server failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ASGI server did not start in {self._start_timeout} s")
            time.sleep(0.005)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
