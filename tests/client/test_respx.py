"""respx around a default-built client: what a user of the SDK writes in their own tests.

No ``transport=`` and no ``http_client=``: the SDK builds its own ``httpx.AsyncClient``
(httpx's transport, httpcore), so ``respx.mock`` (default "httpcore" mocker) sees every
request of ``AsyncClient`` and of the sync ``Client`` (whose requests run on its own loop
thread), routed by method and URL as in any httpx program. Every signature is re-derived here
from the captured request, independently of ``oss_callback.protocol._signing``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import socket
import threading
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import httpx
import pytest
import respx
from support.facades import Api

from oss_callback import (
    AsyncClient,
    Callback,
    CallbackError,
    Client,
    InconsistentError,
    RetryPolicy,
)
from oss_callback.protocol._crc64 import crc64

ENDPOINT = "https://oss-cn-hangzhou.aliyuncs.com"
REGION = "cn-hangzhou"
BUCKET = "examplebucket"
BASE = f"https://{BUCKET}.oss-cn-hangzhou.aliyuncs.com"
AK = "LTAI5tEXAMPLEKEYID"
SK = "example-secret-not-a-real-one"
UPLOAD_ID = "0004B9894A22E5B1888A1E29F823ABCD"
PART = 100 * 1024  # the smallest part size the SDK accepts (OSS: 100 KB)

CALLBACK = Callback(url="http://app.example.com/oss-callback",
                    body="bucket=${bucket}&object=${object}&size=${size}")
CALLBACK_OK = b'{"Status":"OK"}'
CALLBACK_FAILED = (
    b"<Error><Code>CallbackFailed</Code>"
    b"<Message>Error status : 502.</Message>"
    b"<RequestId>587C81A125F797621829923D</RequestId>"
    b"<HostId>examplebucket.oss-cn-hangzhou.aliyuncs.com</HostId></Error>"
)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(params=["async", "sync"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def open_bucket(kind: str, endpoint: str = ENDPOINT, **kw: Any) -> AsyncIterator[Api]:
    """A default-built ``AsyncClient`` or ``Client`` (no transport) and its bucket."""
    kw.setdefault("retry", RetryPolicy.no_wait())
    if kind == "async":
        async with AsyncClient(endpoint, AK, SK, **kw) as client:
            yield Api(client.get_bucket(BUCKET), is_async=True)
        return
    sync_client = Client(endpoint, AK, SK, **kw)
    try:
        yield Api(sync_client.get_bucket(BUCKET), is_async=False)
    finally:
        sync_client.close()


def expected_v4_authorization(request: httpx.Request, bucket: str = BUCKET) -> str:
    """The Authorization header OSS expects for ``request`` (PROTOCOL.md §3.2), rebuilt from
    what went over the wire."""
    date = request.headers["x-oss-date"]
    scope = f"{date[:8]}/{REGION}/oss/aliyun_v4_request"
    raw_path = request.url.raw_path.split(b"?", 1)[0].decode()
    key = unquote(raw_path)[1:]  # virtual-hosted: the path is the key
    uri = quote(f"/{bucket}/{key}", safe="/-_.~")
    pairs = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, v in parse_qsl(request.url.query.decode(), keep_blank_values=True)
    )
    query = "&".join(f"{k}={v}" if v else k for k, v in pairs)
    signed = sorted(
        (name, value) for name, value in request.headers.items()
        if name.startswith("x-oss-") or name in ("content-type", "content-md5")
    )
    headers = "".join(f"{name}:{value}\n" for name, value in signed)
    canonical = f"{request.method}\n{uri}\n{query}\n{headers}\n\nUNSIGNED-PAYLOAD"
    to_sign = (f"OSS4-HMAC-SHA256\n{date}\n{scope}\n"
               f"{hashlib.sha256(canonical.encode()).hexdigest()}")
    k = hmac.new(f"aliyun_v4{SK}".encode(), date[:8].encode(), hashlib.sha256).digest()
    for part in (REGION, "oss", "aliyun_v4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"OSS4-HMAC-SHA256 Credential={AK}/{scope},Signature={signature}"


def assert_v4_signed(request: httpx.Request) -> None:
    assert re.fullmatch(r"\d{8}T\d{6}Z", request.headers["x-oss-date"])
    assert request.headers["x-oss-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert request.headers["authorization"] == expected_v4_authorization(request)
    assert SK not in str(request.headers)


def stored(request: httpx.Request) -> httpx.Response:
    """OSS's answer to a PutObject/UploadPart: ETag and the CRC-64 of the bytes received."""
    body = request.content
    return httpx.Response(200, headers={
        "ETag": f'"{hashlib.md5(body).hexdigest().upper()}"',
        "x-oss-hash-crc64ecma": str(crc64(body)),
        "x-oss-request-id": "5C3D9175B6FC201293AD4890",
    })


def callback_json(request: httpx.Request) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.b64decode(request.headers["x-oss-callback"]))
    return decoded


# --------------------------------------------------------------------------- PutObject


async def test_put_object_is_signed_and_its_result_comes_from_the_headers(kind: str) -> None:
    data = b"hello respx " * 1000
    with respx.mock(assert_all_called=True, assert_all_mocked=True) as router:
        route = router.put(f"{BASE}/docs/hello.txt").mock(side_effect=stored)
        async with open_bucket(kind) as bucket:
            result = await bucket.put_object(
                "docs/hello.txt", data,
                headers={"Content-Type": "text/plain", "x-oss-meta-owner": "respx"},
            )
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.content == data
    assert request.headers["content-length"] == str(len(data))
    assert request.headers["content-type"] == "text/plain"
    assert request.headers["x-oss-meta-owner"] == "respx"
    assert "x-oss-callback" not in request.headers
    assert_v4_signed(request)
    assert result.key == "docs/hello.txt"
    assert result.etag == hashlib.md5(data).hexdigest().upper()
    assert result.crc64 == crc64(data)
    assert result.request_id == "5C3D9175B6FC201293AD4890"
    assert result.size == len(data)
    assert result.callback_status is None and result.callback_body is None


async def test_put_object_file_streams_the_file_through_respx(kind: str, tmp_path: Path) -> None:
    src = tmp_path / "photo.bin"
    src.write_bytes(bytes(range(256)) * 9000)  # 2.2 MiB: more than one file chunk
    with respx.mock as router:
        route = router.put(f"{BASE}/photos/photo.bin").mock(side_effect=stored)
        async with open_bucket(kind) as bucket:
            result = await bucket.put_object("photos/photo.bin", file=src)
    request = route.calls.last.request
    assert request.content == src.read_bytes()
    assert request.headers["content-length"] == str(src.stat().st_size)
    assert_v4_signed(request)
    assert result.crc64 == crc64(src.read_bytes())


async def test_put_object_callback_200_returns_the_callback_body(kind: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        ok = stored(request)
        return httpx.Response(200, headers={**ok.headers, "content-type": "application/json"},
                              content=CALLBACK_OK)

    with respx.mock(assert_all_mocked=True) as router:
        route = router.put(f"{BASE}/uploads/a.txt").mock(side_effect=answer)
        async with open_bucket(kind) as bucket:
            result = await bucket.put_object("uploads/a.txt", b"payload", callback=CALLBACK)
    request = route.calls.last.request
    assert callback_json(request)["callbackUrl"] == "http://app.example.com/oss-callback"
    assert callback_json(request)["callbackBody"] == (
        "bucket=${bucket}&object=${object}&size=${size}")
    assert_v4_signed(request)  # x-oss-callback is an x-oss-* header: signed
    assert result.callback_status == 200
    assert result.callback_body == CALLBACK_OK
    assert result.callback_json() == {"Status": "OK"}
    assert result.etag == hashlib.md5(b"payload").hexdigest().upper()
    assert result.crc64 == crc64(b"payload")


async def test_put_object_callback_203_raises_callback_error_with_the_result(kind: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        ok = stored(request)
        return httpx.Response(203, headers={**ok.headers, "content-type": "application/xml",
                                            "x-oss-version-id": "CAEQNhiBgMDJgZCA0BYiIDc4"},
                              content=CALLBACK_FAILED)

    with respx.mock(assert_all_mocked=True) as router:
        route = router.put(f"{BASE}/uploads/a.txt").mock(side_effect=answer)
        async with open_bucket(kind) as bucket:
            with pytest.raises(CallbackError) as info:
                await bucket.put_object("uploads/a.txt", b"payload", callback=CALLBACK)
    assert route.call_count == 1  # stored: a 203 is never retried
    assert "x-oss-callback" in route.calls.last.request.headers
    err = info.value
    assert (err.status, err.code, err.message) == (203, "CallbackFailed", "Error status : 502.")
    assert err.request_id == "587C81A125F797621829923D"
    assert err.result.etag == hashlib.md5(b"payload").hexdigest().upper()
    assert err.result.crc64 == crc64(b"payload")
    assert err.result.version_id == "CAEQNhiBgMDJgZCA0BYiIDc4"
    assert err.result.callback_status == 203


# --------------------------------------------------------------------------- multipart


class MultipartOSS:
    """Routes for one multipart upload of ``data``: Initiate, UploadPart, Complete, Abort."""

    def __init__(self, router: respx.MockRouter, key: str, data: bytes, *,
                 complete_status: int = 200) -> None:
        self.data = data
        self.complete_status = complete_status
        url = f"{BASE}/{key}"
        self.initiate = router.post(url, params={"uploads": ""}).respond(
            200, headers={"content-type": "application/xml", "x-oss-request-id": "RID-INIT"},
            content=(
                '<?xml version="1.0" encoding="UTF-8"?>\n<InitiateMultipartUploadResult '
                'xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com">'
                f"<Bucket>{BUCKET}</Bucket><Key>{key}</Key><UploadId>{UPLOAD_ID}</UploadId>"
                "</InitiateMultipartUploadResult>"
            ).encode(),
        )
        self.parts: dict[int, bytes] = {}
        self.upload_part = router.put(url, params={"uploadId": UPLOAD_ID}).mock(
            side_effect=self._part)
        self.complete = router.post(url, params={"uploadId": UPLOAD_ID}).mock(
            side_effect=self._complete)
        self.abort = router.delete(url, params={"uploadId": UPLOAD_ID}).respond(204)

    def _part(self, request: httpx.Request) -> httpx.Response:
        number = int(request.url.params["partNumber"])
        self.parts[number] = request.content
        return httpx.Response(200, headers={
            "ETag": f'"{hashlib.md5(request.content).hexdigest().upper()}"',
            "x-oss-hash-crc64ecma": str(crc64(request.content)),  # this part's CRC-64
            "x-oss-request-id": f"RID-PART-{number}",
        })

    def _complete(self, request: httpx.Request) -> httpx.Response:
        headers = {
            "ETag": '"B864DB6A936D376F9F8D3ED3BBE540DD-3"',
            "x-oss-hash-crc64ecma": str(crc64(self.data)),  # the whole object's
            "x-oss-request-id": "RID-COMPLETE",
        }
        if self.complete_status == 203:
            return httpx.Response(203, headers={**headers, "content-type": "application/xml"},
                                  content=CALLBACK_FAILED)
        return httpx.Response(200, headers={**headers, "content-type": "application/json"},
                              content=CALLBACK_OK)

    def listed_parts(self) -> list[tuple[int, str]]:
        """``(PartNumber, ETag)`` in the order the Complete request listed them."""
        root = ET.fromstring(self.complete.calls.last.request.content)
        return [(int(p.findtext("PartNumber") or 0), p.findtext("ETag") or "")
                for p in root.iter("Part")]


def three_parts(tmp_path: Path) -> tuple[Path, bytes]:
    data = bytes(range(256)) * 1000 + b"tail"  # 256,004 bytes: 100 KiB + 100 KiB + the rest
    src = tmp_path / "video.bin"
    src.write_bytes(data)
    return src, data


async def test_resumable_upload_parts_and_complete_with_callback(
    kind: str, tmp_path: Path
) -> None:
    src, data = three_parts(tmp_path)
    ckpt = tmp_path / "video.ckpt"
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        oss = MultipartOSS(router, "videos/video.bin", data)
        async with open_bucket(kind) as bucket:
            result = await bucket.resumable_upload(
                "videos/video.bin", src, callback=CALLBACK, part_size=PART, concurrency=2,
                checkpoint_file=ckpt, headers={"Content-Type": "video/mp4"},
            )
    assert oss.initiate.call_count == 1
    assert oss.initiate.calls.last.request.headers["content-type"] == "video/mp4"
    assert oss.upload_part.call_count == 3
    assert oss.complete.call_count == 1
    assert oss.abort.call_count == 0
    assert sorted(oss.parts) == [1, 2, 3]
    assert [len(oss.parts[n]) for n in (1, 2, 3)] == [PART, PART, len(data) - 2 * PART]
    assert b"".join(oss.parts[n] for n in (1, 2, 3)) == data
    assert oss.listed_parts() == [
        (n, f'"{hashlib.md5(oss.parts[n]).hexdigest().upper()}"') for n in (1, 2, 3)
    ]
    complete = oss.complete.calls.last.request
    assert callback_json(complete)["callbackUrl"] == "http://app.example.com/oss-callback"
    for call in router.calls:
        assert_v4_signed(call.request)
        assert "x-oss-callback" not in call.request.headers or call.request is complete
    assert result.upload_id == UPLOAD_ID
    assert result.callback_status == 200
    assert result.callback_body == CALLBACK_OK
    assert result.crc64 == crc64(data)  # and it matched the parts' combined CRC-64
    assert result.size == len(data)
    assert not ckpt.exists()


async def test_resumable_upload_complete_203_is_callback_error_with_the_upload_id(
    kind: str, tmp_path: Path
) -> None:
    src, data = three_parts(tmp_path)
    ckpt = tmp_path / "video.ckpt"
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        oss = MultipartOSS(router, "videos/video.bin", data, complete_status=203)
        async with open_bucket(kind) as bucket:
            with pytest.raises(CallbackError) as info:
                await bucket.resumable_upload("videos/video.bin", src, callback=CALLBACK,
                                              part_size=PART, checkpoint_file=ckpt)
    assert oss.upload_part.call_count == 3
    assert oss.complete.call_count == 1  # never completed (or called back) twice
    assert oss.abort.call_count == 0  # the object is stored: nothing to abort
    err = info.value
    assert err.code == "CallbackFailed"
    assert err.result.upload_id == UPLOAD_ID
    assert err.result.etag == "B864DB6A936D376F9F8D3ED3BBE540DD-3"
    assert err.result.crc64 == crc64(data)
    assert err.result.callback_status == 203
    assert not ckpt.exists()  # a rerun starts over instead of completing again


async def test_resumable_upload_complete_203_without_checkpoint_does_not_abort(
    tmp_path: Path
) -> None:
    src, data = three_parts(tmp_path)
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        oss = MultipartOSS(router, "videos/video.bin", data, complete_status=203)
        async with open_bucket("async") as bucket:
            with pytest.raises(CallbackError):
                await bucket.resumable_upload("videos/video.bin", src, callback=CALLBACK,
                                              part_size=PART, disable_checkpoint=True)
    assert oss.complete.call_count == 1
    assert oss.abort.call_count == 0


# --------------------------------------------------------------------------- downloads


async def test_get_object_and_head_object(kind: str) -> None:
    data = b"stored bytes " * 5000
    headers = {"ETag": '"5B3C1A2E"', "x-oss-hash-crc64ecma": str(crc64(data)),
               "x-oss-request-id": "RID-GET", "Content-Type": "text/plain",
               "x-oss-meta-owner": "respx"}
    with respx.mock(assert_all_mocked=True) as router:
        get = router.get(f"{BASE}/docs/a.txt").respond(200, headers=headers, content=data)
        head = router.head(f"{BASE}/docs/a.txt").respond(
            200, headers={**headers, "Content-Length": str(len(data))})
        async with open_bucket(kind) as bucket:
            assert await bucket.get_object("docs/a.txt") == data
            meta = await bucket.head_object("docs/a.txt")
    assert get.call_count == 1 and head.call_count == 1
    assert_v4_signed(get.calls.last.request)
    assert_v4_signed(head.calls.last.request)
    assert (meta.size, meta.etag, meta.crc64) == (len(data), "5B3C1A2E", crc64(data))
    assert meta.content_type == "text/plain"
    assert meta.metadata == {"owner": "respx"}


async def test_get_object_with_a_wrong_crc_is_inconsistent(kind: str) -> None:
    data = b"what was stored"
    with respx.mock(assert_all_mocked=True) as router:
        route = router.get(f"{BASE}/docs/a.txt").respond(
            200, content=data, headers={"ETag": '"E"', "x-oss-request-id": "RID-BAD",
                                        "x-oss-hash-crc64ecma": str(crc64(data) ^ 1)})
        async with open_bucket(kind) as bucket:
            with pytest.raises(InconsistentError) as info:
                await bucket.get_object("docs/a.txt")
    assert route.call_count == 1
    assert info.value.client_crc == crc64(data)
    assert info.value.server_crc == crc64(data) ^ 1
    assert info.value.request_id == "RID-BAD"


# --------------------------------------------------------------------------- nothing escapes


class _Origin:
    """A real HTTP server on 127.0.0.1 that answers every request like a PutObject and counts
    the connections it accepts: evidence of whether a request reached the network."""

    def __init__(self) -> None:
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                origin.requests += 1
                self.send_response(200)
                self.send_header("ETag", '"REALNETWORK"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                conn = super().get_request()
                origin.accepted += 1
                return conn

        self.accepted = 0
        self.requests = 0
        self.server = Server(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def origin() -> Iterator[_Origin]:
    server = _Origin()
    yield server
    server.close()


async def test_an_unmocked_request_raises_and_never_reaches_the_network(
    kind: str, origin: _Origin
) -> None:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        other = router.put(f"{BASE}/k").mock(side_effect=stored)
        async with open_bucket(kind, origin.endpoint, region=REGION) as bucket:
            with pytest.raises(AssertionError, match="not mocked") as info:  # respx's own
                await bucket.put_object("k", b"x")
    assert f"'PUT', '{origin.endpoint}/{BUCKET}/k'" in str(info.value)
    assert other.call_count == 0
    assert origin.accepted == 0 and origin.requests == 0


async def test_an_unmocked_cloud_request_raises_too(kind: str) -> None:
    with respx.mock(assert_all_mocked=True) as router:
        async with open_bucket(kind) as bucket:
            with pytest.raises(AssertionError, match="not mocked") as info:
                await bucket.get_object("k")
    assert f"'GET', '{BASE}/k'" in str(info.value)
    assert len(router.calls) == 0


async def test_pass_through_does_reach_the_network(kind: str, origin: _Origin) -> None:
    """The control for the test above: the same origin does see what respx lets through."""
    with respx.mock(assert_all_mocked=True) as router:
        route = router.route(host="127.0.0.1").pass_through()
        async with open_bucket(kind, origin.endpoint, region=REGION) as bucket:
            result = await bucket.put_object("k", b"x")
    assert route.called  # (counted twice: respx patches httpcore's pool and its connections)
    assert result.etag == "REALNETWORK"
    assert origin.accepted == 1 and origin.requests == 1


@respx.mock(assert_all_mocked=True)
async def test_the_decorator_and_respx_mock_fixture_style(respx_mock: respx.MockRouter) -> None:
    route = respx_mock.put(f"{BASE}/k", headers={"x-oss-meta-a": "b"}).mock(side_effect=stored)
    async with AsyncClient(ENDPOINT, AK, SK) as client:
        result = await client.get_bucket(BUCKET).put_object("k", b"data",
                                                            headers={"x-oss-meta-a": "b"})
    assert route.called
    assert result.crc64 == crc64(b"data")
