"""Prototypes of core changes, applied by monkeypatching inside a benchmark worker only.

``oss_callback`` itself is not edited: each patch here changes the imported modules of one
worker process (``"patches": [...]`` in its spec), so the ``proposals`` group can measure a
proposed change against the unpatched code in the same interleaved rounds.

* ``sniffio``: make ``import sniffio`` succeed. httpcore's ``current_async_library()``
  does ``import sniffio`` on every lock/semaphore operation; anyio >= 4.? no longer
  depends on sniffio, so when it is absent every call is a *failed* import that scans
  ``sys.path`` (dozens per request). The real fix is a dependency: ``sniffio>=1.3``.
* ``shard_pool``: spread requests round-robin over 8 ``httpx.AsyncClient`` pools of
  ``max_connections / 8`` connections instead of one pool of ``max_connections``:
  httpcore's ``_assign_requests_to_connections`` is O(queued requests x connections) and
  runs twice per request, which dominates with 64 requests in flight.
* ``async_checkpoint``: write checkpoints from one background thread that always writes
  the newest snapshot (coalescing), instead of making each part's worker wait for its
  checkpoint write (two fsyncs, serialized by a lock) before it starts its next part.
  Flushed before CompleteMultipartUpload, so the on-disk state is the same at the end;
  after a crash the checkpoint may miss the last parts, which ``_reconcile`` adopts from
  ListParts by CRC-64 (or uploads again).
* ``thread_parts``: UploadPart of a file range (and PutObject of a file) sent by one
  blocking job per request in a
  worker thread (``readinto`` -> CRC-64 -> ``sendall`` over one buffer on a per-thread
  connection): the ceiling of a leaner data plane (see :func:`_thread_parts`).
* ``lean_http``: replace httpx/httpcore under ``Session`` by a minimal keep-alive pool of
  asyncio protocols parsed with httptools (plain HTTP, no retries of its own): what the
  per-request cost of the HTTP layer is (the small-object case).
* ``chunk_4m`` / ``chunk_256k``: file read size (one thread hop per chunk) 4 MiB / 256 KiB
  instead of 1 MiB.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

__all__ = ["PATCHES", "apply"]


class _AsyncLibraryNotFoundError(RuntimeError):
    pass


def _sniffio() -> None:
    """A stand-in with sniffio 1.3's behaviour (the real fix: depend on sniffio)."""
    try:
        import sniffio  # noqa: F401
    except ImportError:
        import contextvars

        shim = types.ModuleType("sniffio")
        cvar: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            "current_async_library_cvar", default=None)
        local = threading.local()
        local.name = None

        def current_async_library() -> str:
            value = getattr(local, "name", None) or cvar.get()
            if value is not None:
                return value
            if "asyncio" in sys.modules:
                from asyncio import current_task

                try:
                    if current_task() is not None:
                        return "asyncio"
                except RuntimeError:
                    pass
            raise _AsyncLibraryNotFoundError("unknown async library, or not in async context")

        vars(shim).update(
            current_async_library=current_async_library,
            AsyncLibraryNotFoundError=_AsyncLibraryNotFoundError,
            current_async_library_cvar=cvar, thread_local=local,
        )
        sys.modules["sniffio"] = shim


class _ShardedHTTP:
    """The part of ``httpx.AsyncClient`` that ``Session`` uses, over several pools."""

    def __init__(self, clients: list[Any]) -> None:
        self.clients = clients
        self._next = 0

    async def send(self, request: Any, *, stream: bool = False) -> Any:
        client = self.clients[self._next]
        self._next = (self._next + 1) % len(self.clients)
        return await client.send(request, stream=stream)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def _shard_pool(shards: int = 8) -> None:
    import httpx

    from oss_callback import _client

    original = _client.AsyncClient.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if kwargs.get("transport") is not None:
            return
        total = kwargs.get("max_connections", _client.DEFAULT_MAX_CONNECTIONS)
        per = max(1, math.ceil(total / shards))
        timeout = kwargs.get("timeout", _client.DEFAULT_TIMEOUT)
        self._session.http = _ShardedHTTP([
            httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False,
                              limits=httpx.Limits(max_connections=per,
                                                  max_keepalive_connections=per))
            for _ in range(shards)
        ])

    _client.AsyncClient.__init__ = init  # type: ignore[method-assign]


class _CheckpointWriter:
    """One thread writing the newest checkpoint snapshot; ``close()`` flushes."""

    def __init__(self, path: str, write: Callable[[str, Any], None]) -> None:
        self.path = path
        self._write = write
        self._cond = threading.Condition()
        self._pending: Any = None
        self._closed = False
        self._busy = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ckpt-writer", daemon=True)
        self._thread.start()

    def submit(self, payload: Any) -> None:
        with self._cond:
            self._pending = payload
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None and self._closed:
                    return
                payload, self._pending = self._pending, None
                self._busy = True
            try:
                self._write(self.path, payload)
            except BaseException as exc:  # surfaced by close()
                self.error = exc
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        if self.error is not None:
            raise self.error


def _async_checkpoint() -> None:
    import anyio.to_thread

    from oss_callback import _resumable
    from oss_callback._checkpoint import write_checkpoint

    uploader = _resumable._Uploader
    save, upload_missing = uploader._save, uploader._upload_missing

    async def _save(self: Any, ckpt: Any) -> None:
        writer = getattr(self, "_bench_writer", None)
        if writer is None or self.ckpt_path is None:
            await save(self, ckpt)
        else:
            writer.submit(ckpt.to_payload())

    async def _upload_missing(self: Any, ckpt: Any, plan: Any) -> None:
        if self.ckpt_path is None:
            await upload_missing(self, ckpt, plan)
            return
        self._bench_writer = _CheckpointWriter(self.ckpt_path, write_checkpoint)
        try:
            await upload_missing(self, ckpt, plan)
        finally:
            writer, self._bench_writer = self._bench_writer, None
            await anyio.to_thread.run_sync(writer.close)

    uploader._save = _save  # type: ignore[method-assign]
    uploader._upload_missing = _upload_missing  # type: ignore[method-assign]


def _chunk(size: int) -> Callable[[], None]:
    def patch() -> None:
        from oss_callback import _body

        original = _body.FileRangeBody.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            self._chunk_size = size

        _body.FileRangeBody.__init__ = init  # type: ignore[method-assign]

    return patch


def _thread_parts(buffer_size: int = 1024 * 1024) -> None:
    """UploadPart (and PutObject ``file=``) as one blocking job in a worker thread (HTTP only).

    The thread signs nothing itself (the loop signs), then on a connection of its own (kept
    per thread) sends the headers and loops ``readinto`` -> ``crc64`` -> ``sendall`` over
    one reused buffer, and reads the response: one thread hop per part instead of two per
    MiB, no asyncio transport buffer copies, no per-chunk event-loop wakeups. Prototype:
    no retries, no error mapping, no progress (falls back to the normal path then).
    """
    import http.client
    import urllib.parse

    import anyio.to_thread

    from oss_callback import _body, _client, _http
    from oss_callback._crc64 import crc64
    from oss_callback._models import PutObjectResult, UploadPartResult
    from oss_callback._xml import strip_etag

    local = threading.local()
    original = _client.AsyncBucket._upload_part

    def send(url: str, headers: dict[str, str], path: str, offset: int, size: int
             ) -> tuple[int, str | None, int]:
        u = urllib.parse.urlsplit(url)
        conns: dict[str, http.client.HTTPConnection] = local.__dict__.setdefault("conns", {})
        conn = conns.get(u.netloc)
        if conn is None:
            conn = conns[u.netloc] = http.client.HTTPConnection(u.hostname or "", u.port)
        target = f"{u.path}?{u.query}" if u.query else u.path
        conn.putrequest("PUT", target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        buf = bytearray(buffer_size)
        view = memoryview(buf)
        crc, remaining = 0, size
        with open(path, "rb", buffering=0) as f:
            f.seek(offset)
            while remaining:
                n = f.readinto(view[: min(buffer_size, remaining)])
                if not n:
                    raise OSError(f"{path} shrank during the upload")
                crc = crc64(view[:n], crc)
                conn.send(view[:n])
                remaining -= n
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("etag"), crc

    async def _upload_part(self: Any, key: str, upload_id: str, part_number: int, body: Any,
                           progress: Any) -> Any:
        session = self._session
        if (not isinstance(body, _body.FileRangeBody) or progress is not None
                or session.endpoint.scheme != "http"):
            return await original(self, key, upload_id, part_number, body, progress)
        query = [("partNumber", str(part_number)), ("uploadId", upload_id)]
        headers = {"user-agent": _http.USER_AGENT, "content-length": str(body.size)}
        session._sign("PUT", self.name, key, query, headers)
        url = session.endpoint.url(self.name, key, query)
        size = int(body.size or 0)
        status, etag, crc = await anyio.to_thread.run_sync(
            send, url, headers, body.path, body.offset, size)
        if status != 200:
            raise RuntimeError(f"UploadPart answered {status}")
        body.crc, body.sent = crc, size
        return UploadPartResult(part_number=part_number, etag=strip_etag(etag), crc64=crc,
                                size=body.size, request_id=None)

    put_object = _client.AsyncBucket.put_object

    async def _put_object(self: Any, key: str, data: Any = None, *, file: Any = None,
                          callback: Any = None, headers: Any = None, progress: Any = None
                          ) -> Any:
        session = self._session
        if (file is None or data is not None or callback is not None or headers
                or progress is not None or session.endpoint.scheme != "http"):
            return await put_object(self, key, data, file=file, callback=callback,
                                    headers=headers, progress=progress)
        body: Any = _body.make_body(None, file)
        h = {"user-agent": _http.USER_AGENT, "content-length": str(body.size)}
        session._sign("PUT", self.name, key, (), h)
        url = session.endpoint.url(self.name, key, ())
        status, etag, crc = await anyio.to_thread.run_sync(
            send, url, h, body.path, 0, body.size)
        if status != 200:
            raise RuntimeError(f"PutObject answered {status}")
        body.crc, body.sent = crc, body.size  # a real version compares it with OSS's
        return PutObjectResult(key=key, etag=strip_etag(etag), crc64=None, request_id=None,
                               version_id=None, callback_status=None, callback_body=None,
                               upload_id=None, size=body.size)

    _client.AsyncBucket._upload_part = _upload_part  # type: ignore[method-assign]
    _client.AsyncBucket.put_object = _put_object  # type: ignore[method-assign]


class _LeanConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: an asyncio protocol parsed with httptools."""

    def __init__(self) -> None:
        import httptools

        self._asyncio = asyncio
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None
        self.waiter: Any = None
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception as exc:
            self._fail(exc)

    def eof_received(self) -> None:
        self._fail(ConnectionError("server closed the connection"))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.can_write.set()
        self._fail(exc or ConnectionError("connection lost"))

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def roundtrip(self, request: Any) -> Any:
        import httpx

        self.headers, self.body = [], []
        self.waiter = self._asyncio.get_running_loop().create_future()
        head = [f"{request.method} {request.url.raw_path.decode()} HTTP/1.1\r\n".encode()]
        head += [k + b": " + v + b"\r\n" for k, v in request.headers.raw]
        head.append(b"\r\n")
        self.transport.write(b"".join(head))
        async for chunk in request.stream:
            if not self.can_write.is_set():
                await self.can_write.wait()
            if self.closed:
                break
            self.transport.write(chunk)
        await self.waiter
        status = self.parser.get_status_code()
        keep = self.parser.should_keep_alive()
        return keep, httpx.Response(status, headers=self.headers, content=b"".join(self.body),
                                    request=request)


class _LeanHTTP:
    """The ``send``/``aclose`` of ``httpx.AsyncClient`` over a pool of :class:`_LeanConn`."""

    def __init__(self, max_connections: int) -> None:
        self.idle: list[_LeanConn] = []
        self.max = max_connections
        self.sem: Any = None

    async def send(self, request: Any, *, stream: bool = False) -> Any:
        import asyncio

        if self.sem is None:
            self.sem = asyncio.Semaphore(self.max)
        async with self.sem:
            conn = None
            while self.idle:
                conn = self.idle.pop()
                if not conn.closed:
                    break
                conn = None
            if conn is None:
                loop = asyncio.get_running_loop()
                _, conn = await loop.create_connection(
                    _LeanConn, request.url.host, request.url.port or 80)
            try:
                keep, response = await conn.roundtrip(request)
            except BaseException:
                conn.transport.close()
                raise
            if keep and not conn.closed:
                self.idle.append(conn)
            else:
                conn.transport.close()
            return response

    async def aclose(self) -> None:
        for conn in self.idle:
            conn.transport.close()
        self.idle.clear()


def _lean_http() -> None:
    """Replace the httpx pool with a minimal asyncio + httptools one (plain HTTP only)."""
    from oss_callback import _client

    original = _client.AsyncClient.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        if kwargs.get("transport") is None and self._session.endpoint.scheme == "http":
            self._session.http = _LeanHTTP(
                kwargs.get("max_connections", _client.DEFAULT_MAX_CONNECTIONS))

    _client.AsyncClient.__init__ = init  # type: ignore[method-assign]


PATCHES: dict[str, Callable[[], None]] = {
    "lean_http": _lean_http,
    "thread_parts": _thread_parts,
    "thread_parts_256k": lambda: _thread_parts(256 * 1024),
    "thread_parts_64k": lambda: _thread_parts(64 * 1024),
    "sniffio": _sniffio,
    "shard_pool": _shard_pool,
    "async_checkpoint": _async_checkpoint,
    "chunk_4m": _chunk(4 * 1024 * 1024),
    "chunk_256k": _chunk(256 * 1024),
}


def apply(names: list[str]) -> None:
    for name in names:
        PATCHES[name]()
