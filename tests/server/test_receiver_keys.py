"""Issue #14 (items 4, 6, 8, 9): the verifier's public-key handling and body-type checks.

* OSS's key host: https only, only ``/callback_pub_key_v<N>.pem``, no query or fragment.
* A failed fetch is remembered (no refetch storm); junk URLs can't flush the real key.
* An oversized signature is refused before anything is fetched.
* ``verify_sync`` locks per URL: a stuck key server delays only callbacks needing its key.
* ``Content-Type`` is not signed: ``expected_body_type=`` and the JSON-as-form refusal.

Key servers are real HTTP servers on 127.0.0.1 (threads) that count their hits; OSS's own
host is mocked with respx (no request leaves the machine).
"""

from __future__ import annotations

import base64
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
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from oss_callback.server import (
    CallbackBodyError,
    CallbackSignatureError,
    CallbackVerifier,
    PublicKeyFetchError,
    VerifiedCallback,
)
from oss_callback.server._key_cache import _FailureCache, _KeyCache
from oss_callback.server._key_policy import _HOST_ENTRY, _OSS_KEY_URL

OSS_KEY = "https://gosspublic.alicdn.com/callback_pub_key_v1.pem"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
BODY = b"bucket=b&object=o&size=1"


@pytest.fixture(scope="module")
def oss_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def headers_for(key: rsa.RSAPrivateKey | None, key_url: str, body: bytes = BODY, *,
                path: bytes = b"/cb", content_type: str = FORM,
                signature: bytes | None = None) -> dict[str, str]:
    """Signed like OSS (MD5withRSA over ``path \\n body``); ``key=None``: a forged one."""
    if signature is None:
        signature = (b"\0" * 128 if key is None
                     else key.sign(path + b"\n" + body, padding.PKCS1v15(), hashes.MD5()))
    headers = {"authorization": base64.b64encode(signature).decode(),
               "x-oss-pub-key-url": base64.b64encode(key_url.encode()).decode()}
    if content_type:
        headers["content-type"] = content_type
    return headers


def verify_sync(verifier: CallbackVerifier, headers: dict[str, str],
                body: bytes = BODY) -> VerifiedCallback:
    return verifier.verify_sync("POST", "/cb", "", headers, body)


@attrs.define
class KeyServer:
    """``routes[path] = (status, body, delay)``; a delayed answer waits on ``release``."""

    httpd: ThreadingHTTPServer
    routes: dict[str, tuple[int, bytes, float]] = attrs.field(factory=dict)
    hits: list[str] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)
    release: threading.Event = attrs.field(factory=threading.Event)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, path: str, body: bytes, status: int = 200, delay: float = 0.0) -> str:
        self.routes[path] = (status, body, delay)
        return f"http://{self.host}{path}"

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return len(self.hits) if path is None else self.hits.count(path)

    def wait_for_hit(self, path: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count(path) == 0:
            assert time.monotonic() < deadline, f"no request for {path}"
            time.sleep(0.01)


@pytest.fixture
def keys() -> Iterator[KeyServer]:
    box: list[KeyServer] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ks = box[0]
            with ks.lock:
                ks.hits.append(self.path)
            status, body, delay = ks.routes.get(self.path, (404, b"no such key", 0.0))
            if delay and ks.release.wait(delay):
                return  # released: hang up without answering
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server = KeyServer(httpd)
    box.append(server)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


# --------------------------------------------------------------------------- OSS's key host


@respx.mock(assert_all_mocked=True, assert_all_called=False)
async def test_oss_key_host_is_fetched_over_https_even_when_the_header_says_http(
    respx_mock: respx.MockRouter, oss_key: rsa.RSAPrivateKey
) -> None:
    https = respx_mock.get(OSS_KEY).mock(return_value=httpx.Response(200, content=pem(oss_key)))
    plain = respx_mock.get(OSS_KEY.replace("https:", "http:")).mock(
        return_value=httpx.Response(200, content=b"a key swapped on the network path"))
    verifier = CallbackVerifier()
    for header_url in (OSS_KEY.replace("https:", "http:"), OSS_KEY) * 2:
        cb = await verifier.verify("POST", "/cb", "", headers_for(oss_key, header_url), BODY)
        assert cb.key_url == OSS_KEY
    assert https.call_count == 1  # one cache entry for both spellings
    assert not plain.called
    assert verifier.key_fetch_url("http://gosspublic.alicdn.com/callback_pub_key_v2.pem") == (
        "https://gosspublic.alicdn.com/callback_pub_key_v2.pem")


@pytest.mark.parametrize(
    "url",
    [
        "https://gosspublic.alicdn.com/k.pem",
        "https://gosspublic.alicdn.com/",
        "https://gosspublic.alicdn.com/callback_pub_key_v1.pem?n=1",
        "https://gosspublic.alicdn.com/callback_pub_key_v1.pem?",
        "https://gosspublic.alicdn.com/callback_pub_key_v1.pem#x",
        "https://gosspublic.alicdn.com/callback_pub_key_v1.pem/",
        "https://gosspublic.alicdn.com//callback_pub_key_v1.pem",
        "https://gosspublic.alicdn.com/x/callback_pub_key_v1.pem",
        "https://gosspublic.alicdn.com/callback_pub_key_v1.pem.bak",
        "https://gosspublic.alicdn.com/callback_pub_key_v.pem",
        "https://gosspublic.alicdn.com/callback_pub_key_v01.pem",
        "https://gosspublic.alicdn.com/callback_pub_key_v99999.pem",
        "https://gosspublic.alicdn.com/callback_pub_key_v1.PEM",
        "https://gosspublic.alicdn.com/%63allback_pub_key_v1.pem",
        "https://gosspublic.alicdn.com/callback_pub_key_v1%2Epem",
        "https://gosspublic.alicdn.com:443/callback_pub_key_v1.pem",
        "https://gosspublic.alicdn.com/callback_pub_key_v1.pem\n",
        "https://gosspublic.alicdn.com/callback_pub_key_v1.pem%0A",
    ],
)
@respx.mock(assert_all_mocked=True, assert_all_called=False)
async def test_only_oss_key_paths_are_fetched_from_the_oss_host(
    respx_mock: respx.MockRouter, oss_key: rsa.RSAPrivateKey, url: str
) -> None:
    anything = respx_mock.route().mock(return_value=httpx.Response(200, content=pem(oss_key)))
    verifier = CallbackVerifier()
    with pytest.raises(CallbackSignatureError) as info:
        await verifier.verify("POST", "/cb", "", headers_for(oss_key, url), BODY)
    assert info.value.reason == "key_url_not_allowed"
    assert "nothing was fetched" in str(info.value)
    assert not verifier.is_key_url_allowed(url)
    assert verifier.key_fetch_url(url) is None
    assert not anything.called


def test_key_url_rules_use_full_matches() -> None:
    # "$" would match before a trailing newline; the rules must not.
    assert _OSS_KEY_URL.fullmatch(OSS_KEY) is not None
    assert _OSS_KEY_URL.fullmatch(OSS_KEY + "\n") is None
    assert _HOST_ENTRY.fullmatch("127.0.0.1:9000") is not None
    assert _HOST_ENTRY.fullmatch("127.0.0.1:9000\n") is None
    for entry in ("127.0.0.1:9000\n", "https://keys.example.com/\n"):
        with pytest.raises(ValueError, match="allowed_key_hosts"):
            CallbackVerifier(allowed_key_hosts=(entry,))


async def test_custom_hosts_keep_working_but_refuse_query_and_fragment(
    oss_key: rsa.RSAPrivateKey, keys: KeyServer
) -> None:
    url = keys.serve("/_emulator/callback_pub_key.pem", pem(oss_key))  # any path is fine
    verifier = CallbackVerifier(allowed_key_hosts=(keys.host,))
    assert (await verifier.verify("POST", "/cb", "", headers_for(oss_key, url), BODY)).key_url \
        == url  # http stays http on a host you chose
    for junk in (url + "?n=1", url + "?", url + "#frag"):
        with pytest.raises(CallbackSignatureError, match="query or a fragment") as info:
            await verifier.verify("POST", "/cb", "", headers_for(oss_key, junk), BODY)
        assert info.value.reason == "key_url_not_allowed"
    assert keys.count() == 1


# --------------------------------------------------------------------------- failures remembered


@respx.mock(assert_all_mocked=True)
async def test_twenty_forged_callbacks_with_a_dead_oss_key_url_make_one_fetch(
    respx_mock: respx.MockRouter, oss_key: rsa.RSAPrivateKey
) -> None:
    dead = "https://gosspublic.alicdn.com/callback_pub_key_v7.pem"
    route = respx_mock.get(dead).mock(return_value=httpx.Response(404, content=b"NoSuchKey"))
    verifier = CallbackVerifier()
    for i in range(20):
        header_url = dead.replace("https:", "http:") if i % 2 else dead
        with pytest.raises(PublicKeyFetchError) as info:
            await verifier.verify("POST", "/cb", "", headers_for(None, header_url), BODY)
        assert info.value.reason == "key_fetch_failed"
    assert route.call_count == 1


@pytest.mark.parametrize("mode", ["async-sequential", "async-concurrent", "sync-threads"])
async def test_twenty_forged_callbacks_with_a_bad_key_url_make_one_fetch(
    keys: KeyServer, mode: str
) -> None:
    url = keys.serve("/broken.pem", b"<html>not a key</html>")
    verifier = CallbackVerifier(allowed_key_hosts=(keys.host,))
    headers = headers_for(None, url)
    reasons: list[str] = []

    async def one() -> None:
        try:
            await verifier.verify("POST", "/cb", "", headers, BODY)
        except PublicKeyFetchError as exc:
            reasons.append(exc.reason)

    def one_sync() -> None:
        try:
            verify_sync(verifier, headers)
        except PublicKeyFetchError as exc:
            reasons.append(exc.reason)

    if mode == "async-sequential":
        for _ in range(20):
            await one()
    elif mode == "async-concurrent":
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
    else:
        threads = [threading.Thread(target=one_sync) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert reasons == ["key_invalid"] * 20
    assert keys.count("/broken.pem") == 1


async def test_a_remembered_failure_expires(oss_key: rsa.RSAPrivateKey, keys: KeyServer) -> None:
    url = keys.serve("/k.pem", b"down", status=503)
    verifier = CallbackVerifier(allowed_key_hosts=(keys.host,), key_failure_ttl=0.2)
    headers = headers_for(oss_key, url)
    for _ in range(3):
        with pytest.raises(PublicKeyFetchError):
            await verifier.verify("POST", "/cb", "", headers, BODY)
    assert keys.count() == 1
    keys.serve("/k.pem", pem(oss_key))
    await anyio.sleep(0.3)
    assert (await verifier.verify("POST", "/cb", "", headers, BODY)).fields["object"] == "o"
    assert keys.count() == 2
    never = CallbackVerifier(allowed_key_hosts=(keys.host,), key_failure_ttl=0)
    bad = keys.serve("/bad.pem", b"down", status=503)
    for _ in range(2):
        with pytest.raises(PublicKeyFetchError):
            await never.verify("POST", "/cb", "", headers_for(oss_key, bad), BODY)
    assert keys.count("/bad.pem") == 2  # 0 disables remembering


@pytest.mark.parametrize("junk_status", [200, 404])
async def test_junk_key_urls_cannot_flush_the_real_key(
    oss_key: rsa.RSAPrivateKey, keys: KeyServer, junk_status: int
) -> None:
    real = keys.serve("/real.pem", pem(oss_key))
    verifier = CallbackVerifier(allowed_key_hosts=(keys.host,), key_cache_size=4)
    genuine = headers_for(oss_key, real)
    await verifier.verify("POST", "/cb", "", genuine, BODY)
    # 40 forged callbacks, each naming another URL on the allowed host, which serves a
    # perfectly valid key there (200) or nothing (404): none of them can verify.
    for i in range(40):
        junk = keys.serve(f"/junk{i}.pem", pem(oss_key), status=junk_status)
        with pytest.raises(CallbackSignatureError):
            await verifier.verify("POST", "/cb", "", headers_for(None, junk), BODY)
    assert keys.count() == 41
    for _ in range(3):
        assert (await verifier.verify("POST", "/cb", "", genuine, BODY)).key_url == real
    assert keys.count("/real.pem") == 1  # never evicted, never fetched again


def test_key_cache_tiers_with_a_fake_clock(oss_key: rsa.RSAPrivateKey) -> None:
    now = [0.0]
    cache = _KeyCache(maxsize=2, ttl=10.0, clock=lambda: now[0])
    key = oss_key.public_key()
    cache.put("real", key)
    for i in range(5):
        cache.put(f"junk{i}", key, trusted=False)
    assert cache.lookup("real") == (key, True)  # untrusted keys never evict trusted ones
    assert cache.lookup("junk0") is None  # but evict each other
    assert cache.lookup("junk4") == (key, False)
    cache.promote("junk4", key)
    assert cache.lookup("junk4") == (key, True)
    now[0] = 11.0
    assert cache.lookup("real") is None
    assert cache.get_stale("real") is key
    cache.put("fresh", key, trusted=False)
    assert cache.get_stale("fresh") is None  # only a key that verified is used stale

    failures = _FailureCache(ttl=5.0, maxsize=2, clock=lambda: now[0])
    failures.put("a", PublicKeyFetchError("a failed", reason="key_invalid"))
    copy = failures.get("a")
    assert copy is not None and copy.reason == "key_invalid" and str(copy) == "a failed"
    failures.put("b", PublicKeyFetchError("b", reason="key_fetch_failed"))
    failures.put("c", PublicKeyFetchError("c", reason="key_fetch_failed"))
    assert failures.get("a") is None  # bounded
    now[0] = 16.1
    assert failures.get("c") is None  # expired


# --------------------------------------------------------------------------- signature length


@pytest.mark.parametrize("size", [513, 1024, 750 * 1024])
@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_oversized_signature_is_refused_before_any_fetch(
    keys: KeyServer, oss_key: rsa.RSAPrivateKey, size: int, mode: str
) -> None:
    url = keys.serve("/k.pem", pem(oss_key))
    verifier = CallbackVerifier(allowed_key_hosts=(keys.host,))
    headers = headers_for(None, url, signature=b"\x01" * size)
    started = time.monotonic()

    async def verify() -> VerifiedCallback:
        if mode == "async":
            return await verifier.verify("POST", "/cb", "", headers, BODY)
        return await anyio.to_thread.run_sync(verify_sync, verifier, headers)

    with pytest.raises(CallbackSignatureError) as info:
        await verify()
    assert info.value.reason == "malformed_signature"
    assert time.monotonic() - started < 5
    assert keys.count() == 0


async def test_a_4096_bit_sized_signature_is_still_checked(oss_key: rsa.RSAPrivateKey) -> None:
    verifier = CallbackVerifier(public_key=pem(oss_key))
    headers = headers_for(None, OSS_KEY, signature=b"\x01" * 512)  # the longest allowed
    with pytest.raises(CallbackSignatureError) as info:
        await verifier.verify("POST", "/cb", "", headers, BODY)
    assert info.value.reason == "bad_signature"  # got past the length check
    assert len(headers["authorization"]) == 684


# --------------------------------------------------------------------------- one lock per URL


def test_a_stuck_key_server_does_not_delay_callbacks_needing_other_keys(
    oss_key: rsa.RSAPrivateKey, keys: KeyServer
) -> None:
    stuck = keys.serve("/stuck.pem", pem(oss_key), delay=10)
    fast = keys.serve("/fast.pem", pem(oss_key))
    cached = keys.serve("/cached.pem", pem(oss_key))
    verifier = CallbackVerifier(allowed_key_hosts=(keys.host,), fetch_timeout=30)
    verify_sync(verifier, headers_for(oss_key, cached))
    outcome: list[BaseException | VerifiedCallback] = []

    def forged_with_stuck_key() -> None:
        try:
            outcome.append(verify_sync(verifier, headers_for(None, stuck)))
        except BaseException as exc:
            outcome.append(exc)

    threads = [threading.Thread(target=forged_with_stuck_key) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        keys.wait_for_hit("/stuck.pem")
        for url in (cached, fast):
            started = time.monotonic()
            cb = verify_sync(verifier, headers_for(oss_key, url))
            assert time.monotonic() - started < 2, url
            assert cb.key_url == url
        assert not outcome  # the stuck fetch is still stuck
        assert keys.count("/stuck.pem") == 1  # and the other two wait for it, not refetch
    finally:
        keys.release.set()
        for t in threads:
            t.join(30)
    assert len(outcome) == 3
    assert all(isinstance(o, PublicKeyFetchError) for o in outcome)
    assert keys.count("/stuck.pem") == 1  # the failure was shared by the waiters


async def test_a_stuck_key_server_does_not_delay_other_keys_async(
    oss_key: rsa.RSAPrivateKey, keys: KeyServer
) -> None:
    stuck = keys.serve("/stuck.pem", pem(oss_key), delay=10)
    fast = keys.serve("/fast.pem", pem(oss_key))
    verifier = CallbackVerifier(allowed_key_hosts=(keys.host,), fetch_timeout=30)
    async with anyio.create_task_group() as tg:
        async def forged() -> None:
            with pytest.raises(PublicKeyFetchError):
                await verifier.verify("POST", "/cb", "", headers_for(None, stuck), BODY)

        tg.start_soon(forged)
        while keys.count("/stuck.pem") == 0:
            await anyio.sleep(0.01)
        started = time.monotonic()
        cb = await verifier.verify("POST", "/cb", "", headers_for(oss_key, fast), BODY)
        assert time.monotonic() - started < 2
        assert cb.key_url == fast
        keys.release.set()  # the stuck one fails now


# --------------------------------------------------------------------------- Content-Type


@pytest.mark.parametrize(
    ("expected", "content_type", "body", "ok"),
    [
        pytest.param(FORM, FORM, BODY, True, id="form-ok"),
        pytest.param(FORM, FORM + "; charset=UTF-8", BODY, True, id="form-charset-ok"),
        pytest.param(FORM, JSON, b'{"object":"o"}', False, id="form-expected-json-sent"),
        pytest.param(FORM, "", BODY, False, id="form-expected-none-sent"),
        pytest.param(FORM, "text/plain", BODY, False, id="form-expected-text-sent"),
        pytest.param(JSON, JSON, b'{"object":"o"}', True, id="json-ok"),
        pytest.param(JSON, FORM, BODY, False, id="json-expected-form-sent"),
        pytest.param(JSON, "application/ld+json", b'{"object":"o"}', False,
                     id="json-expected-json-suffix-sent"),
    ],
)
async def test_expected_body_type(
    oss_key: rsa.RSAPrivateKey, keys: KeyServer, expected: str, content_type: str,
    body: bytes, ok: bool,
) -> None:
    url = keys.serve("/k.pem", pem(oss_key))
    verifier = CallbackVerifier(allowed_key_hosts=(keys.host,),
                                expected_body_type=expected)  # type: ignore[arg-type]
    headers = headers_for(oss_key, url, body, content_type=content_type)
    if ok:
        cb = await verifier.verify("POST", "/cb", "", headers, body)
        assert cb.fields["object"] == "o"
        assert keys.count() == 1
    else:
        with pytest.raises(CallbackBodyError) as info:
            await verifier.verify("POST", "/cb", "", headers, body)
        assert info.value.reason == "body_type_mismatch"
        assert keys.count() == 0  # refused before the key was fetched


def test_expected_body_type_is_validated() -> None:
    with pytest.raises(ValueError, match="expected_body_type"):
        CallbackVerifier(expected_body_type="text/plain")  # type: ignore[arg-type]
    assert CallbackVerifier().expected_body_type is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"note":"x&bucket=victim&object=paid.mp4&size=1"}',
        b'  \n{"a":"&bucket=victim"}',
        b'\xef\xbb\xbf{"a":"&bucket=victim"}',
        b'["&bucket=victim"]',
    ],
)
@pytest.mark.parametrize("content_type", [FORM, ""])
async def test_a_json_body_labelled_as_a_form_is_refused(
    oss_key: rsa.RSAPrivateKey, body: bytes, content_type: str
) -> None:
    verifier = CallbackVerifier(public_key=pem(oss_key))
    headers = headers_for(oss_key, OSS_KEY, body, content_type=content_type)
    with pytest.raises(CallbackBodyError) as info:
        await verifier.verify("POST", "/cb", "", headers, body)
    assert info.value.reason == "body_type_mismatch"
    # The same signed bytes, labelled as what they are, are fine (no injected fields).
    if not body.startswith(b"["):
        cb = await verifier.verify("POST", "/cb", "",
                                   headers_for(oss_key, OSS_KEY, body, content_type=JSON), body)
        assert "bucket" not in cb.fields
