"""The sync facade (:class:`Client`, :class:`Bucket`) over the async core, on unit seams.

The core is reached through ``httpx.MockTransport`` (passed as ``transport=``), backed by a
small in-memory OSS (:class:`FakeOSS`) whose async handler runs on the facade's event loop
thread.  What is checked here is the bridge itself: same signatures and docstrings as the
async classes, lifecycle, threads, cancellation, errors passed through unchanged.
Everything over real sockets is in ``test_sync_integration.py``.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import inspect
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import anyio
import httpx
import pytest

import oss_callback
from oss_callback import (
    AsyncBucket,
    AsyncClient,
    Callback,
    CallbackError,
    PutObjectResult,
    RetryPolicy,
    ServiceError,
)
from oss_callback.client._sync import Bucket, Client
from oss_callback.protocol._crc64 import crc64

ENDPOINT = "http://127.0.0.1:9000"
BUCKET = "examplebucket"
Gate = Callable[[httpx.Request], Awaitable[None]]


def _etag(data: bytes) -> str:
    return hashlib.md5(data).hexdigest().upper()  # OSS's ETag, not security


class FakeOSS:
    """Just enough of OSS (path-style) for the facade: objects, multipart, callbacks.

    ``gate`` (async, awaited before every request is answered) lets a test hold a request
    open; ``threads`` records the thread each request was handled on; ``in_flight`` and
    ``max_in_flight`` show how many requests overlapped.
    """

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.uploads: dict[str, dict[int, bytes]] = {}
        self.upload_keys: dict[str, str] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.threads: set[str] = set()
        self.gate: Gate | None = None
        self.callback_fails = False
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.threads.add(threading.current_thread().name)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate(request)
            return self._answer(request)
        finally:
            self.in_flight -= 1

    def _answer(self, request: httpx.Request) -> httpx.Response:
        _, _, key = request.url.path.lstrip("/").partition("/")
        q = request.url.params
        body = request.content
        self.requests.append((request.method, key, str(request.url.query, "ascii")))
        if request.method == "POST" and "uploads" in q:
            self._ids += 1
            upload_id = f"UPLOAD{self._ids}"
            self.uploads[upload_id] = {}
            self.upload_keys[upload_id] = key
            return _xml("InitiateMultipartUploadResult",
                        f"<Bucket>{BUCKET}</Bucket><Key>{escape(key)}</Key>"
                        f"<UploadId>{upload_id}</UploadId>")
        if request.method == "GET" and "uploads" in q:
            xml = "".join(
                f"<Upload><Key>{escape(k)}</Key><UploadId>{u}</UploadId></Upload>"
                for u, k in sorted(self.upload_keys.items())
                if u in self.uploads and k.startswith(q.get("prefix", ""))
            )
            return _xml("ListMultipartUploadsResult", f"<IsTruncated>false</IsTruncated>{xml}")
        if "uploadId" in q:
            upload_id = q["uploadId"]
            if upload_id not in self.uploads:
                return _error(404, "NoSuchUpload")
            parts = self.uploads[upload_id]
            if request.method == "PUT":
                parts[int(q["partNumber"])] = body
                return httpx.Response(200, headers={"etag": f'"{_etag(body)}"',
                                                    "x-oss-hash-crc64ecma": str(crc64(body))})
            if request.method == "GET":
                xml = "".join(
                    f"<Part><PartNumber>{n}</PartNumber><ETag>\"{_etag(d)}\"</ETag>"
                    f"<Size>{len(d)}</Size><HashCrc64ecma>{crc64(d)}</HashCrc64ecma></Part>"
                    for n, d in sorted(parts.items())
                )
                return _xml("ListPartsResult", f"<IsTruncated>false</IsTruncated>{xml}")
            if request.method == "DELETE":
                del self.uploads[upload_id]
                return httpx.Response(204)
            data = b"".join(d for _, d in sorted(parts.items()))
            del self.uploads[upload_id]
            return self._store(key, data, request, _xml(
                "CompleteMultipartUploadResult", f"<ETag>\"{_etag(data)}-1\"</ETag>"))
        if request.method == "PUT":
            return self._store(key, body, request, httpx.Response(200))
        if request.method in ("GET", "HEAD"):
            if key not in self.objects:
                return _error(404, "NoSuchKey", head=request.method == "HEAD")
            data = self.objects[key]
            headers = {"etag": f'"{_etag(data)}"', "x-oss-hash-crc64ecma": str(crc64(data)),
                       "content-length": str(len(data))}
            if request.method == "HEAD":
                return httpx.Response(200, headers=headers)
            return httpx.Response(200, headers=headers, content=data)
        if request.method == "DELETE":
            self.objects.pop(key, None)
            return httpx.Response(204)
        return _error(400, "InvalidRequest")

    def _store(self, key: str, data: bytes, request: httpx.Request,
               response: httpx.Response) -> httpx.Response:
        self.objects[key] = data
        headers = {"etag": response.headers.get("etag", f'"{_etag(data)}"'),
                   "x-oss-hash-crc64ecma": str(crc64(data)), "x-oss-request-id": "RID"}
        if "x-oss-callback" in request.headers:
            if self.callback_fails:
                return _error(203, "CallbackFailed", headers=headers)
            return httpx.Response(200, headers=headers, content=b'{"Status":"OK"}')
        return httpx.Response(response.status_code, headers=headers, content=response.content)


def _xml(root: str, inner: str) -> httpx.Response:
    return httpx.Response(200, content=f"<?xml version='1.0'?><{root}>{inner}</{root}>".encode())


def _error(status: int, code: str, *, head: bool = False,
           headers: dict[str, str] | None = None) -> httpx.Response:
    xml = f"<Error><Code>{code}</Code><Message>m</Message><RequestId>RID</RequestId></Error>"
    return httpx.Response(status, headers=headers, content=b"" if head else xml.encode())


CLIENT_KWARGS: dict[str, Any] = {
    "access_key_id": "AKID",
    "access_key_secret": "SECRET-never-shown",
    "region": "cn-hangzhou",
    "retry": RetryPolicy.no_wait(),
}


@pytest.fixture
def oss() -> FakeOSS:
    return FakeOSS()


@pytest.fixture
def client(oss: FakeOSS) -> Iterator[Client]:
    with Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS) as c:
        yield c


@pytest.fixture
def bucket(client: Client) -> Bucket:
    return client.get_bucket(BUCKET)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settle(before_threads: int) -> int:
    """Thread count, after giving exited threads a moment to be reaped."""
    deadline = time.monotonic() + 5
    while threading.active_count() > before_threads and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


def _interrupt_main_soon(when: Callable[[], bool]) -> threading.Thread:
    """Send SIGINT to the main thread once ``when()`` is true (a real Ctrl-C)."""
    main = threading.main_thread().ident
    assert main is not None

    def fire() -> None:
        deadline = time.monotonic() + 10
        while not when() and time.monotonic() < deadline:
            time.sleep(0.005)
        signal.pthread_kill(main, signal.SIGINT)

    t = threading.Thread(target=fire, daemon=True)
    t.start()
    return t


needs_main_thread = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread() or sys.platform == "win32",
    reason="SIGINT is delivered to the main thread (POSIX)",
)


# --------------------------------------------------------------------------- the surface


def _public_methods(cls: type) -> dict[str, Any]:
    return {n: m for n, m in vars(cls).items() if not n.startswith("_") and callable(m)}


def _as_sync(sig: inspect.Signature) -> inspect.Signature:
    """The signature with AsyncBucket/AsyncClient annotations read as Bucket/Client, and an
    ``AsyncIterator[...]`` result (``async for``: list_objects) as a plain ``Iterator[...]``."""

    def fix(annotation: Any) -> Any:
        if isinstance(annotation, str):
            return (annotation.replace("AsyncBucket", "Bucket").replace("AsyncClient", "Client")
                    .replace("AsyncIterator[", "Iterator["))
        return annotation

    return sig.replace(
        parameters=[p.replace(annotation=fix(p.annotation)) for p in sig.parameters.values()],
        return_annotation=fix(sig.return_annotation),
    )


@pytest.mark.parametrize(("sync_cls", "async_cls"), [(Client, AsyncClient), (Bucket, AsyncBucket)])
def test_same_methods_signatures_and_docstrings(sync_cls: type, async_cls: type) -> None:
    sync_methods = _public_methods(sync_cls)
    async_methods = _public_methods(async_cls)
    renamed = {"aclose": "close"}
    assert {renamed.get(n, n) for n in async_methods} == set(sync_methods)
    assert sync_methods["close"].__doc__
    for name, async_method in async_methods.items():
        if name in renamed:
            continue
        sync_method = sync_methods[name]
        assert inspect.signature(sync_method) == _as_sync(inspect.signature(async_method)), name
        assert not inspect.iscoroutinefunction(sync_method), name
        if inspect.iscoroutinefunction(async_method) or str(
            inspect.signature(async_method).return_annotation
        ).startswith("AsyncIterator["):
            # one docstring serves both, copied (not retyped)
            assert sync_method.__doc__ == async_method.__doc__, name
            assert sync_method.__doc__, name
    checked = [n for n, m in async_methods.items() if inspect.iscoroutinefunction(m)]
    assert len(checked) >= (1 if async_cls is AsyncClient else 12)


def test_constructors_mirror_the_async_ones() -> None:
    assert inspect.signature(Client.__init__) == inspect.signature(AsyncClient.__init__)
    sync_params = inspect.signature(Bucket.__init__).parameters
    async_params = inspect.signature(AsyncBucket.__init__).parameters
    assert list(sync_params) == list(async_params)
    for name, p in sync_params.items():
        q = async_params[name]
        assert (p.kind, p.default) == (q.kind, q.default), name
        if name != "client":
            assert p.annotation == q.annotation, name
    assert sync_params["client"].annotation == "Client | None"


def test_same_properties() -> None:
    for name in ("endpoint", "region", "is_closed"):
        assert isinstance(getattr(Client, name), property), name
        assert getattr(Client, name).__doc__ is not None


def test_exported_from_the_package() -> None:
    assert oss_callback.Client is Client
    assert oss_callback.Bucket is Bucket
    assert {"Bucket", "Client"} <= set(oss_callback.__all__)
    assert oss_callback.__all__ == sorted(oss_callback.__all__)


# --------------------------------------------------------------------------- delegation


def test_round_trip_runs_on_the_loop_thread(oss: FakeOSS, bucket: Bucket) -> None:
    result = bucket.put_object("dir/a.txt", b"hello", headers={"Content-Type": "text/plain"})
    assert isinstance(result, PutObjectResult)
    assert (result.key, result.size, result.crc64) == ("dir/a.txt", 5, crc64(b"hello"))
    assert bucket.get_object("dir/a.txt") == b"hello"
    assert bucket.get_object("dir/a.txt", byte_range=(0, None)) == b"hello"
    head = bucket.head_object("dir/a.txt")
    assert (head.size, head.etag) == (5, _etag(b"hello"))
    assert bucket.object_exists("dir/a.txt") is True
    assert bucket.delete_object("dir/a.txt") is None
    assert bucket.object_exists("dir/a.txt") is False
    # every request was answered on the facade's loop thread, never on the caller's
    assert oss.threads == {"oss-callback-portal"}
    assert threading.current_thread().name not in oss.threads


def test_file_upload_and_download(oss: FakeOSS, bucket: Bucket, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    bucket.put_object("f", file=src)
    assert oss.objects["f"] == src.read_bytes()
    seen: list[tuple[int, int | None]] = []
    head = bucket.get_object_to_file("f", tmp_path / "dst.bin",
                                     progress=lambda d, t: seen.append((d, t)))
    assert head.size == 300_000
    assert (tmp_path / "dst.bin").read_bytes() == src.read_bytes()
    assert seen[-1] == (300_000, 300_000)


def test_multipart_primitives(oss: FakeOSS, bucket: Bucket) -> None:
    init = bucket.initiate_multipart_upload("mp", headers={"x-oss-meta-a": "b"})
    p1 = bucket.upload_part("mp", init.upload_id, 1, b"a" * 1000)
    p2 = bucket.upload_part("mp", init.upload_id, 2, b"b" * 10)
    listed = bucket.list_parts("mp", init.upload_id)
    assert [p.part_number for p in listed.parts] == [1, 2]
    result = bucket.complete_multipart_upload("mp", init.upload_id, [p2, p1])
    assert result.upload_id == init.upload_id
    assert oss.objects["mp"] == b"a" * 1000 + b"b" * 10
    init2 = bucket.initiate_multipart_upload("mp2")
    assert bucket.list_multipart_uploads() == [("mp2", init2.upload_id)]
    assert bucket.list_multipart_uploads(prefix="zz") == []
    assert bucket.abort_multipart_upload("mp2", init2.upload_id) is None
    with pytest.raises(ServiceError) as info:
        bucket.list_parts("mp2", init2.upload_id)
    assert info.value.code == "NoSuchUpload"


def test_callback_result_and_callback_error(oss: FakeOSS, bucket: Bucket) -> None:
    cb = Callback(url="http://cb.example.com/notify")
    result = bucket.put_object("cb", b"x", callback=cb)
    assert (result.callback_status, result.callback_body) == (200, b'{"Status":"OK"}')
    oss.callback_fails = True
    with pytest.raises(CallbackError) as info:
        bucket.put_object("cb2", b"y", callback=cb)
    assert info.value.result.key == "cb2"  # stored: the error carries the result
    assert oss.objects["cb2"] == b"y"


def test_errors_are_the_async_apis_own_objects(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    boom = ServiceError(403, "AccessDenied", "no", "RID-1")

    async def failing(self: AsyncBucket, key: str) -> None:
        await anyio.sleep(0)
        raise boom

    monkeypatch.setattr(AsyncBucket, "delete_object", failing)
    with pytest.raises(ServiceError) as info:
        bucket.delete_object("k")
    assert info.value is boom


def test_argument_errors_come_from_the_core(bucket: Bucket) -> None:
    with pytest.raises(TypeError, match="either data= or file="):
        bucket.put_object("k", b"x", file="/etc/hostname")
    with pytest.raises(ValueError, match="byte_range"):
        bucket.get_object("k", byte_range=(5, 1))


def test_pool_is_created_on_the_loop_thread(
    oss: FakeOSS, monkeypatch: pytest.MonkeyPatch
) -> None:
    created_on: list[str] = []
    real = httpx.AsyncClient

    class Recording(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            created_on.append(threading.current_thread().name)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(httpx, "AsyncClient", Recording)
    with Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS) as client:
        client.get_bucket(BUCKET).put_object("k", b"v")
        assert created_on == ["oss-callback-portal"]


# --------------------------------------------------------------------------- lifecycle


def test_lifecycle_close_idempotent_and_use_after_close(oss: FakeOSS) -> None:
    client = Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS)
    bucket = client.get_bucket(BUCKET)
    bucket.put_object("k", b"v")
    was_closed = client.is_closed
    client.close()
    assert (was_closed, client.is_closed) == (False, True)
    assert client._async.is_closed  # the pool was closed in the loop
    client.close()  # idempotent
    assert "closed" in repr(client)
    with pytest.raises(RuntimeError, match=r"this Client is closed; create a new one"):
        bucket.put_object("k", b"v")
    with pytest.raises(RuntimeError, match="closed"), client:
        pass


def test_close_racing_a_call_gives_the_closed_error(
    oss: FakeOSS, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS)
    bucket = client.get_bucket(BUCKET)
    portal = client._portal._portal
    real = portal.start_task_soon

    def close_first(*args: Any, **kwargs: Any) -> Any:
        client.close()  # another thread closed it between the check and the spawn
        return real(*args, **kwargs)

    monkeypatch.setattr(portal, "start_task_soon", close_first)
    with pytest.raises(RuntimeError, match="this Client is closed"):
        bucket.put_object("k", b"v")
    assert "k" not in oss.objects


def test_context_manager_closes(oss: FakeOSS) -> None:
    with Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS) as client:
        assert client.get_bucket(BUCKET).put_object("k", b"v").size == 1
    assert client.is_closed


def test_bucket_built_directly_owns_its_client(oss: FakeOSS) -> None:
    with Bucket(BUCKET, ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS) as bucket:
        assert isinstance(bucket.client, Client)
        assert bucket.client.endpoint == ENDPOINT and bucket.client.region == "cn-hangzhou"
        bucket.put_object("k", b"v")
        assert repr(bucket) == f"<Bucket {BUCKET!r} at {ENDPOINT!r}>"
    assert bucket.client.is_closed
    with pytest.raises(RuntimeError, match="this Bucket is closed"):
        bucket.head_object("k")


def test_bucket_from_client_does_not_close_it(client: Client) -> None:
    with client.get_bucket(BUCKET) as bucket:
        bucket.put_object("k", b"v")
    assert not client.is_closed
    bucket.close()
    assert bucket.head_object("k").size == 1
    assert Bucket(BUCKET, client=client).get_object("k") == b"v"


def test_bucket_constructor_errors_delegate(client: Client, oss: FakeOSS) -> None:
    before = threading.active_count()
    with pytest.raises(TypeError, match="either client= or"):
        Bucket(BUCKET, ENDPOINT, client=client)
    with pytest.raises(TypeError, match=r"oss_callback\.Client"):
        Bucket(BUCKET, client=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="endpoint"):
        Bucket(BUCKET)
    with pytest.raises(ValueError, match="bucket"):
        Bucket("Not_A_Bucket!", ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS)
    assert _settle(before) == before


def test_constructor_error_leaks_no_thread() -> None:
    before = threading.active_count()
    with pytest.raises(ValueError, match="region"):
        Client("http://127.0.0.1:9000", "AKID", "SECRET")  # V4 without a region
    with pytest.raises(ValueError, match="signature_version"):
        Client(ENDPOINT, signature_version="v3", **CLIENT_KWARGS)  # type: ignore[arg-type]
    assert _settle(before) == before


def test_no_thread_or_fd_leak_after_close(oss: FakeOSS) -> None:
    # warm up lazily-created process-wide state (imports, the default executor's first use)
    with Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS) as c:
        c.get_bucket(BUCKET).put_object("warm", b"x")
    gc.collect()
    threads, fds = threading.active_count(), _fds()
    for _ in range(5):
        with Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS) as c:
            b = c.get_bucket(BUCKET)
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(b.put_object, [f"k{i}" for i in range(8)], [b"v"] * 8))
            assert threading.active_count() > threads  # the loop (and its workers) ran
    gc.collect()
    assert _settle(threads) == threads
    assert _fds() == fds  # epoll fd and self-pipe of every loop were closed


def test_unclosed_client_warns_without_io(oss: FakeOSS) -> None:
    client = Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS)
    portal, aclose = client._portal, client._async.aclose
    try:
        with pytest.warns(ResourceWarning, match=r"<Client .* was not closed"):
            client.__del__()
        assert not portal.closed  # __del__ closed nothing
    finally:
        portal.close(aclose)


def test_unclosed_owning_bucket_warns_and_shared_bucket_does_not(oss: FakeOSS) -> None:
    bucket = Bucket(BUCKET, ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS)
    try:
        with pytest.warns(ResourceWarning, match="Bucket.*was not closed"):
            bucket.__del__()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            bucket.client.__del__()  # the bucket warns for it, once
            bucket.client.get_bucket(BUCKET).__del__()
    finally:
        bucket.close()


def test_close_from_another_thread_cancels_calls_in_flight(oss: FakeOSS) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def hold(request: httpx.Request) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    oss.gate = hold
    client = Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS)
    bucket = client.get_bucket(BUCKET)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(bucket.put_object, "k", b"v")
        assert started.wait(10)
        client.close()
        assert cancelled.is_set()
        with pytest.raises(RuntimeError, match="closed while it ran"):
            future.result(timeout=10)


# --------------------------------------------------------------------------- threads


def test_sixteen_threads_share_one_bucket(oss: FakeOSS, bucket: Bucket) -> None:
    async def overlap(request: httpx.Request) -> None:
        await anyio.sleep(0.005)

    oss.gate = overlap
    payloads = {f"t/{i:03d}": os.urandom(64 + i) for i in range(160)}

    def work(key: str) -> tuple[str, bytes]:
        bucket.put_object(key, payloads[key])
        return key, bucket.get_object(key)

    with ThreadPoolExecutor(16) as pool:
        results = dict(pool.map(work, payloads))
    assert results == payloads
    assert oss.objects == payloads
    assert oss.max_in_flight > 1  # the calls really ran concurrently in the loop
    assert oss.threads == {"oss-callback-portal"}


def test_sixteen_threads_with_errors_get_their_own(oss: FakeOSS, bucket: Bucket) -> None:
    def work(i: int) -> str:
        try:
            bucket.get_object(f"missing/{i}")
        except ServiceError as e:
            return f"{i}:{e.code}"
        return f"{i}:found"

    with ThreadPoolExecutor(16) as pool:
        out = list(pool.map(work, range(64)))
    assert out == [f"{i}:NoSuchKey" for i in range(64)]


# --------------------------------------------------------------------------- loop thread


def test_call_from_the_loop_thread_says_use_async(oss: FakeOSS, bucket: Bucket) -> None:
    caught: list[BaseException] = []

    def progress(done: int, total: int | None) -> None:
        try:
            bucket.head_object("other")
        except RuntimeError as e:
            caught.append(e)
            raise

    with pytest.raises(RuntimeError, match="AsyncClient/AsyncBucket") as info:
        bucket.put_object("k", b"v", progress=progress)
    assert caught and info.value is caught[0]
    assert "event loop thread" in str(info.value)
    assert "k" not in oss.objects  # the failing progress hook stopped the upload


def test_close_from_the_loop_thread_is_refused(bucket: Bucket, client: Client) -> None:
    def progress(done: int, total: int | None) -> None:
        client.close()

    with pytest.raises(RuntimeError, match="close"):
        bucket.put_object("k", b"v", progress=progress)
    assert not client.is_closed
    assert bucket.put_object("k", b"v").size == 1


def test_progress_runs_on_the_loop_thread(bucket: Bucket) -> None:
    threads: set[str] = set()
    seen: list[int] = []

    def progress(done: int, total: int | None) -> None:
        threads.add(threading.current_thread().name)
        seen.append(done)

    bucket.put_object("k", b"x" * 3_000_000, progress=progress)
    assert threads == {"oss-callback-portal"}
    assert seen[-1] == 3_000_000


def test_progress_that_raises_stops_the_upload_with_that_exception(
    oss: FakeOSS, bucket: Bucket
) -> None:
    boom = ValueError("stop here")

    def progress(done: int, total: int | None) -> None:
        raise boom

    with pytest.raises(ValueError, match="stop here") as info:
        bucket.put_object("k", b"x" * 10, progress=progress)
    assert info.value is boom
    assert "k" not in oss.objects


def test_progress_that_raises_stops_a_multipart_upload_with_that_exception(
    oss: FakeOSS, bucket: Bucket, tmp_path: Path
) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 100 * 1024 + 1))
    boom = ValueError("stop here")

    def progress(done: int, total: int | None) -> None:
        if done > 150_000:
            raise boom

    with pytest.raises(ValueError, match="stop here") as info:
        bucket.resumable_upload("big", src, part_size=100 * 1024, concurrency=1,
                                disable_checkpoint=True, progress=progress)
    assert info.value is boom  # not wrapped in an ExceptionGroup by the part workers
    assert "big" not in oss.objects
    assert oss.uploads == {}  # disable_checkpoint=True: the upload was aborted


def test_base_exception_from_a_progress_hook_reaches_the_caller(bucket: Bucket) -> None:
    def progress(done: int, total: int | None) -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit) as info:
        bucket.put_object("k", b"x", progress=progress)
    assert info.value.code == 3
    assert bucket.put_object("k", b"x").size == 1  # the loop survived


async def test_works_inside_a_running_event_loop(oss: FakeOSS) -> None:
    # A notebook cell: sync API called from async code on a thread that runs a loop (asyncio
    # in a notebook; trio too).
    import sniffio

    assert sniffio.current_async_library() in ("asyncio", "trio")
    with Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS) as client:
        bucket = client.get_bucket(BUCKET)
        bucket.put_object("nb", b"from a notebook")
        assert bucket.get_object("nb") == b"from a notebook"
    assert client.is_closed


def test_works_inside_asyncio_run(oss: FakeOSS) -> None:
    async def main() -> bytes:
        with Bucket(BUCKET, ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS) as bucket:
            bucket.put_object("nb", b"v")
            return bucket.get_object("nb")

    assert asyncio.run(main()) == b"v"


# --------------------------------------------------------------------------- cancellation


@needs_main_thread
def test_keyboard_interrupt_cancels_the_task_before_returning(
    oss: FakeOSS, bucket: Bucket
) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def hold(request: httpx.Request) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    oss.gate = hold
    _interrupt_main_soon(started.is_set)
    with pytest.raises(KeyboardInterrupt):
        bucket.put_object("k", b"v")
    # the cancellation had finished in the loop before the call returned
    assert cancelled.is_set()
    assert oss.in_flight == 0
    assert "k" not in oss.objects
    oss.gate = None
    assert bucket.put_object("k", b"v").size == 1  # still usable


def test_interrupt_while_the_task_is_being_spawned_still_cancels_it(
    oss: FakeOSS, client: Client, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task can start running before the portal's spawn returns to the caller; a Ctrl-C
    in that window once left it running in the background (seen as a hang in CI)."""
    started, cancelled = threading.Event(), threading.Event()

    async def hold(request: httpx.Request) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    oss.gate = hold
    portal = client._portal._portal
    spawn = portal.start_task_soon

    def spawn_then_interrupted(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(portal, "start_task_soon", spawn)  # only the first spawn
        spawn(*args, **kwargs)
        assert started.wait(10)  # the task is already running...
        raise KeyboardInterrupt  # ...when Ctrl-C lands, before the future is handed back

    monkeypatch.setattr(portal, "start_task_soon", spawn_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        bucket.put_object("k", b"v")
    assert cancelled.is_set()  # cancelled, and its cleanup over, before the call returned
    assert oss.in_flight == 0
    assert "k" not in oss.objects
    monkeypatch.undo()
    oss.gate = None
    assert bucket.put_object("k", b"v").size == 1  # still usable


@needs_main_thread
def test_cancellation_waits_for_shielded_cleanup(oss: FakeOSS, bucket: Bucket) -> None:
    started, cleaned = threading.Event(), threading.Event()

    async def hold(request: httpx.Request) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.3)  # slow cleanup, e.g. an abort request
            cleaned.set()

    oss.gate = hold
    _interrupt_main_soon(started.is_set)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        bucket.put_object("k", b"v")
    assert cleaned.is_set()
    assert time.monotonic() - t0 >= 0.3


@needs_main_thread
def test_interrupted_resumable_upload_resumes_from_its_checkpoint(
    oss: FakeOSS, bucket: Bucket, tmp_path: Path
) -> None:
    part = 100 * 1024
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * part + 123))
    ckpt = tmp_path / "upload.ckpt"
    started = threading.Event()

    async def hold_part_2(request: httpx.Request) -> None:
        if request.url.params.get("partNumber") == "2":
            started.set()
            await anyio.sleep_forever()

    oss.gate = hold_part_2
    _interrupt_main_soon(started.is_set)
    with pytest.raises(KeyboardInterrupt):
        bucket.resumable_upload("big", src, part_size=part, concurrency=1,
                                checkpoint_file=ckpt)
    assert ckpt.exists()  # kept for the next run
    assert oss.in_flight == 0
    [upload_id] = oss.uploads
    assert sorted(oss.uploads[upload_id]) == [1]
    oss.gate = None
    oss.requests.clear()
    result = bucket.resumable_upload("big", src, part_size=part, concurrency=1,
                                     checkpoint_file=ckpt)
    assert result.upload_id == upload_id  # resumed, not restarted
    uploaded = sorted(q for m, _, q in oss.requests if m == "PUT")
    assert [u for u in uploaded if "partNumber=1&" in u] == []  # part 1 was not sent again
    assert len(uploaded) == 3
    assert oss.objects["big"] == src.read_bytes()
    assert not ckpt.exists()


# --------------------------------------------------------------------------- fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_use_after_fork_is_a_clear_error(bucket: Bucket, client: Client) -> None:
    bucket.put_object("k", b"v")
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            bucket.head_object("k")
        except RuntimeError as e:
            os.write(write_end, str(e).encode())
            try:
                client.close()  # must not touch the parent's loop (no hang)
                code = 0 if client.is_closed else 2
            except BaseException:
                code = 3
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    message = os.read(read_end, 1000).decode()
    os.close(read_end)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "os.fork()" in message and "create a new Client" in message
    assert bucket.head_object("k").size == 1  # the parent is unaffected


def test_the_facade_loop_is_uvloop_where_installed(oss: FakeOSS) -> None:
    """The facade starts its own loop, so it picks the faster one when it can."""
    import asyncio

    uvloop = pytest.importorskip("uvloop")
    with Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS) as client:
        loop = client._portal.run_sync(asyncio.get_running_loop)
        assert isinstance(loop, uvloop.Loop)
        client.get_bucket(BUCKET).put_object("uv", b"on uvloop")
        assert client.get_bucket(BUCKET).get_object("uv") == b"on uvloop"


def test_the_facade_falls_back_to_asyncio_without_uvloop(
    oss: FakeOSS, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import sys

    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    with Client(ENDPOINT, transport=oss.transport(), **CLIENT_KWARGS) as client:
        loop = client._portal.run_sync(asyncio.get_running_loop)
        assert type(loop).__module__.startswith("asyncio")
        client.get_bucket(BUCKET).put_object("plain", b"on asyncio")
        assert client.get_bucket(BUCKET).get_object("plain") == b"on asyncio"
