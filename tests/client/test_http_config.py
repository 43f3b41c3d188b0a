"""HTTP configuration over real sockets: proxies and CA bundles from the environment, a
user's own ``httpx.AsyncClient`` (``verify=``, event hooks, who closes it), the argument
checks, and the opt-in aiohttp engine.

Everything runs against the emulator (plain HTTP, or HTTPS with a private CA) and a real
proxy (``proxy_helpers.TestProxy``). The environment is controlled per test: the proxy
variables are removed from it for every test here, and set only where a test needs them.
Async tests use only anyio, so they run on asyncio and trio alike; the aiohttp tests run
their body with ``anyio.run(..., backend="asyncio")`` (aiohttp is asyncio only).
"""

from __future__ import annotations

import functools
import os
import re
import ssl
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread
import httpx
import pytest
from support.facades import Api
from support.proxy_helpers import TestProxy, closed_port

from oss_callback import AsyncClient, Client, RequestError, RetryPolicy
from oss_callback.testing import OSSEmulator

BUCKET = "http-config"
MiB = 1024 * 1024
Kind = Literal["async", "sync"]
KINDS = pytest.mark.parametrize("kind", ["async", "sync"])

#: Every variable urllib.request.getproxies() (so httpx) reads on this platform.
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
              "http_proxy", "https_proxy", "all_proxy", "no_proxy",
              "REQUEST_METHOD")  # set, it makes urllib ignore HTTP_PROXY (CGI)


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the machine's environment: tests set the ones they need."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def emu(oss_emulator: OSSEmulator) -> OSSEmulator:
    """The session's plain-HTTP emulator, reset, with ``BUCKET``."""
    oss_emulator.create_bucket(BUCKET)
    return oss_emulator


@pytest.fixture(scope="module")
def tls_emulator_module() -> Iterator[OSSEmulator]:
    with OSSEmulator(tls=True, buckets=[BUCKET], callback_timeout=5.0) as emulator:
        yield emulator


@pytest.fixture
def tls_emu(tls_emulator_module: OSSEmulator) -> OSSEmulator:
    """An HTTPS emulator (certificate from a private CA), reset, with ``BUCKET``."""
    tls_emulator_module.reset()
    return tls_emulator_module


@pytest.fixture
def proxy() -> Iterator[TestProxy]:
    with TestProxy() as p:
        yield p


@pytest.fixture
def untrusting_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CA bundle without the emulator's CA (certifi's public roots), no CA directory."""
    import certifi

    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def trust_ca(monkeypatch: pytest.MonkeyPatch, emulator: OSSEmulator) -> None:
    """Trust the emulator's private CA through the environment only."""
    monkeypatch.setenv("SSL_CERT_FILE", str(emulator.ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def client_args(emulator: OSSEmulator) -> dict[str, Any]:
    return {"endpoint": emulator.endpoint, "access_key_id": emulator.access_key_id,
            "access_key_secret": emulator.access_key_secret, "region": emulator.region,
            "retry": RetryPolicy.no_wait()}


@asynccontextmanager
async def open_api(kind: Kind, emulator: OSSEmulator, **kwargs: Any) -> AsyncIterator[Api]:
    """``BUCKET`` through a fresh ``AsyncClient`` or sync ``Client`` (closed on exit)."""
    args = {**client_args(emulator), **kwargs}
    if kind == "async":
        async with AsyncClient(**args) as client:
            yield Api(client.get_bucket(BUCKET), is_async=True)
        return
    sync_client = await anyio.to_thread.run_sync(functools.partial(Client, **args))
    try:
        yield Api(sync_client.get_bucket(BUCKET), is_async=False)
    finally:
        await anyio.to_thread.run_sync(sync_client.close)


def make_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def operations(emulator: OSSEmulator) -> Counter[str]:
    return Counter(r.operation for r in emulator.requests)


async def upload_and_read(api: Api, emulator: OSSEmulator, tmp_path: Path) -> tuple[int, int]:
    """put_object, a 4-part resumable_upload, get_object, head_object; checks every result.

    Returns (bytes uploaded, bytes downloaded).
    """
    small = os.urandom(100_000)
    src = tmp_path / "src.bin"
    data = make_file(src, 3 * MiB + 7)
    put = await api.put_object("small.bin", small)
    result = await api.resumable_upload("multi.bin", src, part_size=MiB, concurrency=2,
                                        checkpoint_file=tmp_path / "ckpt.json")
    assert result.upload_id is not None and result.size == len(data)
    assert await api.get_object("multi.bin") == data
    head = await api.head_object("small.bin")
    assert (head.size, head.etag, head.crc64) == (len(small), put.etag, put.crc64)
    assert emulator.get_object(BUCKET, "small.bin") == small
    assert emulator.get_object(BUCKET, "multi.bin") == data
    assert not (tmp_path / "ckpt.json").exists()
    assert operations(emulator) == {"PutObject": 1, "InitiateMultipartUpload": 1,
                                    "UploadPart": 4, "CompleteMultipartUpload": 1,
                                    "GetObject": 1, "HeadObject": 1}
    return len(small) + len(data), len(data)


# --------------------------------------------------------------------------- proxies


@KINDS
async def test_http_proxy_from_env_carries_every_request(
    kind: Kind, emu: OSSEmulator, proxy: TestProxy, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    async with open_api(kind, emu) as api:
        uploaded, downloaded = await upload_and_read(api, emu, tmp_path)
    assert proxy.wait_idle(), "the proxy's connections did not finish after the client closed"
    assert proxy.connections
    origin = re.escape(f"http://127.0.0.1:{emu.port}/{BUCKET}/")
    for line in proxy.request_lines:  # absolute-form: forwarded, not tunnelled
        assert re.match(rf"^(PUT|POST|GET|HEAD) {origin}", line), line
    assert proxy.bytes_up >= uploaded
    assert sum(c.bytes_down for c in proxy.connections) >= downloaded


@KINDS
async def test_https_proxy_from_env_tunnels_tls(
    kind: Kind, tls_emu: OSSEmulator, proxy: TestProxy, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    trust_ca(monkeypatch, tls_emu)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    # https:// URLs take HTTPS_PROXY: a dead HTTP_PROXY must not matter.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    async with open_api(kind, tls_emu) as api:
        uploaded, _ = await upload_and_read(api, tls_emu, tmp_path)
    assert proxy.wait_idle()
    assert proxy.connections
    assert set(proxy.request_lines) == {f"CONNECT 127.0.0.1:{tls_emu.port}"}
    assert proxy.bytes_up >= uploaded  # TLS records: more than the plaintext


@KINDS
async def test_no_proxy_bypasses_the_proxy(
    kind: Kind, emu: OSSEmulator, proxy: TestProxy, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    async with open_api(kind, emu) as api:
        await api.put_object("direct.bin", b"no proxy here")
        assert await api.get_object("direct.bin") == b"no proxy here"
    assert emu.get_object(BUCKET, "direct.bin") == b"no proxy here"
    assert proxy.connections == []


async def test_refused_proxy_is_a_request_error(
    emu: OSSEmulator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    async with open_api("async", emu) as api:
        with pytest.raises(RequestError) as info:
            await api.put_object("k", b"never stored")
    message = str(info.value)
    assert message.startswith(f"PUT oss://{BUCKET}/k failed: ConnectError")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert emu.requests == [] and emu.list_keys(BUCKET) == []


async def test_refused_proxy_message_mentions_the_proxy(
    emu: OSSEmulator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = closed_port()
    # Credentials in the proxy URL must not reach the message.
    monkeypatch.setenv("HTTP_PROXY", f"http://proxyuser:proxy-pass-word@127.0.0.1:{port}")
    async with open_api("async", emu) as api:
        with pytest.raises(RequestError) as info:
            await api.put_object("k", b"never stored")
    message = str(info.value)
    assert f"went through the proxy http://127.0.0.1:{port} (from HTTP_PROXY)" in message
    assert "NO_PROXY" in message
    assert "proxy-pass-word" not in message and "proxyuser" not in message
    assert emu.list_keys(BUCKET) == []


async def test_no_proxy_hint_when_no_proxy_excludes_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused direct connection is not blamed on a proxy that NO_PROXY bypasses."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    async with AsyncClient(f"http://127.0.0.1:{closed_port()}", "id", "secret",
                           region="cn-hangzhou", retry=RetryPolicy.no_wait(1)) as client:
        with pytest.raises(RequestError) as info:
            await client.get_bucket(BUCKET).put_object("k", b"x")
    assert "ConnectError" in str(info.value)
    assert "proxy" not in str(info.value).lower()


async def test_proxy_answering_connect_with_403_gets_the_proxy_hint(
    tls_emu: OSSEmulator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    trust_ca(monkeypatch, tls_emu)
    with TestProxy(refuse_status=403) as refusing:
        monkeypatch.setenv("HTTPS_PROXY", refusing.url)
        async with open_api("async", tls_emu) as api:
            with pytest.raises(RequestError) as info:
                await api.put_object("k", b"never stored")
    message = str(info.value)
    assert "ProxyError: 403" in message
    assert "went through the proxy http://127.0.0.1:" in message
    assert "(from HTTPS_PROXY), which refused or failed" in message
    assert isinstance(info.value.__cause__, httpx.ProxyError)
    assert refusing.request_lines
    assert set(refusing.request_lines) == {f"CONNECT 127.0.0.1:{tls_emu.port}"}
    assert tls_emu.requests == [] and tls_emu.list_keys(BUCKET) == []


# --------------------------------------------------------------------------- TLS


async def exercise_every_request(api: Api, emulator: OSSEmulator, tmp_path: Path) -> None:
    """Every kind of request the SDK sends, each checked, then what the emulator saw."""
    small = os.urandom(200_000)
    src = tmp_path / "src.bin"
    data = make_file(src, 3 * MiB + 7)
    await api.put_object("bytes.bin", small)
    await api.put_object("file.bin", file=src)
    result = await api.resumable_upload("multi.bin", src, part_size=MiB,
                                        checkpoint_file=tmp_path / "ckpt.json")
    assert result.upload_id is not None and result.size == len(data)
    assert await api.get_object("bytes.bin") == small
    assert await api.get_object("multi.bin", byte_range=(5, 9)) == data[5:10]
    out = tmp_path / "out.bin"
    got = await api.get_object_to_file("file.bin", out)
    assert got.size == len(data) and out.read_bytes() == data
    head = await api.head_object("multi.bin")
    assert (head.size, head.crc64) == (len(data), result.crc64)
    init = await api.initiate_multipart_upload("aborted.bin")
    part = await api.upload_part("aborted.bin", init.upload_id, 1, b"part one")
    listed = await api.list_parts("aborted.bin", init.upload_id)
    assert [(p.part_number, p.etag, p.size) for p in listed.parts] == [(1, part.etag, 8)]
    await api.abort_multipart_upload("aborted.bin", init.upload_id)
    await api.delete_object("bytes.bin")
    assert await api.object_exists("bytes.bin") is False

    assert emulator.get_object(BUCKET, "file.bin") == data
    assert emulator.get_object(BUCKET, "multi.bin") == data
    assert sorted(emulator.list_keys(BUCKET)) == ["file.bin", "multi.bin"]
    assert emulator.list_uploads(BUCKET) == []
    assert operations(emulator) == {
        "PutObject": 2, "InitiateMultipartUpload": 2, "UploadPart": 5,
        "CompleteMultipartUpload": 1, "GetObject": 3, "HeadObject": 2, "ListParts": 1,
        "AbortMultipartUpload": 1, "DeleteObject": 1,
    }
    failed = [(r.operation, r.status) for r in emulator.requests if r.status >= 300]
    assert failed == [("HeadObject", 404)]  # object_exists() of the deleted object


@KINDS
async def test_private_ca_from_ssl_cert_file_every_request(
    kind: Kind, tls_emu: OSSEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    assert tls_emu.endpoint.startswith("https://127.0.0.1:")
    trust_ca(monkeypatch, tls_emu)
    async with open_api(kind, tls_emu) as api:
        await exercise_every_request(api, tls_emu, tmp_path)


@pytest.mark.usefixtures("untrusting_env")
async def test_private_ca_through_user_http_client_verify(
    tls_emu: OSSEmulator, tmp_path: Path,
) -> None:
    # The environment's bundle lacks the CA: a default-built client fails...
    error = await put_untrusted("async", tls_emu)
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert tls_emu.requests == [] and tls_emu.list_keys(BUCKET) == []
    # ...while the user's client, with its own verify=, carries every request.
    verify = ssl.create_default_context(cafile=str(tls_emu.ca_file))
    async with httpx.AsyncClient(verify=verify) as http:
        async with open_api("async", tls_emu, http_client=http) as api:
            await exercise_every_request(api, tls_emu, tmp_path)
        assert not http.is_closed


async def put_untrusted(kind: Kind, emulator: OSSEmulator) -> RequestError:
    async with open_api(kind, emulator) as api:
        with pytest.raises(RequestError) as info:
            await api.put_object("k", b"never stored")
    return info.value


# Run on each backend explicitly (not the suite's): the hint differs on trio.
@pytest.mark.parametrize(("kind", "backend"), [
    ("async", "asyncio"),
    ("async", "trio"),
    ("sync", "asyncio"),
])
@pytest.mark.usefixtures("untrusting_env")
def test_untrusted_private_ca_fails_with_a_hint(
    kind: Kind, backend: str, tls_emu: OSSEmulator,
) -> None:
    if backend == "trio":
        pytest.importorskip("trio")
    error = anyio.run(put_untrusted, kind, tls_emu, backend=backend)
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert tls_emu.requests == []  # no request got past the handshake
    assert tls_emu.list_keys(BUCKET) == []
    message = str(error)
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "the server's certificate is not trusted" in message
    assert "SSL_CERT_FILE" in message


# --------------------------------------------------------------------------- user client


def classify(request: httpx.Request) -> str:
    """``"PUT part"``, ``"POST initiate"``, ``"POST complete"``, ``"GET object"``, ..."""
    params = request.url.params
    if "partNumber" in params:
        what = "part"
    elif "uploads" in params:
        what = "initiate"
    elif "uploadId" in params:
        what = "complete" if request.method == "POST" else "upload"
    else:
        what = "object"
    return f"{request.method} {what}"


def check_signed(request: httpx.Request) -> None:
    assert request.headers["authorization"].startswith("OSS4-HMAC-SHA256 Credential=")
    user_agent = request.headers["user-agent"]
    assert user_agent.startswith("oss-callback/") and "httpx/" in user_agent, user_agent


async def test_user_http_client_event_hooks_see_every_request(
    emu: OSSEmulator, tmp_path: Path,
) -> None:
    requests: list[httpx.Request] = []
    responses: list[httpx.Response] = []

    async def on_request(request: httpx.Request) -> None:
        requests.append(request)

    async def on_response(response: httpx.Response) -> None:
        responses.append(response)

    src = tmp_path / "src.bin"
    data = make_file(src, 2 * MiB + 100)
    http = httpx.AsyncClient(event_hooks={"request": [on_request], "response": [on_response]})
    try:
        async with AsyncClient(**client_args(emu), http_client=http) as client:
            assert client.http_client is http
            bucket = client.get_bucket(BUCKET)
            await bucket.put_object("single.bin", b"hello hooks")
            result = await bucket.resumable_upload("multi.bin", src, part_size=MiB,
                                                   checkpoint_file=tmp_path / "ckpt.json")
            assert result.callback_status is None and result.upload_id is not None
            assert await bucket.get_object("multi.bin") == data
        assert not http.is_closed  # the SDK never closes a user's client
        async with AsyncClient(**client_args(emu), http_client=http) as again:
            await again.get_bucket(BUCKET).put_object("after.bin", b"still usable")
        assert not http.is_closed
    finally:
        await http.aclose()
    assert emu.get_object(BUCKET, "after.bin") == b"still usable"
    assert emu.get_object(BUCKET, "multi.bin") == data

    kinds = [classify(r) for r in requests]
    assert kinds[:2] == ["PUT object", "POST initiate"]
    assert kinds[2:5] == ["PUT part"] * 3
    assert sorted(r.url.params["partNumber"] for r in requests[2:5]) == ["1", "2", "3"]
    assert kinds[5:] == ["POST complete", "GET object", "PUT object"]
    for request in requests:
        check_signed(request)
    assert sorted(id(r.request) for r in responses) == sorted(map(id, requests))
    assert [r.status_code for r in responses] == [200] * len(requests)


def test_sync_client_runs_user_hooks_on_its_loop_thread_and_closes_them(
    emu: OSSEmulator, tmp_path: Path,
) -> None:
    seen: list[tuple[str, int]] = []
    statuses: list[int] = []

    async def on_request(request: httpx.Request) -> None:
        check_signed(request)
        seen.append((classify(request), threading.get_ident()))

    async def on_response(response: httpx.Response) -> None:
        statuses.append(response.status_code)

    src = tmp_path / "src.bin"
    data = make_file(src, MiB + MiB // 2)
    http = httpx.AsyncClient(event_hooks={"request": [on_request], "response": [on_response]})
    client = Client(**client_args(emu), http_client=http)
    try:
        assert client.http_client is http
        bucket = client.get_bucket(BUCKET)
        bucket.put_object("single.bin", b"sync hooks")
        bucket.resumable_upload("multi.bin", src, part_size=MiB,
                                checkpoint_file=tmp_path / "ckpt.json")
        assert bucket.get_object("multi.bin") == data
        assert not http.is_closed
    finally:
        client.close()
    assert http.is_closed  # the sync Client closes it: its connections lived on its loop
    assert sorted(kind for kind, _ in seen) == sorted(  # type: ignore[unreachable]
        ["PUT object", "POST initiate", "PUT part", "PUT part", "POST complete", "GET object"])
    threads = {tid for _, tid in seen}
    assert len(threads) == 1 and threading.get_ident() not in threads
    assert statuses == [200] * len(seen)
    assert emu.get_object(BUCKET, "single.bin") == b"sync hooks"


async def test_sdk_built_http_client_trusts_env_and_is_closed_with_the_client(
    emu: OSSEmulator,
) -> None:
    client = AsyncClient(**client_args(emu))
    http = client.http_client
    try:
        assert isinstance(http, httpx.AsyncClient)
        assert http.trust_env is True
        assert http.follow_redirects is False
        assert not http.is_closed
        await client.get_bucket(BUCKET).put_object("k", b"v")
    finally:
        await client.aclose()
    assert http.is_closed
    assert emu.get_object(BUCKET, "k") == b"v"  # type: ignore[unreachable]


def test_sync_client_sdk_built_http_client_is_closed_with_it(emu: OSSEmulator) -> None:
    client = Client(**client_args(emu))
    http = client.http_client
    try:
        assert http.trust_env is True and not http.is_closed
        client.get_bucket(BUCKET).put_object("k", b"sync")
    finally:
        client.close()
    assert http.is_closed
    assert emu.get_object(BUCKET, "k") == b"sync"  # type: ignore[unreachable]


# --------------------------------------------------------------------------- argument checks


def _mock_transport() -> httpx.AsyncBaseTransport:
    return httpx.MockTransport(lambda request: httpx.Response(500))


@pytest.mark.parametrize(("kwargs", "named"), [
    (lambda: {"timeout": 5.0}, "timeout"),
    (lambda: {"max_connections": 4}, "max_connections"),
    (lambda: {"transport": _mock_transport()}, "transport"),
    (lambda: {"http_engine": "aiohttp"}, "http_engine"),
    (lambda: {"timeout": 5.0, "max_connections": 4}, "timeout, max_connections"),
], ids=["timeout", "max_connections", "transport", "http_engine", "two"])
async def test_http_client_with_sdk_client_options_is_a_type_error(
    kwargs: Callable[[], dict[str, Any]], named: str,
) -> None:
    async with httpx.AsyncClient() as http:
        with pytest.raises(TypeError) as info:
            AsyncClient("http://127.0.0.1:1", "id", "secret", region="cn-hangzhou",
                        http_client=http, **kwargs())
        # The message starts with the arguments given (its advice names them all).
        assert str(info.value).startswith(f"{named} configure the SDK's own httpx client")
        assert not http.is_closed


@pytest.mark.parametrize(("make", "match"), [
    (lambda: httpx.AsyncClient(auth=("a", "b")), "has auth set"),
    (lambda: httpx.AsyncClient(params={"a": "1"}), "has default params"),
    (lambda: httpx.AsyncClient(headers={"x-oss-meta-a": "b"}),
     re.escape("default headers ['x-oss-meta-a']")),
    (lambda: httpx.AsyncClient(headers={"Content-Type": "text/plain"}),
     re.escape("default headers ['content-type']")),
], ids=["auth", "params", "x-oss-header", "content-header"])
async def test_http_client_that_would_break_signing_is_a_value_error(
    make: Callable[[], httpx.AsyncClient], match: str,
) -> None:
    async with make() as http:
        with pytest.raises(ValueError, match=match):
            AsyncClient("http://127.0.0.1:1", "id", "secret", region="cn-hangzhou",
                        http_client=http)


async def test_closed_http_client_is_a_value_error() -> None:
    http = httpx.AsyncClient()
    await http.aclose()
    with pytest.raises(ValueError, match="http_client is closed"):
        AsyncClient("http://127.0.0.1:1", "id", "secret", region="cn-hangzhou",
                    http_client=http)


def test_sync_httpx_client_is_a_type_error() -> None:
    with httpx.Client() as http, pytest.raises(
        TypeError, match=re.escape("http_client must be an httpx.AsyncClient, not Client")
    ):
        AsyncClient("http://127.0.0.1:1", "id", "secret", region="cn-hangzhou",
                    http_client=http)  # type: ignore[arg-type]


def test_sync_client_raises_the_same_argument_errors() -> None:
    http = httpx.AsyncClient()
    try:
        with pytest.raises(TypeError) as info:
            Client("http://127.0.0.1:1", "id", "secret", region="cn-hangzhou",
                   http_client=http, timeout=5.0)
        assert str(info.value).startswith("timeout configure")
        assert not http.is_closed
    finally:
        anyio.run(http.aclose)
    with_auth = httpx.AsyncClient(auth=("a", "b"))
    try:
        with pytest.raises(ValueError, match="has auth set"):
            Client("http://127.0.0.1:1", "id", "secret", region="cn-hangzhou",
                   http_client=with_auth)
    finally:
        anyio.run(with_auth.aclose)


# --------------------------------------------------------------------------- aiohttp


def run_on_asyncio(fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    """aiohttp runs on asyncio only: run the test body there, whatever the suite's backend."""
    pytest.importorskip("httpx_aiohttp")
    anyio.run(fn, *args, backend="asyncio")


def engine_recorder(client: AsyncClient) -> list[bool]:
    """Record, per response, whether httpcore carried it (it reports a ``network_stream``;
    the aiohttp transport does not)."""
    via_httpcore: list[bool] = []

    async def on_response(response: httpx.Response) -> None:
        via_httpcore.append("network_stream" in response.extensions)

    client.http_client.event_hooks = {"response": [on_response]}
    return via_httpcore


def test_aiohttp_engine_signs_and_round_trips(emu: OSSEmulator, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = make_file(src, 3 * MiB + 11)

    async def body() -> None:
        async with AsyncClient(**client_args(emu), http_engine="aiohttp") as client:
            via_httpcore = engine_recorder(client)
            bucket = client.get_bucket(BUCKET)
            await bucket.put_object("file.bin", file=src)
            await bucket.put_object("bytes.bin", b"aiohttp bytes")
            await bucket.put_object("typed.txt", b"plain text",
                                    headers={"Content-Type": "text/plain"})
            result = await bucket.resumable_upload("multi.bin", src, part_size=MiB,
                                                   checkpoint_file=tmp_path / "ckpt.json")
            assert result.upload_id is not None and result.size == len(data)
            assert await bucket.get_object("multi.bin") == data
            assert await bucket.get_object("bytes.bin") == b"aiohttp bytes"
            assert (await bucket.head_object("typed.txt")).content_type == "text/plain"
        assert via_httpcore and not any(via_httpcore)
        assert client.http_client.is_closed

    run_on_asyncio(body)
    assert emu.get_object(BUCKET, "file.bin") == data
    assert emu.get_object(BUCKET, "multi.bin") == data
    assert emu.get_object(BUCKET, "bytes.bin") == b"aiohttp bytes"
    typed = emu.head_object(BUCKET, "typed.txt")
    assert typed is not None and typed.content_type == "text/plain"
    assert operations(emu)["UploadPart"] == 4
    assert all(r.status == 200 for r in emu.requests)  # no SignatureDoesNotMatch
    assert all("aiohttp/" in r.headers["user-agent"] for r in emu.requests)


def test_aiohttp_engine_trusts_ssl_cert_file(
    tls_emu: OSSEmulator, monkeypatch: pytest.MonkeyPatch,
) -> None:
    trust_ca(monkeypatch, tls_emu)

    async def body() -> None:
        async with AsyncClient(**client_args(tls_emu), http_engine="aiohttp") as client:
            via_httpcore = engine_recorder(client)
            bucket = client.get_bucket(BUCKET)
            await bucket.put_object("tls.bin", b"aiohttp over tls")
            assert await bucket.get_object("tls.bin") == b"aiohttp over tls"
        assert via_httpcore == [False, False]

    run_on_asyncio(body)
    assert tls_emu.get_object(BUCKET, "tls.bin") == b"aiohttp over tls"


@pytest.mark.usefixtures("untrusting_env")
def test_aiohttp_engine_untrusted_certificate_is_not_called_a_timeout(
    tls_emu: OSSEmulator,
) -> None:
    """httpx-aiohttp reports a failed certificate check as ConnectTimeout; the SDK says what
    it is, with the same hint as the default engine."""
    caught: list[RequestError] = []

    async def body() -> None:
        async with AsyncClient(**client_args(tls_emu), http_engine="aiohttp") as client:
            with pytest.raises(RequestError) as info:
                await client.get_bucket(BUCKET).put_object("k", b"never stored")
            caught.append(info.value)

    run_on_asyncio(body)
    message = str(caught[0])
    assert "timed out" not in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "certificate is not trusted" in message and "SSL_CERT_FILE" in message
    assert tls_emu.list_keys(BUCKET) == []


def test_aiohttp_engine_honours_http_proxy_from_env(
    emu: OSSEmulator, proxy: TestProxy, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)

    async def body() -> None:
        async with AsyncClient(**client_args(emu), http_engine="aiohttp") as client:
            bucket = client.get_bucket(BUCKET)
            await bucket.put_object("k", b"via the proxy")
            assert await bucket.get_object("k") == b"via the proxy"

    run_on_asyncio(body)
    assert emu.get_object(BUCKET, "k") == b"via the proxy"
    assert proxy.wait_idle()
    assert proxy.request_lines, "the aiohttp engine bypassed HTTP_PROXY"
    assert proxy.bytes_up >= len(b"via the proxy")


def test_aiohttp_engine_on_trio_says_asyncio_only(emu: OSSEmulator) -> None:
    pytest.importorskip("httpx_aiohttp")
    trio = pytest.importorskip("trio")

    async def body() -> None:
        async with AsyncClient(**client_args(emu), http_engine="aiohttp") as client:
            await client.get_bucket(BUCKET).put_object("k", b"never sent")

    with pytest.raises(RuntimeError) as info:
        trio.run(body)
    assert str(info.value) == ("http_engine='aiohttp' runs on asyncio only; on trio use the "
                               "default http_engine='httpx'")
    assert emu.requests == [] and emu.list_keys(BUCKET) == []


async def test_user_http_client_default_headers_are_sent_and_signing_still_holds(
    emu: OSSEmulator,
) -> None:
    """As with ``build_request``: the user's client headers go out with every request, the
    request's own (signed) headers win, and OSS accepts the signature."""
    seen: list[httpx.Headers] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request.headers)

    async with httpx.AsyncClient(
        headers={"X-Trace-Id": "trace-42", "User-Agent": "my-app/1.0"},
        event_hooks={"request": [record]},
    ) as http, AsyncClient(**client_args(emu), http_client=http) as client:
        bucket = client.get_bucket(BUCKET)
        await bucket.put_object("hdr.bin", b"with my headers")
        assert await bucket.get_object("hdr.bin") == b"with my headers"
    assert len(seen) == 2
    for headers in seen:
        assert headers["x-trace-id"] == "trace-42"
        assert headers["user-agent"].startswith("oss-callback/")  # the SDK's own wins
        assert headers["host"] == f"127.0.0.1:{emu.port}"
    assert emu.get_object(BUCKET, "hdr.bin") == b"with my headers"
