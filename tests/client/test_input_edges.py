"""Input edges (issue #14, part 7): names, memory, redirects and a 203 nobody asked for.

* Every name is validated in full (``re.fullmatch``): ``$`` also matches before a trailing
  newline, which let ``"bucket\\n"`` through to httpx (``InvalidURL`` escaped) and let the
  emulator create a bucket named ``"abc\\n"``.
* ``get_object`` reads into memory, so it has a ``max_size`` (256 MiB by default), checked
  from ``Content-Length`` before reading and while reading: a 256 MiB answer must not
  cost 256 MiB when the limit is lower.
* A redirect says where to (OSS's ``PermanentRedirect`` names the region's endpoint), and a
  203 to a request that carried no callback is not reported as a failed callback.
"""

from __future__ import annotations

import base64
import inspect
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import anyio
import httpx
import pytest
from support.facades import Api
from support.helpers import HTTPX_STOPPED_READ

from oss_callback import (
    AsyncBucket,
    AsyncClient,
    Bucket,
    Callback,
    CallbackError,
    Client,
    ClientError,
    RetryPolicy,
    ServiceError,
)
from oss_callback.client._objects import DEFAULT_GET_MAX_SIZE
from oss_callback.protocol._crc64 import crc64
from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._endpoint import Endpoint, validate_bucket_name, validate_region
from oss_callback.protocol._errors import ObjectTooLargeError
from oss_callback.protocol._signing import sign_v1
from oss_callback.testing import OSSEmulator

MiB = 1024 * 1024
ETAG = b'"0123456789ABCDEF0123456789ABCDEF"'


# --------------------------------------------------------------------------- a raw server


class RawServer:
    """``handler(conn)`` per accepted connection (in threads); records request heads."""

    def __init__(self, handler: Callable[[socket.socket, bytes], None]) -> None:
        self.handler = handler
        self.heads: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._run, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head = data.split(b"\r\n\r\n", 1)[0]
                self.heads.append(head)
                self.handler(conn, head)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for t in self._threads:
            t.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[socket.socket, bytes], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Callable[[socket.socket, bytes], None]) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client_on(server: RawServer, **kw: Any) -> AsyncClient:
    kw.setdefault("retry", RetryPolicy.no_wait())
    return AsyncClient(server.endpoint, "ak", "sk", region="cn-hangzhou", **kw)


# --------------------------------------------------------------------------- names

TRAILING_NEWLINE_BUCKETS = ["abc\n", "test-bucket\n", "abc\r\n", "ab\nc"]


@pytest.mark.parametrize("name", TRAILING_NEWLINE_BUCKETS)
def test_a_bucket_name_with_a_line_break_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="invalid bucket name"):
        validate_bucket_name(name)
    client = AsyncClient("https://oss-cn-hangzhou.aliyuncs.com", "ak", "sk")
    try:
        with pytest.raises(ValueError, match="invalid bucket name"):
            client.get_bucket(name)  # before: httpx.InvalidURL at the first request
    finally:
        import anyio

        anyio.run(client.aclose)
    with pytest.raises(ValueError, match="invalid bucket name"):
        AsyncBucket(name, "https://oss-cn-hangzhou.aliyuncs.com", "ak", "sk")
    with pytest.raises(ValueError, match="invalid bucket name"):
        Bucket(name, "https://oss-cn-hangzhou.aliyuncs.com", "ak", "sk")


def test_a_bucket_name_with_a_line_break_never_reaches_the_wire(serve: Any) -> None:
    server = serve(lambda conn, head: None)
    with Client(server.endpoint, "ak", "sk", region="cn-hangzhou") as client, \
            pytest.raises(ValueError, match="invalid bucket name"):
        client.get_bucket("abc\n").put_object("k", b"x")
    assert server.heads == []


@pytest.mark.parametrize("kwargs", [
    {"variables": {"x:uid\n": "1"}},
    {"body": "uid=${x:uid\n}", "variables": {"x:uid": "1"}},
    {"body": "bucket=${bucket\n}"},
    {"body": "bucket=${bucket}\n&object=${object\n}"},
])
def test_callback_names_with_a_trailing_newline_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"Callback\.(variables|body)"):
        Callback("http://cb.example/notify", **kwargs)


def test_callback_bodies_may_still_span_lines() -> None:
    cb = Callback("http://cb.example/notify", body="bucket=${bucket}\n&uid=${x:uid}",
                  variables={"x:uid": "1"})
    assert "\n" in cb.body


@pytest.mark.parametrize("region", ["cn-hangzhou\n", "cn hangzhou", "cn-hangzhou/x", ""])
def test_a_region_that_is_not_a_region_id_is_a_value_error(
    region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match="region"):
        validate_region(region)
    with pytest.raises(ValueError, match="region"):
        AsyncClient("http://127.0.0.1:9000", "ak", "sk", region=region or "\n")
    monkeypatch.setenv("OSS_REGION", region or "\t")
    with pytest.raises(ValueError, match="region"):
        AsyncClient("http://127.0.0.1:9000", "ak", "sk")


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9000\n/x", "oss-cn-hang\nzhou.aliyuncs.com",
                                      "https://oss-cn-hangzhou.aliyuncs.com\t.evil"])
def test_an_endpoint_with_inner_whitespace_is_a_value_error(endpoint: str) -> None:
    # urlsplit drops tabs and line breaks inside a URL silently: refused instead
    with pytest.raises(ValueError, match="whitespace or control"):
        Endpoint.parse(endpoint)


def test_a_trailing_newline_after_an_endpoint_is_still_stripped() -> None:
    assert str(Endpoint.parse("https://oss-cn-hangzhou.aliyuncs.com\n")) == (
        "https://oss-cn-hangzhou.aliyuncs.com")


def test_the_emulator_refuses_bucket_names_with_a_line_break(
    oss_emulator: OSSEmulator
) -> None:
    for name in TRAILING_NEWLINE_BUCKETS:
        with pytest.raises(ValueError, match="invalid bucket name"):
            oss_emulator.create_bucket(name)
    with pytest.raises(ValueError, match="invalid bucket name"):
        OSSEmulator(buckets=["abc\n"])
    # over HTTP: a correctly signed PutBucket for "abc\n" (the path carries %0A)
    headers: dict[str, str] = {}
    creds = Credentials(access_key_id=oss_emulator.access_key_id,
                        access_key_secret=oss_emulator.access_key_secret)
    sign_v1("PUT", "abc\n", None, [], headers, creds, datetime.now(timezone.utc))
    with httpx.Client(trust_env=False, timeout=30) as http:
        r = http.put(oss_emulator.endpoint + "/abc%0A/", headers=headers)
    assert r.status_code == 400, r.text
    assert b"<Code>InvalidBucketName</Code>" in r.content
    assert not oss_emulator.bucket_exists("abc\n")
    assert oss_emulator.bucket_exists("abc") is False


# --------------------------------------------------------------------------- get_object


def big_answer(size: int, *, announce: bool) -> Callable[[socket.socket, bytes], None]:
    """A GET answered with ``size`` zero bytes, with Content-Length or close-delimited."""
    chunk = b"\0" * MiB

    def handler(conn: socket.socket, head: bytes) -> None:
        framing = f"Content-Length: {size}" if announce else "Connection: close"
        conn.sendall(b"HTTP/1.1 200 OK\r\nETag: " + ETAG + b"\r\nx-oss-request-id: 5C05\r\n"
                     + framing.encode() + b"\r\n\r\n")
        for _ in range(size // MiB):
            conn.sendall(chunk)

    return handler


@HTTPX_STOPPED_READ
@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "close-delimited"])
async def test_a_256_mib_answer_over_max_size_is_refused_without_buffering_it(
    serve: Any, announce: bool
) -> None:
    server = serve(big_answer(256 * MiB, announce=announce))
    async with client_on(server) as client:
        bucket = client.get_bucket("b-1")
        tracemalloc.start()
        started = time.monotonic()
        try:
            with pytest.raises(ObjectTooLargeError) as info:
                await bucket.get_object("video.mp4", max_size=4 * MiB)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    error = info.value
    assert isinstance(error, ClientError)
    assert (error.key, error.max_size) == ("video.mp4", 4 * MiB)
    if announce:
        assert error.size == 256 * MiB
        assert "is 268435456 bytes" in str(error)
    else:
        assert 4 * MiB < error.size < 8 * MiB  # it stopped as soon as the limit was passed
        assert "no Content-Length" in str(error)
    assert "get_object_to_file" in str(error) and "max_size" in str(error)
    assert peak < 16 * MiB, f"peak {peak} bytes: the body was buffered"
    assert time.monotonic() - started < 30
    assert len(server.heads) == 1  # refused, not retried


async def test_max_size_is_inclusive_and_none_lifts_it(api: Api, oss_emulator: OSSEmulator,
                                                       bucket_name: str) -> None:
    await api.put_object("ten", b"0123456789")
    assert await api.get_object("ten", max_size=10) == b"0123456789"
    with pytest.raises(ObjectTooLargeError, match="is 10 bytes, more than get_object's "
                                                  "max_size=9"):
        await api.get_object("ten", max_size=9)
    assert await api.get_object("ten", max_size=None) == b"0123456789"
    assert await api.get_object("ten", byte_range=(2, 5), max_size=4) == b"2345"
    with pytest.raises(ObjectTooLargeError):
        await api.get_object("ten", byte_range=(2, None), max_size=4)
    # A refused answer is dropped unread: the emulator may log that request a moment later.
    with anyio.move_on_after(5):
        while [r.operation for r in oss_emulator.requests].count("GetObject") < 5:
            await anyio.sleep(0.01)
    assert [r.operation for r in oss_emulator.requests].count("GetObject") == 5


@pytest.mark.parametrize("bad", [-1, True, 1.5, "10"])
async def test_an_invalid_max_size_is_a_value_error(api: Api, bad: Any) -> None:
    with pytest.raises(ValueError, match="max_size"):
        await api.get_object("k", max_size=bad)


def test_the_default_max_size_is_256_mib_in_both_facades() -> None:
    assert 256 * MiB == DEFAULT_GET_MAX_SIZE
    for cls in (AsyncBucket, Bucket):
        parameter = inspect.signature(cls.get_object).parameters["max_size"]
        assert parameter.default == DEFAULT_GET_MAX_SIZE
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY


async def test_a_download_under_the_default_limit_is_whole_and_checked(serve: Any) -> None:
    data = bytes(range(256)) * 4096 * 3  # 3 MiB

    def handler(conn: socket.socket, head: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nETag: " + ETAG + b"\r\nx-oss-request-id: 5C06\r\n"
                     b"x-oss-hash-crc64ecma: " + str(crc64(data)).encode() + b"\r\n"
                     b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)

    server = serve(handler)
    async with client_on(server) as client:
        assert await client.get_bucket("b-1").get_object("k") == data


# --------------------------------------------------------------------------- redirects

PERMANENT_REDIRECT = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>PermanentRedirect</Code><Message>'
    b"The bucket you are attempting to access must be addressed using the specified "
    b"endpoint. Please send all future requests to this endpoint.</Message><RequestId>"
    b"5C07</RequestId><HostId>b-1.oss-cn-hangzhou.aliyuncs.com</HostId><Bucket>b-1</Bucket>"
    b"<Endpoint>oss-cn-beijing.aliyuncs.com</Endpoint></Error>")


def redirect(status: bytes, extra: bytes = b"",
             body: bytes = b"") -> Callable[[socket.socket, bytes], None]:
    def handler(conn: socket.socket, head: bytes) -> None:
        lines = [b"HTTP/1.1 " + status, b"x-oss-request-id: 5C07", extra,
                 b"Content-Length: " + str(len(body)).encode()]
        if head.startswith(b"HEAD") and body:
            lines.append(b"x-oss-err: " + base64.b64encode(body))
            lines[-2] = b"Content-Length: 0"
        answer = b"\r\n".join(line for line in lines if line) + b"\r\n\r\n"
        conn.sendall(answer if head.startswith(b"HEAD") else answer + body)

    return handler


@pytest.mark.parametrize("operation", ["put_object", "head_object", "get_object"])
async def test_permanent_redirect_names_the_regions_endpoint(serve: Any, operation: str) -> None:
    server = serve(redirect(b"301 Moved Permanently", b"Content-Type: application/xml",
                            PERMANENT_REDIRECT))
    async with client_on(server) as client:
        bucket = client.get_bucket("b-1")
        request = (bucket.put_object("k", b"x") if operation == "put_object"
                   else getattr(bucket, operation)("k"))
        with pytest.raises(ServiceError) as info:
            await request
    error = info.value
    assert (error.status, error.code) == (301, "PermanentRedirect")
    assert error.details["Endpoint"] == "oss-cn-beijing.aliyuncs.com"
    text = str(error)
    assert "another region" in text
    assert "endpoint='https://oss-cn-beijing.aliyuncs.com', region='cn-beijing'" in text
    assert "\n" not in text
    assert len(server.heads) == 1  # not retried, not followed


@pytest.mark.parametrize("status", [b"302 Found", b"307 Temporary Redirect",
                                    b"308 Permanent Redirect"])
async def test_a_redirect_names_its_location_and_is_not_followed(
    serve: Any, status: bytes
) -> None:
    target = serve(lambda conn, head: None)
    server = serve(redirect(status, b"Location: " + target.endpoint.encode() + b"/b-1/k",
                            b"<html>moved</html>"))
    async with client_on(server) as client:
        with pytest.raises(ServiceError) as info:
            await client.get_bucket("b-1").put_object("k", b"x")
    text = str(info.value)
    assert info.value.status == int(status[:3])
    assert f"redirects to {target.endpoint}/b-1/k" in text
    assert f"endpoint='{target.endpoint}'" in text
    assert "does not follow redirects" in text
    assert target.heads == []  # a signed request never goes anywhere else
    assert len(server.heads) == 1


async def test_a_redirect_without_a_target_says_so(serve: Any) -> None:
    server = serve(redirect(b"302 Found"))
    async with client_on(server) as client:
        with pytest.raises(ServiceError, match="redirect that names no target"):
            await client.get_bucket("b-1").head_object("k")


# --------------------------------------------------------------------------- 203


CALLBACK_FAILED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>CallbackFailed</Code>'
                   b"<Message>Error status : 502.</Message><RequestId>5C08</RequestId></Error>")


@pytest.mark.parametrize("body", [b"", CALLBACK_FAILED], ids=["empty", "callback-failed-xml"])
async def test_a_203_to_a_request_without_a_callback_says_no_callback_was_sent(
    serve: Any, body: bytes
) -> None:
    server = serve(redirect(b"203 Non-Authoritative Information",
                            b"ETag: " + ETAG + b"\r\nContent-Type: application/xml", body))
    async with client_on(server) as client:
        with pytest.raises(ServiceError) as info:
            await client.get_bucket("b-1").put_object("k", b"x")
    error = info.value
    assert not isinstance(error, CallbackError)
    assert error.status == 203
    assert error.code == ("CallbackFailed" if body else "")  # the SDK adds no such code
    text = str(error)
    assert "carried no callback" in text
    assert "is unknown" in text
    assert not text.startswith("object")  # not "object ... was stored, but its callback"
    assert len(server.heads) == 1


async def test_a_203_to_an_upload_with_a_callback_is_still_a_callback_error(
    serve: Any
) -> None:
    server = serve(redirect(b"203 Non-Authoritative Information",
                            b"ETag: " + ETAG + b"\r\nContent-Type: application/xml",
                            CALLBACK_FAILED))
    async with client_on(server) as client:
        with pytest.raises(CallbackError) as info:
            await client.get_bucket("b-1").put_object(
                "k", b"x", callback=Callback("http://cb.example/notify"))
    assert info.value.code == "CallbackFailed"
    assert "was stored, but its upload callback failed" in str(info.value)
    assert "carried no callback" not in str(info.value)
