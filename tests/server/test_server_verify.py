"""oss_callback.server: verifying OSS's signed callback POSTs (PROTOCOL.md §2, §4.4).

Signatures are made here independently of the code under test (``_sign``); key fetching
is exercised against a real HTTP server on 127.0.0.1 that counts its hits.
"""

from __future__ import annotations

import base64
import contextlib
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import attrs
import httpx
import pytest
import respx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from starlette.datastructures import Headers as StarletteHeaders
from support.helpers import HTTPX_STOPPED_READ

import oss_callback
from oss_callback import server
from oss_callback.server import (
    CallbackBodyError,
    CallbackSignatureError,
    CallbackVerifier,
    PublicKeyFetchError,
    VerifiedCallback,
    callback_string_to_sign,
    verify_asgi,
)
from oss_callback.server._key_cache import _KeyCache

# --------------------------------------------------------------------------- §4.4 vector

DOC_PEM = b"""-----BEGIN PUBLIC KEY-----
MFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKs/JBGzwUB2aVht4crBx3oIPBLNsjGs
C0fTXv+nvlmklvkcolvpvXLTjaxUHR3W9LXxQ2EHXAJfCB+6H2YF1k8CAwEAAQ==
-----END PUBLIC KEY-----
"""
DOC_KEY_URL_B64 = "aHR0cDovL2dvc3NwdWJsaWMuYWxpY2RuLmNvbS9jYWxsYmFja19wdWJfa2V5X3YxLnBlbQ=="
DOC_KEY_URL = "http://gosspublic.alicdn.com/callback_pub_key_v1.pem"
DOC_SIGNATURE = (
    "kKQeGTRccDKyHB3H9vF+xYMSrmhMZjzzl2/kdD1ktNVgbWEfYTQG0G2SU/RaHBovRCE8OkQDjC3uG33esH2txA=="
)
DOC_PATH = "/index.php"
DOC_QUERY = "id=1&index=2"
DOC_BODY = b"bucket=yonghu-test"


def doc_headers(**overrides: str) -> dict[str, str]:
    headers = {
        "authorization": DOC_SIGNATURE,
        "x-oss-pub-key-url": DOC_KEY_URL_B64,
        "content-type": "application/x-www-form-urlencoded",
    }
    headers.update(overrides)
    return headers


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def pem_of(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _sign(key: rsa.RSAPrivateKey, signed_path: bytes, query: bytes, body: bytes) -> str:
    """MD5withRSA over ``signed_path [?query] \\n body``, as OSS does (made independently)."""
    message = signed_path + (b"?" + query if query else b"") + b"\n" + body
    signature = key.sign(message, padding.PKCS1v15(), hashes.MD5())
    return base64.b64encode(signature).decode()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def verify_in(mode: str, verifier: CallbackVerifier, *args: Any) -> VerifiedCallback:
    """``verifier.verify(*args)``, or ``verify_sync`` in a worker thread when mode is sync."""
    if mode == "async":
        return await verifier.verify(*args)
    return await anyio.to_thread.run_sync(verifier.verify_sync, *args)


def signed_headers(
    key: rsa.RSAPrivateKey,
    *,
    path: bytes = b"/cb",
    query: bytes = b"",
    body: bytes = b"bucket=b&object=o",
    key_url: str = "http://gosspublic.alicdn.com/callback_pub_key_v1.pem",
    content_type: str = "application/x-www-form-urlencoded",
) -> dict[str, str]:
    return {
        "authorization": _sign(key, path, query, body),
        "x-oss-pub-key-url": b64(key_url),
        "content-type": content_type,
    }


@attrs.define
class KeyServer:
    """A real HTTP server on 127.0.0.1: ``routes[path] = (status, body, headers, delay)``."""

    httpd: ThreadingHTTPServer
    routes: dict[str, tuple[int, bytes, dict[str, str], float]] = attrs.field(factory=dict)
    hits: list[str] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    closing: threading.Event = attrs.field(factory=threading.Event)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def serve(self, path: str, body: bytes, status: int = 200, *, delay: float = 0.0,
              headers: dict[str, str] | None = None) -> str:
        self.routes[path] = (status, body, dict(headers or {}), delay)
        return self.url(path)

    def hit_count(self, path: str | None = None) -> int:
        with self.lock:
            return len(self.hits) if path is None else self.hits.count(path)


def _handler(box: list[KeyServer]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ks = box[0]
            with ks.lock:
                ks.hits.append(self.path)
            status, body, headers, delay = ks.routes.get(self.path, (404, b"nope", {}, 0.0))
            if delay and ks.closing.wait(delay):
                return
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers and "no-length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    box: list[KeyServer] = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(box))
    httpd.daemon_threads = True
    ks = KeyServer(httpd=httpd)
    box.append(ks)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield ks
    finally:
        ks.closing.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# --------------------------------------------------------------------------- the vector


async def test_documented_vector_verifies_with_pinned_key() -> None:
    verifier = CallbackVerifier(public_key=DOC_PEM)
    cb = await verifier.verify("POST", DOC_PATH, DOC_QUERY, doc_headers(), DOC_BODY)
    assert isinstance(cb, VerifiedCallback)
    assert cb.fields == {"bucket": "yonghu-test"}
    assert cb.body == DOC_BODY
    assert cb.path == "/index.php"
    assert cb.query_string == "id=1&index=2"
    assert cb.query == {"id": "1", "index": "2"}
    assert cb.method == "POST"
    assert cb.content_type == "application/x-www-form-urlencoded"
    assert cb.key_url is None  # pinned: the header is not used


def test_documented_vector_verifies_sync_and_with_a_full_target() -> None:
    verifier = CallbackVerifier(public_key=DOC_PEM.decode())  # PEM as str
    cb = verifier.verify_sync("post", "/index.php?id=1&index=2", "", doc_headers(), DOC_BODY)
    assert cb.query == {"id": "1", "index": "2"}
    assert cb.fields["bucket"] == "yonghu-test"


def test_string_to_sign_matches_the_documented_one() -> None:
    assert callback_string_to_sign(DOC_PATH, DOC_QUERY, DOC_BODY) == (
        b"/index.php?id=1&index=2\nbucket=yonghu-test"
    )
    assert callback_string_to_sign("/a%20b", "", b"x") == b"/a b\nx"
    assert callback_string_to_sign(b"/a%2Bb", b"q=%2B", b"") == b"/a+b?q=%2B\n"


@respx.mock(assert_all_mocked=True, assert_all_called=False)
async def test_documented_vector_verifies_with_the_key_fetched_from_gosspublic(
    respx_mock: respx.MockRouter,
) -> None:
    # The documented header says http://; the key is fetched over https all the same.
    https_url = DOC_KEY_URL.replace("http://", "https://")
    route = respx_mock.get(https_url).mock(return_value=httpx.Response(200, content=DOC_PEM))
    plain = respx_mock.get(DOC_KEY_URL).mock(return_value=httpx.Response(200, content=DOC_PEM))
    verifier = CallbackVerifier()  # default: gosspublic.alicdn.com only
    for _ in range(3):
        cb = await verifier.verify("POST", DOC_PATH, DOC_QUERY, doc_headers(), DOC_BODY)
        assert cb.key_url == https_url
    assert route.call_count == 1  # cached
    assert not plain.called


@pytest.mark.parametrize(
    ("path", "query", "body"),
    [
        pytest.param("/index.phq", DOC_QUERY, DOC_BODY, id="path"),
        pytest.param("/index.php/", DOC_QUERY, DOC_BODY, id="path-suffix"),
        pytest.param(DOC_PATH, "id=1&index=3", DOC_BODY, id="query"),
        pytest.param(DOC_PATH, "", DOC_BODY, id="query-dropped"),
        pytest.param(DOC_PATH, "id=1&index=2&x=1", DOC_BODY, id="query-extended"),
        pytest.param(DOC_PATH, DOC_QUERY, b"bucket=yonghu-tesu", id="body"),
        pytest.param(DOC_PATH, DOC_QUERY, DOC_BODY + b"\n", id="body-trailing-newline"),
        pytest.param(DOC_PATH, DOC_QUERY, b"", id="body-empty"),
    ],
)
async def test_tampered_request_fails(path: str, query: str, body: bytes) -> None:
    verifier = CallbackVerifier(public_key=DOC_PEM)
    with pytest.raises(CallbackSignatureError) as info:
        await verifier.verify("POST", path, query, doc_headers(), body)
    assert info.value.reason == "bad_signature"
    assert type(info.value) is CallbackSignatureError


async def test_tampered_signature_fails() -> None:
    raw = bytearray(base64.b64decode(DOC_SIGNATURE))
    raw[10] ^= 0x01
    forged = base64.b64encode(bytes(raw)).decode()
    verifier = CallbackVerifier(public_key=DOC_PEM)
    with pytest.raises(CallbackSignatureError) as info:
        await verifier.verify("POST", DOC_PATH, DOC_QUERY, doc_headers(authorization=forged),
                              DOC_BODY)
    assert info.value.reason == "bad_signature"


async def test_signature_from_another_key_fails(private_key: rsa.RSAPrivateKey) -> None:
    headers = signed_headers(private_key, path=b"/index.php", query=b"id=1&index=2",
                             body=DOC_BODY)
    with pytest.raises(CallbackSignatureError, match="does not match"):
        await CallbackVerifier(public_key=DOC_PEM).verify(
            "POST", DOC_PATH, DOC_QUERY, headers, DOC_BODY
        )
    # ...while the right key accepts the very same request.
    cb = await CallbackVerifier(public_key=pem_of(private_key)).verify(
        "POST", DOC_PATH, DOC_QUERY, headers, DOC_BODY
    )
    assert cb.fields == {"bucket": "yonghu-test"}


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        pytest.param({"x-oss-pub-key-url": DOC_KEY_URL_B64}, "missing_signature", id="missing"),
        pytest.param({"authorization": "not base64!!"}, "malformed_signature", id="not-b64"),
        pytest.param({"authorization": ""}, "malformed_signature", id="empty"),
        pytest.param({"authorization": "OSS ak:sig"}, "malformed_signature", id="oss-v1-style"),
    ],
)
async def test_missing_or_malformed_signature(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(CallbackSignatureError) as info:
        await CallbackVerifier(public_key=DOC_PEM).verify(
            "POST", DOC_PATH, DOC_QUERY, headers, DOC_BODY
        )
    assert info.value.reason == reason


async def test_repeated_authorization_headers_are_refused() -> None:
    raw = [
        (b"authorization", DOC_SIGNATURE.encode()),
        (b"authorization", DOC_SIGNATURE.encode()),
    ]
    with pytest.raises(CallbackSignatureError) as info:
        await CallbackVerifier(public_key=DOC_PEM).verify("POST", DOC_PATH, DOC_QUERY, raw,
                                                          DOC_BODY)
    assert info.value.reason == "malformed_signature"


@pytest.mark.parametrize("method", ["GET", "PUT", "HEAD"])
async def test_only_post_is_accepted(method: str) -> None:
    with pytest.raises(CallbackSignatureError) as info:
        await CallbackVerifier(public_key=DOC_PEM).verify(
            method, DOC_PATH, DOC_QUERY, doc_headers(), DOC_BODY
        )
    assert info.value.reason == "method_not_allowed"


# --------------------------------------------------------------------------- headers


def _header_variants() -> list[Any]:
    upper = {k.upper(): v for k, v in doc_headers().items()}
    mixed = {"Authorization": DOC_SIGNATURE, "X-Oss-Pub-Key-Url": DOC_KEY_URL_B64,
             "Content-Type": "application/x-www-form-urlencoded"}
    raw = [(k.encode(), v.encode()) for k, v in mixed.items()]
    return [
        pytest.param(upper, id="upper-dict"),
        pytest.param(mixed, id="mixed-dict"),
        pytest.param(raw, id="asgi-raw-pairs"),
        pytest.param(httpx.Headers(mixed), id="httpx-headers"),
        pytest.param(StarletteHeaders(raw=raw), id="starlette-headers"),
    ]


@pytest.mark.parametrize("headers", _header_variants())
async def test_header_names_are_case_insensitive(headers: Any) -> None:
    cb = await CallbackVerifier(public_key=DOC_PEM).verify(
        "POST", DOC_PATH, DOC_QUERY, headers, DOC_BODY
    )
    assert cb.fields == {"bucket": "yonghu-test"}
    assert cb.headers["AUTHORIZATION"] == DOC_SIGNATURE
    assert cb.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "X-OSS-PUB-KEY-URL" in cb.headers


def test_verified_callback_is_frozen_and_has_helpers() -> None:
    cb = CallbackVerifier(public_key=DOC_PEM).verify_sync(
        "POST", DOC_PATH, DOC_QUERY, doc_headers(), DOC_BODY
    )
    assert cb.get("bucket") == "yonghu-test"
    assert cb.get("missing") is None
    assert cb.get("missing", "x") == "x"
    assert cb["bucket"] == "yonghu-test"
    assert "bucket" in cb
    assert "object" not in cb
    with pytest.raises(KeyError):
        cb["object"]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cb.body = b"other"  # type: ignore[misc]


# --------------------------------------------------------------------------- the + pitfall


@pytest.mark.parametrize(
    ("raw_path", "signed_as", "verified_path"),
    [
        pytest.param(b"/up+load", b"/up load", "/up load", id="plus-as-space"),
        pytest.param(b"/up+load", b"/up+load", "/up+load", id="plus-kept"),
        pytest.param(b"/up%2Bload", b"/up+load", "/up+load", id="encoded-plus"),
        pytest.param(b"/a%20b/%E6%9D%AD", "/a b/杭".encode(), "/a b/杭", id="percent-utf8"),
    ],
)
async def test_path_is_percent_decoded_both_ways(
    private_key: rsa.RSAPrivateKey, raw_path: bytes, signed_as: bytes, verified_path: str
) -> None:
    body = b"object=o"
    headers = signed_headers(private_key, path=signed_as, body=body)
    verifier = CallbackVerifier(public_key=pem_of(private_key))
    cb = await verifier.verify("POST", raw_path, b"", headers, body)
    assert cb.path == verified_path


async def test_encoded_plus_is_not_read_as_a_space(private_key: rsa.RSAPrivateKey) -> None:
    body = b"object=o"
    headers = signed_headers(private_key, path=b"/up load", body=body)
    verifier = CallbackVerifier(public_key=pem_of(private_key))
    with pytest.raises(CallbackSignatureError):  # %2B is a literal '+', never a space
        await verifier.verify("POST", b"/up%2Bload", b"", headers, body)


async def test_query_is_not_decoded(private_key: rsa.RSAPrivateKey) -> None:
    body = b"object=o"
    headers = signed_headers(private_key, path=b"/cb", query=b"name=%E6%9D%AD&a=b+c", body=body)
    verifier = CallbackVerifier(public_key=pem_of(private_key))
    cb = await verifier.verify("POST", "/cb", "name=%E6%9D%AD&a=b+c", headers, body)
    assert cb.query == {"name": "杭", "a": "b c"}
    assert cb.query_string == "name=%E6%9D%AD&a=b+c"
    with pytest.raises(CallbackSignatureError):
        await verifier.verify("POST", "/cb", "name=杭&a=b+c", headers, body)


# --------------------------------------------------------------------------- body parsing


@pytest.mark.parametrize(
    ("content_type", "body", "fields"),
    [
        pytest.param(
            "application/x-www-form-urlencoded",
            b"bucket=b&object=a%2Fb.txt&size=5&x%3Auid=42&empty=&mimeType=text%2Fplain",
            {"bucket": "b", "object": "a/b.txt", "size": "5", "x:uid": "42", "empty": "",
             "mimeType": "text/plain"},
            id="form",
        ),
        pytest.param("application/x-www-form-urlencoded; charset=utf-8",
                     b"name=%E6%9D%AD+%E5%B7%9E", {"name": "杭 州"}, id="form-charset"),
        pytest.param("", b"bucket=b", {"bucket": "b"}, id="no-content-type-is-form"),
        pytest.param(
            "application/json",
            b'{"bucket":"b","object":"o","size":"5","nested":{"a":[1,2]}}',
            {"bucket": "b", "object": "o", "size": "5", "nested": {"a": [1, 2]}},
            id="json",
        ),
        pytest.param("Application/JSON; charset=UTF-8", '{"name":"杭州"}'.encode(),
                     {"name": "杭州"}, id="json-charset-case"),
        pytest.param("text/plain", b"hello", {}, id="other-type"),
    ],
)
async def test_body_is_parsed_by_content_type(
    private_key: rsa.RSAPrivateKey, content_type: str, body: bytes, fields: dict[str, Any]
) -> None:
    headers = signed_headers(private_key, body=body, content_type=content_type)
    if not content_type:
        del headers["content-type"]
    cb = await CallbackVerifier(public_key=pem_of(private_key)).verify(
        "POST", "/cb", "", headers, body
    )
    assert cb.fields == fields
    assert cb.body == body
    assert cb.content_type == content_type.split(";")[0].strip().lower()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("application/json", b"[1, 2]", id="json-array"),
        pytest.param("application/json", b'"text"', id="json-string"),
        pytest.param("application/json", b'{"a":', id="json-truncated"),
        pytest.param("application/json", b"\xff\xfe\x00", id="json-binary"),
        pytest.param("application/x-www-form-urlencoded", b"a=\xff\xfe", id="form-not-utf8"),
        pytest.param("application/x-www-form-urlencoded", b"a=%FF", id="form-escape-not-utf8"),
    ],
)
async def test_malformed_body_is_refused_after_verification(
    private_key: rsa.RSAPrivateKey, content_type: str, body: bytes
) -> None:
    headers = signed_headers(private_key, body=body, content_type=content_type)
    with pytest.raises(CallbackBodyError) as info:
        await CallbackVerifier(public_key=pem_of(private_key)).verify(
            "POST", "/cb", "", headers, body
        )
    assert info.value.reason == "malformed_body"


async def test_body_size_limit(private_key: rsa.RSAPrivateKey, key_server: KeyServer) -> None:
    url = key_server.serve("/k.pem", pem_of(private_key))
    verifier = CallbackVerifier(allowed_key_hosts=(key_server.host,), max_body_size=16)
    ok = b"a=" + b"x" * 14
    cb = await verifier.verify("POST", "/cb", "", signed_headers(private_key, body=ok,
                                                                 key_url=url), ok)
    assert cb.fields == {"a": "x" * 14}
    assert key_server.hit_count() == 1
    verifier.clear_key_cache()

    big = ok + b"x"
    with pytest.raises(CallbackBodyError) as info:
        await verifier.verify("POST", "/cb", "", signed_headers(private_key, body=big,
                                                                key_url=url), big)
    assert info.value.reason == "body_too_large"
    assert key_server.hit_count() == 1  # refused before the key was fetched


def test_default_body_limit_is_one_mib() -> None:
    assert CallbackVerifier().max_body_size == 1024 * 1024
    with pytest.raises(CallbackBodyError):
        CallbackVerifier(public_key=DOC_PEM).verify_sync(
            "POST", DOC_PATH, DOC_QUERY, doc_headers(), b"x" * (1024 * 1024 + 1)
        )


# --------------------------------------------------------------------------- allowed key hosts


async def test_key_url_on_another_host_makes_no_request(
    private_key: rsa.RSAPrivateKey, key_server: KeyServer
) -> None:
    url = key_server.serve("/k.pem", pem_of(private_key))
    headers = signed_headers(private_key, key_url=url)
    verifier = CallbackVerifier()  # only gosspublic.alicdn.com
    with pytest.raises(CallbackSignatureError) as info:
        await verifier.verify("POST", "/cb", "", headers, b"bucket=b&object=o")
    assert info.value.reason == "key_url_not_allowed"
    assert type(info.value) is CallbackSignatureError
    with pytest.raises(CallbackSignatureError):
        verifier.verify_sync("POST", "/cb", "", headers, b"bucket=b&object=o")
    # Same host, another port: still not allowed.
    other_port = CallbackVerifier(allowed_key_hosts=("127.0.0.1:1",))
    with pytest.raises(CallbackSignatureError, match="not under an allowed prefix"):
        await other_port.verify("POST", "/cb", "", headers, b"bucket=b&object=o")
    assert key_server.hit_count() == 0


@pytest.mark.parametrize(
    "key_url",
    [
        "http://gosspublic.alicdn.com.evil.example/k.pem",
        "http://gosspublic.alicdn.com@evil.example/k.pem",
        "http://gosspublic.alicdn.com:80@evil.example/k.pem",
        "http://evil.example/http://gosspublic.alicdn.com/k.pem",
        "https://gosspublic.alicdn.com",
        "http://gosspublic.alicdn.com:8080/k.pem",
        "ftp://gosspublic.alicdn.com/k.pem",
        "//gosspublic.alicdn.com/k.pem",
        "http://gosspublic.alicdn.com\\@evil.example/k.pem",
        "http://gosspublic.alicdn.com/k.pem\r\nHost: evil.example",
        "http://gosspublic.alicdn.com/ k.pem",
        "http://GOSSPUBLIC.ALICDN.COM/k.pem",
        "file:///etc/passwd",
    ],
)
@respx.mock(assert_all_mocked=True, assert_all_called=False)
async def test_disallowed_key_urls_are_refused_without_a_request(
    respx_mock: respx.MockRouter, private_key: rsa.RSAPrivateKey, key_url: str
) -> None:
    anything = respx_mock.route().mock(
        return_value=httpx.Response(200, content=pem_of(private_key))
    )
    headers = signed_headers(private_key, key_url=key_url)
    verifier = CallbackVerifier()
    with pytest.raises(CallbackSignatureError) as info:
        await verifier.verify("POST", "/cb", "", headers, b"bucket=b&object=o")
    assert info.value.reason == "key_url_not_allowed"
    assert not verifier.is_key_url_allowed(key_url)
    assert not anything.called


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        pytest.param(None, "missing_key_url", id="missing"),
        pytest.param("%%%", "malformed_key_url", id="not-b64"),
        pytest.param(base64.b64encode("http://gosspublic.alicdn.com/ä".encode()).decode(),
                     "malformed_key_url", id="not-ascii"),
    ],
)
async def test_missing_or_malformed_key_url(
    private_key: rsa.RSAPrivateKey, header: str | None, reason: str
) -> None:
    headers = signed_headers(private_key)
    if header is None:
        del headers["x-oss-pub-key-url"]
    else:
        headers["x-oss-pub-key-url"] = header
    with pytest.raises(CallbackSignatureError) as info:
        await CallbackVerifier().verify("POST", "/cb", "", headers, b"bucket=b&object=o")
    assert info.value.reason == reason


def test_allowed_key_hosts_forms() -> None:
    default = CallbackVerifier()
    assert default.key_url_prefixes == ("http://gosspublic.alicdn.com/",
                                        "https://gosspublic.alicdn.com/")
    assert default.is_key_url_allowed("https://gosspublic.alicdn.com/callback_pub_key_v1.pem")
    assert default.is_key_url_allowed(DOC_KEY_URL)
    assert default.key_fetch_url(DOC_KEY_URL) == (
        "https://gosspublic.alicdn.com/callback_pub_key_v1.pem")  # http is upgraded
    assert not default.is_key_url_allowed("https://gosspublic.alicdn.com/k.pem")  # OSS path only

    custom = CallbackVerifier(
        allowed_key_hosts=("127.0.0.1:9000", "https://keys.example.com/oss/",
                           "http://[::1]:8080")
    )
    assert custom.key_url_prefixes == (
        "http://127.0.0.1:9000/", "https://127.0.0.1:9000/",
        "https://keys.example.com/oss/", "http://[::1]:8080/",
    )
    assert custom.is_key_url_allowed("http://127.0.0.1:9000/_emulator/key.pem")
    assert custom.is_key_url_allowed("https://keys.example.com/oss/v1.pem")
    assert custom.is_key_url_allowed("http://[::1]:8080/k.pem")
    assert not custom.is_key_url_allowed("http://keys.example.com/oss/v1.pem")  # scheme
    assert not custom.is_key_url_allowed("https://keys.example.com/other/v1.pem")
    assert not custom.is_key_url_allowed("http://127.0.0.1:90001/k.pem")
    assert not custom.is_key_url_allowed("http://127.0.0.1/k.pem")

    single = CallbackVerifier(allowed_key_hosts="keys.example.com")  # a str is one entry
    assert single.allowed_key_hosts == ("keys.example.com",)
    assert CallbackVerifier(allowed_key_hosts=()).key_url_prefixes == ()


@pytest.mark.parametrize(
    "entry",
    ["", " gosspublic.alicdn.com", "user@host", "host/path", "ftp://host/",
     "https://user@host/", "https://host/?q=1", "https://host/#f", "host:port"],
)
def test_bad_allowed_key_hosts_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="allowed_key_hosts"):
        CallbackVerifier(allowed_key_hosts=(entry,))


def test_constructor_validation(private_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="public_key"):
        CallbackVerifier(public_key=b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="RSA"):
        CallbackVerifier(public_key=ec_pem)
    with pytest.raises(TypeError, match="public_key"):
        CallbackVerifier(public_key=42)  # type: ignore[arg-type]
    for name in ("max_body_size", "max_key_size", "fetch_timeout"):
        with pytest.raises(ValueError, match=name):
            CallbackVerifier(**{name: 0})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key_cache_size"):
        CallbackVerifier(key_cache_size=-1)
    # A loaded key and DER bytes are accepted too, and the repr shows no key material.
    loaded = CallbackVerifier(public_key=private_key.public_key())
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert CallbackVerifier(public_key=der).public_key is not None
    assert "<RSAPublicKey 1024 bits>" in repr(loaded)
    assert "BEGIN" not in repr(loaded)


# --------------------------------------------------------------------------- fetching + cache


async def test_cached_key_is_fetched_once_for_many_callbacks(
    private_key: rsa.RSAPrivateKey, key_server: KeyServer
) -> None:
    url = key_server.serve("/callback_pub_key_v1.pem", pem_of(private_key))
    verifier = CallbackVerifier(allowed_key_hosts=(key_server.host,))
    for i in range(20):
        body = f"bucket=b&object=o{i}".encode()
        cb = await verifier.verify("POST", "/cb", "", signed_headers(private_key, body=body,
                                                                     key_url=url), body)
        assert cb.fields["object"] == f"o{i}"
        assert cb.key_url == url
    # The blocking twin shares the cache.
    body = b"bucket=b&object=sync"
    cb = verifier.verify_sync("POST", "/cb", "", signed_headers(private_key, body=body,
                                                                key_url=url), body)
    assert cb.fields["object"] == "sync"
    assert key_server.hit_count("/callback_pub_key_v1.pem") == 1


async def test_concurrent_callbacks_share_one_fetch(
    private_key: rsa.RSAPrivateKey, key_server: KeyServer
) -> None:
    url = key_server.serve("/k.pem", pem_of(private_key), delay=0.3)
    verifier = CallbackVerifier(allowed_key_hosts=(key_server.host,))
    results: list[VerifiedCallback] = []

    async def one(i: int) -> None:
        body = f"object=o{i}".encode()
        results.append(await verifier.verify(
            "POST", "/cb", "", signed_headers(private_key, body=body, key_url=url), body
        ))

    async with anyio.create_task_group() as tg:
        for i in range(15):
            tg.start_soon(one, i)
    assert sorted(r.fields["object"] for r in results) == sorted(f"o{i}" for i in range(15))
    assert key_server.hit_count() == 1


async def test_concurrent_callbacks_share_one_failure(
    private_key: rsa.RSAPrivateKey, key_server: KeyServer
) -> None:
    url = key_server.serve("/k.pem", b"gone", status=503, delay=0.3)
    verifier = CallbackVerifier(allowed_key_hosts=(key_server.host,))
    errors: list[BaseException] = []

    async def one() -> None:
        body = b"object=o"
        try:
            await verifier.verify("POST", "/cb", "",
                                  signed_headers(private_key, body=body, key_url=url), body)
        except CallbackSignatureError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(one)
    assert len(errors) == 8
    assert all(isinstance(e, PublicKeyFetchError) and e.reason == "key_fetch_failed"
               for e in errors)
    assert key_server.hit_count() == 1


async def test_different_key_urls_are_cached_separately_and_lru_bounded(
    private_key: rsa.RSAPrivateKey, key_server: KeyServer
) -> None:
    urls = [key_server.serve(f"/k{i}.pem", pem_of(private_key)) for i in range(3)]
    verifier = CallbackVerifier(allowed_key_hosts=(key_server.host,), key_cache_size=2)
    body = b"object=o"

    async def check(url: str) -> None:
        await verifier.verify("POST", "/cb", "",
                              signed_headers(private_key, body=body, key_url=url), body)

    for url in urls:  # k0, k1, k2: k0 is evicted
        await check(url)
    await check(urls[2])
    await check(urls[1])
    assert key_server.hit_count() == 3
    await check(urls[0])
    assert key_server.hit_count("/k0.pem") == 2


async def test_ttl_zero_disables_the_cache(
    private_key: rsa.RSAPrivateKey, key_server: KeyServer
) -> None:
    url = key_server.serve("/k.pem", pem_of(private_key))
    verifier = CallbackVerifier(allowed_key_hosts=(key_server.host,), key_cache_ttl=0)
    body = b"object=o"
    for _ in range(3):
        await verifier.verify("POST", "/cb", "",
                              signed_headers(private_key, body=body, key_url=url), body)
    assert key_server.hit_count() == 3


async def test_expired_key_is_refetched_and_used_stale_if_refresh_fails(
    private_key: rsa.RSAPrivateKey, key_server: KeyServer
) -> None:
    url = key_server.serve("/k.pem", pem_of(private_key))
    verifier = CallbackVerifier(allowed_key_hosts=(key_server.host,), key_cache_ttl=0.2)
    body = b"object=o"
    headers = signed_headers(private_key, body=body, key_url=url)
    await verifier.verify("POST", "/cb", "", headers, body)
    await verifier.verify("POST", "/cb", "", headers, body)
    assert key_server.hit_count() == 1
    await anyio.sleep(0.3)
    await verifier.verify("POST", "/cb", "", headers, body)
    assert key_server.hit_count() == 2  # expired -> fetched again

    key_server.serve("/k.pem", b"down", status=500)
    await anyio.sleep(0.3)
    cb = await verifier.verify("POST", "/cb", "", headers, body)  # refresh fails: stale key
    assert cb.fields == {"object": "o"}
    cb = verifier.verify_sync("POST", "/cb", "", headers, body)
    assert cb.fields == {"object": "o"}
    assert key_server.hit_count() == 3  # the failed refresh is remembered, not retried


def test_key_cache_lru_and_expiry_with_a_fake_clock(private_key: rsa.RSAPrivateKey) -> None:
    now = [100.0]
    cache = _KeyCache(maxsize=2, ttl=10.0, clock=lambda: now[0])
    k = private_key.public_key()
    cache.put("a", k)
    cache.put("b", k)
    assert cache.get("a") is k  # a is now the most recent
    cache.put("c", k)  # evicts b
    assert cache.get("b") is None
    assert cache.get_stale("b") is None
    assert len(cache) == 2
    now[0] = 109.9
    assert cache.get("a") is k
    now[0] = 110.0
    assert cache.get("a") is None  # expired
    assert cache.get_stale("a") is k  # kept for the stale fallback
    cache.clear()
    assert len(cache) == 0
    disabled = _KeyCache(maxsize=0, ttl=10.0)
    disabled.put("a", k)
    assert disabled.get("a") is None


@pytest.mark.parametrize(
    ("status", "body", "headers", "reason"),
    [
        pytest.param(404, b"not found", {}, "key_fetch_failed", id="404"),
        pytest.param(500, b"oops", {}, "key_fetch_failed", id="500"),
        pytest.param(200, b"", {}, "key_invalid", id="empty"),
        pytest.param(200, b"<html>not a key</html>", {}, "key_invalid", id="html"),
        pytest.param(200, b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", {},
                     "key_invalid", id="broken-pem"),
        pytest.param(200, b"A" * 20_000, {}, "key_too_large", id="oversized-with-length"),
        pytest.param(200, b"A" * 20_000, {"no-length": "1", "Connection": "close"},
                     "key_too_large", id="oversized-without-length"),
        pytest.param(200, b"x", {"Content-Length": "999999"}, "key_too_large",
                     id="declared-oversized"),
    ],
)
@HTTPX_STOPPED_READ
@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_key_fetch_failures_are_errors_not_crashes(
    private_key: rsa.RSAPrivateKey,
    key_server: KeyServer,
    status: int,
    body: bytes,
    headers: dict[str, str],
    reason: str,
    mode: str,
) -> None:
    url = key_server.serve("/k.pem", body, status=status, headers=headers)
    verifier = CallbackVerifier(allowed_key_hosts=(key_server.host,))
    cb_body = b"object=o"
    cb_headers = signed_headers(private_key, body=cb_body, key_url=url)
    with pytest.raises(PublicKeyFetchError) as info:
        await verify_in(mode, verifier, "POST", "/cb", "", cb_headers, cb_body)
    assert info.value.reason == reason
    assert isinstance(info.value, CallbackSignatureError)
    assert key_server.hit_count() == 1
    # The failure is remembered (key_failure_ttl): the next callback fails without a fetch...
    key_server.serve("/k.pem", pem_of(private_key))
    with pytest.raises(PublicKeyFetchError) as again:
        await verify_in(mode, verifier, "POST", "/cb", "", cb_headers, cb_body)
    assert again.value.reason == reason
    assert key_server.hit_count() == 1
    # ...until it is forgotten: then the key is fetched again and the callback goes through.
    verifier.clear_key_cache()
    cb = await verifier.verify("POST", "/cb", "", cb_headers, cb_body)
    assert cb.fields == {"object": "o"}
    assert key_server.hit_count() == 2


async def test_non_rsa_key_is_refused(key_server: KeyServer, private_key: rsa.RSAPrivateKey
                                      ) -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    url = key_server.serve("/k.pem", ec_pem)
    body = b"object=o"
    with pytest.raises(PublicKeyFetchError) as info:
        await CallbackVerifier(allowed_key_hosts=(key_server.host,)).verify(
            "POST", "/cb", "", signed_headers(private_key, body=body, key_url=url), body
        )
    assert info.value.reason == "key_invalid"


async def test_redirects_are_not_followed(
    private_key: rsa.RSAPrivateKey, key_server: KeyServer
) -> None:
    target = key_server.serve("/real.pem", pem_of(private_key))
    url = key_server.serve("/k.pem", b"", status=302, headers={"Location": target})
    body = b"object=o"
    with pytest.raises(PublicKeyFetchError) as info:
        await CallbackVerifier(allowed_key_hosts=(key_server.host,)).verify(
            "POST", "/cb", "", signed_headers(private_key, body=body, key_url=url), body
        )
    assert info.value.reason == "key_fetch_failed"
    assert key_server.hit_count("/real.pem") == 0


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_slow_key_server_times_out(
    private_key: rsa.RSAPrivateKey, key_server: KeyServer, mode: str
) -> None:
    url = key_server.serve("/k.pem", pem_of(private_key), delay=5)
    verifier = CallbackVerifier(allowed_key_hosts=(key_server.host,), fetch_timeout=0.3)
    body = b"object=o"
    headers = signed_headers(private_key, body=body, key_url=url)
    started = time.monotonic()
    with pytest.raises(PublicKeyFetchError, match="fetching the public key") as info:
        await verify_in(mode, verifier, "POST", "/cb", "", headers, body)
    assert info.value.reason == "key_fetch_failed"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_unreachable_key_host_is_an_error(private_key: rsa.RSAPrivateKey, mode: str
                                                ) -> None:
    import socket

    with socket.socket() as sock:  # a port that is certainly closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/k.pem"
    body = b"object=o"
    verifier = CallbackVerifier(allowed_key_hosts=(f"127.0.0.1:{port}",))
    headers = signed_headers(private_key, body=body, key_url=url)
    with pytest.raises(PublicKeyFetchError) as info:
        await verify_in(mode, verifier, "POST", "/cb", "", headers, body)
    assert info.value.reason == "key_fetch_failed"
    assert "ConnectError" in str(info.value)


async def test_error_messages_carry_no_key_material(
    private_key: rsa.RSAPrivateKey, key_server: KeyServer
) -> None:
    pem = pem_of(private_key)
    url = key_server.serve("/k.pem", pem)
    body = b"object=o"
    headers = signed_headers(private_key, body=body, key_url=url)
    verifier = CallbackVerifier(allowed_key_hosts=(key_server.host,))
    with pytest.raises(CallbackSignatureError) as info:
        await verifier.verify("POST", "/cb", "", headers, body + b"!")
    text = str(info.value) + repr(info.value)
    assert headers["authorization"] not in text
    assert b"BEGIN" not in text.encode()
    assert pem.split(b"\n")[1].decode() not in text


# --------------------------------------------------------------------------- ASGI helper


async def test_verify_asgi_reads_the_body_and_verifies(private_key: rsa.RSAPrivateKey) -> None:
    body = b"bucket=b&object=a+b"
    headers = signed_headers(private_key, path=b"/oss cb", query=b"x=1", body=body)
    messages = [
        {"type": "http.request", "body": body[:5], "more_body": True},
        {"type": "http.request", "body": body[5:], "more_body": False},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    scope = {
        "type": "http", "method": "POST", "path": "/oss cb", "raw_path": b"/oss%20cb",
        "query_string": b"x=1",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }
    cb = await verify_asgi(CallbackVerifier(public_key=pem_of(private_key)), scope, receive)
    assert cb.fields == {"bucket": "b", "object": "a b"}
    assert cb.path == "/oss cb"
    assert messages == []


async def test_verify_asgi_refuses_a_declared_oversized_body_without_reading() -> None:
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/cb", "raw_path": b"/cb",
             "query_string": b"", "headers": [(b"content-length", b"2000000")]}
    with pytest.raises(CallbackBodyError) as info:
        await verify_asgi(CallbackVerifier(public_key=DOC_PEM), scope, receive)
    assert info.value.reason == "body_too_large"
    assert calls == 0


async def test_verify_asgi_stops_reading_an_undeclared_oversized_body() -> None:
    calls = 0

    async def receive() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    scope = {"type": "http", "method": "POST", "path": "/cb", "query_string": b"",
             "headers": []}
    with pytest.raises(CallbackBodyError):
        await verify_asgi(CallbackVerifier(public_key=DOC_PEM, max_body_size=4096), scope,
                          receive)
    assert calls == 5


# --------------------------------------------------------------------------- the surface


def test_public_names() -> None:
    assert set(server.__all__) == {
        "CONFIRMABLE_FIELDS", "DEFAULT_KEY_HOSTS", "BodyType", "CallbackBodyError",
        "CallbackNotConfirmedError", "CallbackSignatureError", "CallbackVerifier",
        "PublicKeyFetchError", "Reason", "VerifiedCallback", "callback_string_to_sign",
        "verify_asgi", "verify_starlette_request",
    }
    for name in server.__all__:
        assert getattr(server, name) is not None


def test_error_tree_and_pickling() -> None:
    assert issubclass(CallbackSignatureError, oss_callback.ClientError)
    assert issubclass(CallbackSignatureError, oss_callback.OSSError)
    assert issubclass(PublicKeyFetchError, CallbackSignatureError)
    assert issubclass(CallbackBodyError, CallbackSignatureError)
    assert issubclass(server.CallbackNotConfirmedError, CallbackSignatureError)
    for cls in (CallbackSignatureError, PublicKeyFetchError, CallbackBodyError,
                server.CallbackNotConfirmedError):
        err = cls("boom", reason="key_too_large")
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is cls
        assert copy.reason == "key_too_large"
        assert str(copy) == "boom"


def test_missing_cryptography_gives_an_import_error_naming_the_extra() -> None:
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "try:\n"
        "    import oss_callback.server\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    print('imported')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "pip install 'oss-callback[server]'" in out
