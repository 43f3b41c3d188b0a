"""Unit seams of the async client: request building, retries, error mapping, 203, CRC checks,
bad input.

Requests go through a default-built client (no ``transport=``) under ``respx.mock``, routed by
method and URL, as a user's own tests would do it; ``transport=`` is used only where respx
can't express the case (said where). Everything that talks to a server for real lives in the
integration tests on the emulator and in test_http_engine.py.
"""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from oss_callback import (
    AsyncClient,
    Callback,
    CallbackError,
    InconsistentError,
    PutObjectResult,
    RequestError,
    ResponseError,
    RetryPolicy,
    ServiceError,
)
from oss_callback.protocol._crc64 import crc64

ENDPOINT = "https://oss-cn-hangzhou.aliyuncs.com"
B1 = "https://b-1.oss-cn-hangzhou.aliyuncs.com"

CALLBACK_FAILED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n  <Code>CallbackFailed</Code>\n'
    b"  <Message>Response body is not valid json format.</Message>\n"
    b"  <RequestId>587C81A125F797621829923D</RequestId>\n"
    b"  <HostId>bucket.oss-cn-hangzhou.aliyuncs.com</HostId>\n</Error>"
)


def ok_put(request: httpx.Request, **extra: str) -> httpx.Response:
    body = request.read()
    headers = {
        "etag": '"D8E8FCA2DC0F896FD7CB4CB0031BA249"',
        "x-oss-hash-crc64ecma": str(crc64(body)),
        "x-oss-request-id": "RID-OK",
        **extra,
    }
    return httpx.Response(200, headers=headers)


def error(status: int, code: str, message: str = "m", **headers: str) -> httpx.Response:
    xml = (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
        f"<Message>{message}</Message><RequestId>RID-{status}</RequestId></Error>"
    )
    return httpx.Response(status, content=xml.encode(), headers=headers)


def make_client(**kwargs: object) -> AsyncClient:
    """A default-built client (the SDK's own httpx client: respx sees its requests)."""
    kwargs.setdefault("retry", RetryPolicy.no_wait())
    return AsyncClient(ENDPOINT, "AKID", "SECRET-never-shown", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def requests_seen() -> list[httpx.Request]:
    return []


@respx.mock(assert_all_mocked=True)
async def test_put_object_success_sends_signed_request(
    respx_mock: respx.MockRouter, requests_seen: list[httpx.Request]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        requests_seen.append(request)
        return ok_put(request, **{"x-oss-version-id": "v1"})

    route = respx_mock.put("https://examplebucket.oss-cn-hangzhou.aliyuncs.com/dir/a%20b%2Bc.txt")
    route.mock(side_effect=handler)
    async with make_client() as client:
        result = await client.get_bucket("examplebucket").put_object(
            "dir/a b+c.txt", b"hello", headers={"Content-Type": "text/plain"}
        )
    assert result == PutObjectResult(
        key="dir/a b+c.txt", etag="D8E8FCA2DC0F896FD7CB4CB0031BA249", crc64=crc64(b"hello"),
        request_id="RID-OK", version_id="v1", size=5,
    )
    assert route.call_count == 1
    (req,) = requests_seen
    assert req.url.host == "examplebucket.oss-cn-hangzhou.aliyuncs.com"
    assert req.url.raw_path == b"/dir/a%20b%2Bc.txt"
    assert req.headers["authorization"].startswith(
        "OSS4-HMAC-SHA256 Credential=AKID/"
    ) and "/cn-hangzhou/oss/aliyun_v4_request,Signature=" in req.headers["authorization"]
    assert req.headers["content-type"] == "text/plain"
    assert req.headers["content-length"] == "5"
    assert req.headers["x-oss-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert req.content == b"hello"


@respx.mock
async def test_retries_5xx_then_succeeds_and_resigns(requests_seen: list[httpx.Request]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        requests_seen.append(request)
        if len(requests_seen) < 3:
            return error(503, "ServiceUnavailable")
        return ok_put(request)

    route = respx.put(f"{B1}/k").mock(side_effect=handler)
    progress: list[tuple[int, int | None]] = []
    async with make_client() as client:
        result = await client.get_bucket("b-1").put_object(
            "k", b"x" * 3000, progress=lambda d, t: progress.append((d, t))
        )
    assert result.etag == "D8E8FCA2DC0F896FD7CB4CB0031BA249"
    assert route.call_count == 3
    # every attempt carries a full body and a signature
    assert all(r.headers["authorization"] for r in requests_seen)
    assert all(r.content == b"x" * 3000 for r in requests_seen)
    assert progress[-1] == (3000, 3000)
    assert max(d for d, _ in progress) == 3000  # never past the total
    assert (0, 3000) in progress  # rewound for the retry


@respx.mock
async def test_gives_up_after_max_attempts() -> None:
    route = respx.put(f"{B1}/k").mock(side_effect=lambda request: error(500, "InternalError",
                                                                         "boom"))
    async with make_client(retry=RetryPolicy.no_wait(max_attempts=4)) as client:
        with pytest.raises(ServiceError) as info:
            await client.get_bucket("b-1").put_object("k", b"x")
    assert route.call_count == 4
    assert info.value.status == 500 and info.value.code == "InternalError"
    assert "RID-500" in str(info.value)


@respx.mock
async def test_4xx_is_not_retried() -> None:
    route = respx.put(f"{B1}/k").mock(side_effect=lambda request: error(403, "AccessDenied",
                                                                         "nope"))
    async with make_client() as client:
        with pytest.raises(ServiceError, match="AccessDenied"):
            await client.get_bucket("b-1").put_object("k", b"x")
    assert route.call_count == 1


@respx.mock
async def test_connection_errors_become_request_error_after_retries() -> None:
    route = respx.put(f"{B1}/k").mock(side_effect=httpx.ConnectError("refused"))
    async with make_client() as client:
        with pytest.raises(RequestError, match="ConnectError") as info:
            await client.get_bucket("b-1").put_object("k", b"x")
    assert route.call_count == 3
    assert isinstance(info.value.__cause__, httpx.ConnectError)


@respx.mock
async def test_non_replayable_body_is_not_retried() -> None:
    route = respx.put(f"{B1}/k").mock(side_effect=lambda request: error(503,
                                                                         "ServiceUnavailable"))

    async def gen() -> AsyncIterator[bytes]:
        yield b"abc"

    async with make_client() as client:
        with pytest.raises(ServiceError):
            await client.get_bucket("b-1").put_object("k", gen())
    assert route.call_count == 1
    assert route.calls.last.request.content == b"abc"


@respx.mock
async def test_request_time_too_skewed_learns_the_server_clock() -> None:
    dates: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        dates.append(request.headers["x-oss-date"])
        if len(dates) == 1:
            return error(403, "RequestTimeTooSkewed",
                         date="Wed, 01 Jan 2020 00:00:00 GMT")
        return ok_put(request)

    respx.put(f"{B1}/k").mock(side_effect=handler)
    async with make_client() as client:
        await client.get_bucket("b-1").put_object("k", b"x")
    assert dates[0][:4] != "2020"
    assert dates[1].startswith("20200101T0000")


@respx.mock
async def test_203_raises_callback_error_with_the_stored_result() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        assert request.headers["x-oss-callback"]
        return httpx.Response(
            203,
            content=CALLBACK_FAILED,
            headers={
                "etag": '"ETAG203"',
                "x-oss-hash-crc64ecma": str(crc64(body)),
                "x-oss-request-id": "587C81A125F797621829923D",
                "x-oss-version-id": "VER",
            },
        )

    respx.put(f"{B1}/k").mock(side_effect=handler)
    async with make_client() as client:
        with pytest.raises(CallbackError) as info:
            await client.get_bucket("b-1").put_object(
                "k", b"data", callback=Callback("http://cb.example.com/hook")
            )
    err = info.value
    assert err.status == 203
    assert err.code == "CallbackFailed"
    assert err.message == "Response body is not valid json format."
    assert err.result.etag == "ETAG203"
    assert err.result.crc64 == crc64(b"data")
    assert err.result.version_id == "VER"
    assert err.result.request_id == "587C81A125F797621829923D"
    assert err.result.callback_status == 203
    assert "was stored" in str(err) and "\n" not in str(err)


@respx.mock
async def test_203_is_never_retried() -> None:
    route = respx.put(f"{B1}/k").respond(203, content=CALLBACK_FAILED, headers={"etag": '"E"'})
    async with make_client() as client:
        with pytest.raises(CallbackError):
            await client.get_bucket("b-1").put_object(
                "k", b"d", callback=Callback("http://cb.example.com/hook")
            )
    assert route.call_count == 1


@respx.mock
async def test_200_with_callback_returns_the_callback_body() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        cb = base64.b64decode(request.headers["x-oss-callback"])
        assert b'"callbackUrl":"http://cb.example.com/hook"' in cb
        resp = ok_put(request)
        return httpx.Response(200, headers=resp.headers, content=b'{"Status":"OK"}')

    route = respx.put(f"{B1}/k").mock(side_effect=handler)
    async with make_client() as client:
        result = await client.get_bucket("b-1").put_object(
            "k", b"d", callback=Callback("http://cb.example.com/hook")
        )
    assert route.call_count == 1
    assert result.callback_status == 200
    assert result.callback_body == b'{"Status":"OK"}'
    assert result.callback_json() == {"Status": "OK"}


@respx.mock
async def test_crc_mismatch_is_detected_and_retried_then_raised() -> None:
    route = respx.put(f"{B1}/k").respond(
        200, headers={"etag": '"E"', "x-oss-hash-crc64ecma": "12345"})
    async with make_client() as client:
        with pytest.raises(InconsistentError) as info:
            await client.get_bucket("b-1").put_object("k", b"payload")
    assert route.call_count == 3
    assert all(call.request.content == b"payload" for call in route.calls)
    assert info.value.client_crc == crc64(b"payload")
    assert info.value.server_crc == 12345


@respx.mock
async def test_head_error_decodes_x_oss_err() -> None:
    xml = (b"<Error><Code>NoSuchBucket</Code>"
           b"<Message>The specified bucket does not exist.</Message></Error>")
    route = respx.head(f"{B1}/k").respond(404, headers={
        "x-oss-err": base64.b64encode(xml).decode(), "x-oss-request-id": "HEADRID",
        "x-oss-ec": "0015-00000101"})

    async with make_client() as client:
        bucket = client.get_bucket("b-1")
        with pytest.raises(ServiceError) as info:
            await bucket.head_object("k")
        # NoSuchBucket is not "object missing": object_exists must not swallow it
        with pytest.raises(ServiceError, match="NoSuchBucket"):
            await bucket.object_exists("k")
    assert route.call_count == 2  # a 404 is not retried
    assert info.value.code == "NoSuchBucket"
    assert info.value.request_id == "HEADRID"
    assert info.value.ec == "0015-00000101"


@respx.mock
async def test_object_exists_false_on_no_such_key() -> None:
    xml = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>"
    respx.head(f"{B1}/k").respond(404, headers={"x-oss-err": base64.b64encode(xml).decode()})
    respx.head(f"{B1}/present").respond(200, headers={"etag": '"E"', "content-length": "3"})

    async with make_client() as client:
        assert await client.get_bucket("b-1").object_exists("k") is False
        assert await client.get_bucket("b-1").object_exists("present") is True


@respx.mock
async def test_html_from_a_non_oss_endpoint_is_a_clear_error() -> None:
    respx.post(f"{B1}/k", params={"uploads": ""}).respond(
        200, content=b"<html><body>Welcome to nginx</body></html>")

    async with make_client() as client:
        with pytest.raises(ResponseError, match=r"not XML|<html>|expected"):
            await client.get_bucket("b-1").initiate_multipart_upload("k")


@respx.mock
async def test_download_crc_mismatch_raises() -> None:
    route = respx.get(f"{B1}/k").respond(200, content=b"abc",
                                         headers={"x-oss-hash-crc64ecma": "1"})
    async with make_client() as client:
        with pytest.raises(InconsistentError, match="download"):
            await client.get_bucket("b-1").get_object("k")
    assert route.call_count == 1


async def test_a_transport_answering_in_memory_serves_downloads_and_their_crc_check() -> None:
    # transport= on purpose: a MockTransport response is built in memory, its stream already
    # consumed, which the SDK reads differently from a network stream (the only way to reach
    # that path; respx answers through httpcore, as a network stream).
    def handler(request: httpx.Request) -> httpx.Response:
        data = b"in memory" if request.url.path == "/good" else b"abc"
        return httpx.Response(200, content=data, headers={
            "etag": '"E"', "x-oss-hash-crc64ecma": str(crc64(b"in memory"))})

    async with make_client(transport=httpx.MockTransport(handler)) as client:
        bucket = client.get_bucket("b-1")
        assert await bucket.get_object("good") == b"in memory"
        with pytest.raises(InconsistentError, match="download"):
            await bucket.get_object("bad")


async def test_a_success_answer_to_a_body_not_sent_whole_is_not_success() -> None:
    # transport= on purpose: respx and MockTransport both read the whole request body before
    # answering, so only a transport of our own can answer without consuming it (what a
    # server's early answer looks like to the SDK).
    class AnswersWithoutReading(httpx.AsyncBaseTransport):
        calls = 0

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            AnswersWithoutReading.calls += 1
            return httpx.Response(200, headers={"etag": '"E"', "x-oss-request-id": "RID"})

    async with make_client(transport=AnswersWithoutReading(),
                           retry=RetryPolicy.no_wait(max_attempts=2)) as client:
        with pytest.raises(RequestError, match=r"before the whole body was sent \(0 of 5 "):
            await client.get_bucket("b-1").put_object("k", b"hello")
    assert AnswersWithoutReading.calls == 2  # a RequestError: retried (the body replays)


@pytest.mark.parametrize(
    ("key", "exc", "match"),
    [
        ("", ValueError, "must not be empty"),
        ("x" * 1024, ValueError, "1023"),
        ("/leading", ValueError, "must not start"),
    ],
)
async def test_bad_keys_fail_before_any_request(key: str, exc: type[Exception], match: str) -> None:
    # No route: any request would raise respx's AssertionError instead of the expected error.
    with respx.mock(assert_all_mocked=True) as router:
        async with make_client() as client:
            with pytest.raises(exc, match=match):
                await client.get_bucket("b-1").put_object(key, b"x")
    assert router.calls.call_count == 0


async def test_bad_data_types_are_type_errors() -> None:
    with respx.mock(assert_all_mocked=True) as router:
        async with make_client() as client:
            bucket = client.get_bucket("b-1")
            with pytest.raises(TypeError, match="data must be bytes"):
                await bucket.put_object("k", 12345)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="binary mode"):
                await bucket.put_object("k", io.StringIO("text"))  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="either data= or file="):
                await bucket.put_object("k", b"x", file="/etc/hostname")
            with pytest.raises(FileNotFoundError, match="no such file"):
                await bucket.put_object("k", file="/nonexistent/file")
            with pytest.raises(TypeError, match="Callback"):
                await bucket.put_object("k", b"x", callback="http://x")  # type: ignore[arg-type]
    assert router.calls.call_count == 0


def test_missing_credentials_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OSS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("OSS_ACCESS_KEY_SECRET", raising=False)
    with pytest.raises(ValueError, match=r"OSS_ACCESS_KEY_ID.*OSS_ACCESS_KEY_SECRET"):
        AsyncClient("https://oss-cn-hangzhou.aliyuncs.com")


def test_v4_without_region_says_to_pass_region() -> None:
    with pytest.raises(ValueError, match="region="):
        AsyncClient("http://127.0.0.1:9000", "a", "b")


async def test_use_after_close_is_a_clear_error() -> None:
    client = make_client()
    await client.aclose()
    await client.aclose()  # idempotent
    assert client.http_client.is_closed  # the SDK-built httpx client is closed with it
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_bucket("b-1").put_object("k", b"x")


async def test_unclosed_client_warns() -> None:
    client = make_client()
    with pytest.warns(ResourceWarning, match="not closed"):
        client.__del__()
    await client.aclose()  # don't warn again at GC


@respx.mock
async def test_secrets_do_not_appear_in_reprs_or_errors() -> None:
    respx.put(f"{B1}/k").mock(side_effect=lambda request: error(403, "SignatureDoesNotMatch",
                                                                 "bad sig"))
    client = make_client(security_token="TOKEN-secret-value")
    async with client:
        with pytest.raises(ServiceError) as info:
            await client.get_bucket("b-1").put_object("k", b"x")
        texts = [repr(client), str(client), repr(client.get_bucket("b-1")), str(info.value),
                 repr(info.value), repr(client._session.credentials)]
    for text in texts:
        assert "SECRET-never-shown" not in text
        assert "TOKEN-secret-value" not in text
    assert "AKID" in repr(client)
