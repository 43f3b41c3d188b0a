"""Security: forged and tampered callbacks, secrets, checkpoint permissions, and an
emulator that stays inside its data dir and answers hostile input with 4xx.

Callbacks are real: the emulator stores an object and POSTs its signed callback to a
recording receiver; the captured request is then verified, tampered with and replayed.
"""

from __future__ import annotations

import base64
import os
import pickle
import random
import re
import secrets
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import anyio
import attrs
import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.emulator_helpers import oss_request
from support.reliability_helpers import (
    PART,
    LocalHTTPServer,
    LogCollector,
    MiB,
    RawTCPServer,
    Seen,
    every_text_of,
    free_port,
    open_api,
    raw_exchange,
    send_answer,
    umask,
    write_file,
)

from oss_callback import (
    Callback,
    CallbackError,
    RequestError,
    ServiceError,
)
from oss_callback.client._checkpoint import default_checkpoint_path
from oss_callback.server import (
    CallbackBodyError,
    CallbackSignatureError,
    CallbackVerifier,
    PublicKeyFetchError,
    callback_string_to_sign,
)
from oss_callback.testing import CallbackReceiver, OSSEmulator, ReceivedCallback
from oss_callback.testing._callbacks import sign_callback

BUCKET = "test-bucket"


@pytest.fixture(params=["async", "sync"])
def facade(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# --------------------------------------------------------------------------- real callbacks


@attrs.frozen
class Captured:
    """A callback request exactly as the application server received it."""

    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def verify(self, verifier: CallbackVerifier, *, path: str | bytes | None = None,
               query: str | bytes | None = None, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> Any:
        return verifier.verify_sync(
            "POST", self.path if path is None else path,
            self.query if query is None else query,
            self.headers if headers is None else headers,
            self.body if body is None else body)


def _captured(received: ReceivedCallback) -> Captured:
    return Captured(received.path, received.query, dict(received.headers), received.body)


@pytest.fixture
def callbacks(oss_emulator: OSSEmulator, oss_bucket: str,
              callback_receiver: CallbackReceiver) -> list[Captured]:
    """Two genuine callbacks the emulator sent (for objects ``a.txt`` and ``b.txt``)."""
    cb = Callback(callback_receiver.url + "/hooks/upload%20done",
                  query={"user": "alice", "tag": "a b+c"},
                  body="bucket=${bucket}&object=${object}&size=${size}&etag=${etag}")

    async def upload() -> None:
        async with open_api(oss_emulator, oss_bucket, "async") as api:
            await api.put_object("a.txt", b"first object", callback=cb)
            await api.put_object("b.txt", b"second object!", callback=cb)

    anyio.run(upload)
    return [_captured(r) for r in callback_receiver.wait_for(2)]


@pytest.fixture
def pinned(oss_emulator: OSSEmulator) -> CallbackVerifier:
    return CallbackVerifier(public_key=oss_emulator.public_key_pem)


def test_genuine_callbacks_verify(callbacks: list[Captured], pinned: CallbackVerifier) -> None:
    first, second = callbacks
    verified = first.verify(pinned)
    assert verified.fields["object"] == "a.txt" and verified.fields["size"] == "12"
    assert verified.path == "/hooks/upload done"
    assert verified.query == {"user": "alice", "tag": "a b+c"}
    assert second.verify(pinned).fields["object"] == "b.txt"


TAMPERINGS: dict[str, Callable[[Captured, Captured], dict[str, Any]]] = {
    "body-other-object": lambda c, o: {"body": c.body.replace(b"a.txt", b"z.txt")},
    "body-appended": lambda c, o: {"body": c.body + b"&admin=1"},
    "body-truncated": lambda c, o: {"body": c.body[:-1]},
    "body-of-the-other-callback": lambda c, o: {"body": o.body},
    "query-changed": lambda c, o: {"query": c.query.replace("alice", "mallory")},
    "query-dropped": lambda c, o: {"query": ""},
    "query-added": lambda c, o: {"query": c.query + "&admin=1"},
    "path-changed": lambda c, o: {"path": "/hooks/upload%20undone"},
    "replayed-to-another-path": lambda c, o: {"path": "/admin/grant"},
    "replayed-to-a-sub-path": lambda c, o: {"path": c.path + "/x"},
    "signature-of-the-other-callback": lambda c, o: {
        "headers": {**c.headers, "authorization": o.headers["authorization"]}},
}


@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_tampered_or_replayed_callback_is_refused(
    callbacks: list[Captured], pinned: CallbackVerifier, how: str
) -> None:
    first, other = callbacks
    with pytest.raises(CallbackSignatureError) as info:
        first.verify(pinned, **TAMPERINGS[how](first, other))
    assert info.value.reason == "bad_signature"


def test_replay_to_the_same_path_is_accepted_as_documented(
    callbacks: list[Captured], pinned: CallbackVerifier
) -> None:
    # OSS signs no timestamp or nonce (see CallbackVerifier's warning): an exact replay
    # verifies; everything about it (path, query, body) is still pinned by the signature.
    assert callbacks[0].verify(pinned).body == callbacks[0].verify(pinned).body


def _signed(c: Captured) -> set[bytes]:
    """Every string OSS could have signed for this request (both ``+`` decodings)."""
    path = c.path.encode("latin-1")
    paths = {unquote_to_bytes(path), unquote_to_bytes(path.replace(b"+", b" "))}
    tail = (b"?" + c.query.encode("latin-1") if c.query else b"") + b"\n" + c.body
    return {p + tail for p in paths}


def test_any_single_byte_change_is_refused(
    callbacks: list[Captured], pinned: CallbackVerifier
) -> None:
    genuine = callbacks[0]
    original = _signed(genuine)

    @settings(max_examples=300, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(part=st.sampled_from(["path", "query", "body"]), data=st.data())
    def check(part: str, data: st.DataObject) -> None:
        value = getattr(genuine, part)
        raw = value.encode("latin-1") if isinstance(value, str) else value
        at = data.draw(st.integers(0, len(raw) - 1), label="offset")
        byte = data.draw(st.integers(0x20, 0x7E).filter(lambda b: b != raw[at]), label="byte")
        mutated = raw[:at] + bytes([byte]) + raw[at + 1:]
        if part == "path" and not mutated.startswith(b"/"):
            mutated = b"/" + mutated
        changed = attrs.evolve(genuine, **{part: mutated if part == "body"  # type: ignore[arg-type]
                                           else mutated.decode("latin-1")})
        if _signed(changed) & original:
            return  # e.g. %2f -> %2F: the bytes OSS signed are the same (not a tampering)
        with pytest.raises(CallbackSignatureError):
            changed.verify(pinned)

    check()


def _attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


def _forge(c: Captured, key: rsa.RSAPrivateKey, key_url: str, body: bytes) -> dict[str, str]:
    """Headers for ``body`` signed with the attacker's own key, pointing at ``key_url``."""
    signature = key.sign(callback_string_to_sign(c.path, c.query, body), padding.PKCS1v15(),
                         hashes.MD5())
    return {**c.headers, "authorization": base64.b64encode(signature).decode(),
            "x-oss-pub-key-url": base64.b64encode(key_url.encode()).decode()}


def test_forged_signature_with_the_real_key_url_is_refused(
    callbacks: list[Captured], oss_emulator: OSSEmulator
) -> None:
    genuine = callbacks[0]
    verifier = CallbackVerifier(allowed_key_hosts=(f"127.0.0.1:{oss_emulator.port}",))
    assert genuine.verify(verifier).fields["object"] == "a.txt"  # fetches the emulator key
    forged_body = genuine.body.replace(b"a.txt", b"evil.txt")
    headers = _forge(genuine, _attacker_key(), oss_emulator.public_key_url, forged_body)
    with pytest.raises(CallbackSignatureError) as info:
        genuine.verify(verifier, headers=headers, body=forged_body)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/key.pem",
        "http://gosspublic.alicdn.com@127.0.0.1:{port}/key.pem",
        "https://gosspublic.alicdn.com:443@127.0.0.1:{port}/",
        "http://127.0.0.1:{port}/gosspublic.alicdn.com/key.pem",
        "http://127.0.0.1:{port}/?u=https://gosspublic.alicdn.com/",
        "HTTP://127.0.0.1:{port}/key.pem",
        "http://127.0.0.1:{port}#https://gosspublic.alicdn.com/",
        "http://[::ffff:127.0.0.1]:{port}/key.pem",
        "http://2130706433:{port}/key.pem",  # 127.0.0.1 as one number
        "http://{allowed}{digit}/key.pem",  # the allowed port is a prefix of this one
    ],
)
def test_key_url_off_the_allowed_hosts_makes_no_connection(
    callbacks: list[Captured], template: str
) -> None:
    genuine = callbacks[0]
    with RawTCPServer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as attacker:
        port = str(attacker.port)
        allowed = f"127.0.0.1:{port[:-1]}"  # a different port, whose text is a prefix
        url = template.format(port=port, allowed=allowed, digit=port[-1])
        body = genuine.body.replace(b"a.txt", b"evil.txt")
        headers = _forge(genuine, _attacker_key(), url, body)
        for verifier in (CallbackVerifier(), CallbackVerifier(allowed_key_hosts=(allowed,))):
            with pytest.raises(CallbackSignatureError) as info:
                genuine.verify(verifier, headers=headers, body=body)
            assert info.value.reason == "key_url_not_allowed"
        time.sleep(0.05)
        assert attacker.accepted == 0  # refused before any connection


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def test_key_url_cannot_climb_out_of_an_allowed_url_prefix(callbacks: list[Captured]) -> None:
    genuine = callbacks[0]
    attacker = _attacker_key()
    attacker_pem = _pem(attacker)

    def respond(handler: Any, seen: Seen) -> None:
        send_answer(handler, 200, attacker_pem, content_type="application/x-pem-file")

    with LocalHTTPServer(respond) as host:  # serves the attacker's key at every path
        verifier = CallbackVerifier(allowed_key_hosts=(host.url + "/oss-keys/",))
        body = genuine.body.replace(b"a.txt", b"evil.txt")
        headers = _forge(genuine, attacker, host.url + "/oss-keys/../uploads/evil.pem", body)
        try:
            with pytest.raises(CallbackSignatureError):
                genuine.verify(verifier, headers=headers, body=body)
        finally:
            fetched = [s.path for s in host.seen]
        assert all(p.startswith("/oss-keys/") for p in fetched), fetched


def test_oversized_public_key_is_refused_without_reading_it_all(
    callbacks: list[Captured],
) -> None:
    genuine = callbacks[0]
    written: list[int] = []

    def respond(handler: Any, seen: Seen) -> None:  # 50 MB, no Content-Length
        chunk = b"A" * MiB

        def chunks() -> Any:
            for _ in range(50):
                written.append(len(chunk))
                yield chunk

        send_answer(handler, 200, chunks(), content_type="application/x-pem-file")

    with LocalHTTPServer(respond) as host:
        verifier = CallbackVerifier(allowed_key_hosts=(f"127.0.0.1:{host.port}",))
        body = genuine.body
        headers = _forge(genuine, _attacker_key(), host.url + "/key.pem", body)
        started = time.monotonic()
        with pytest.raises(PublicKeyFetchError) as info:
            genuine.verify(verifier, headers=headers, body=body)
        elapsed = time.monotonic() - started
    assert info.value.reason == "key_too_large"
    assert elapsed < 5
    assert sum(written) < 50 * MiB  # the verifier hung up early


def test_oversized_body_is_refused_even_when_correctly_signed(
    callbacks: list[Captured], pinned: CallbackVerifier
) -> None:
    genuine = callbacks[0]
    body = genuine.body + b"&pad=" + b"x" * (pinned.max_body_size + 1)
    url = "http://127.0.0.1" + genuine.path + "?" + genuine.query
    headers = {**genuine.headers, "authorization": sign_callback(url, body)}
    small = CallbackVerifier(public_key=pinned.public_key, max_body_size=len(body) + 1)
    assert genuine.verify(small, headers=headers, body=body).body == body  # it IS genuine
    with pytest.raises(CallbackBodyError) as info:
        genuine.verify(pinned, headers=headers, body=body)
    assert info.value.reason == "body_too_large"


# --------------------------------------------------------------------------- secrets


class Stop(Exception):
    """Raised from a progress callback to interrupt an upload."""


def _secret_texts(*objects: object) -> list[str]:
    texts: list[str] = []
    for obj in objects:
        if isinstance(obj, BaseException):
            texts.append(every_text_of(obj))
        else:
            texts.extend([repr(obj), str(obj)])
    return texts


async def test_secrets_appear_in_no_log_repr_error_or_checkpoint(
    facade: str, oss_emulator: OSSEmulator, oss_bucket: str,
    callback_receiver: CallbackReceiver, tmp_path: Path,
) -> None:
    ak, sk, token = oss_emulator.issue_sts_token()
    wrong = "wrong-secret-" + secrets.token_hex(8)
    src = tmp_path / "src.bin"
    write_file(src, 4 * PART)
    ckpt = tmp_path / "ckpt.json"
    seen: list[object] = []
    checkpoint_bytes: list[bytes] = []
    creds = {"access_key_id": ak, "access_key_secret": sk, "security_token": token}

    def stop_at_half(done: int, total: int | None) -> None:
        if done >= 2 * PART and not checkpoint_bytes:
            checkpoint_bytes.append(ckpt.read_bytes())
            raise Stop

    with LogCollector("oss_callback", "httpx", "httpcore", "uvicorn", "uvicorn.error") as logs:
        async with open_api(oss_emulator, oss_bucket, facade, **creds) as api:
            seen += [api.bucket, api.bucket.client]
            seen.append(await api.put_object("ok.txt", b"hello",
                                             callback=Callback(callback_receiver.url)))
            seen.append(await api.head_object("ok.txt"))
            oss_emulator.faults.add(operation="UploadPart", nth=2, status=500)
            with pytest.raises(Stop):
                await api.resumable_upload("big.bin", src, part_size=PART, concurrency=1,
                                           checkpoint_file=ckpt, progress=stop_at_half)
            checkpoint_bytes.append(ckpt.read_bytes())
            seen.append(await api.resumable_upload("big.bin", src, part_size=PART,
                                                   checkpoint_file=ckpt))
            callback_receiver.respond(status=500)
            with pytest.raises(CallbackError) as cb_error:
                await api.put_object("cb.txt", b"x", callback=Callback(callback_receiver.url))
            seen.append(cb_error.value)
            oss_emulator.faults.add(operation="PutObject", status=403,
                                    code="RequestTimeTooSkewed", times=None)
            with pytest.raises(ServiceError) as skewed:
                await api.put_object("skewed.txt", b"x")
            seen.append(skewed.value)
            oss_emulator.faults.clear()
        async with open_api(oss_emulator, oss_bucket, facade, access_key_id=ak,
                            access_key_secret=wrong, security_token=token) as bad:
            with pytest.raises(ServiceError) as mismatch:
                await bad.put_object("k", b"x")
            assert mismatch.value.code == "SignatureDoesNotMatch"
            seen += [mismatch.value, bad.bucket.client]
        async with open_api(oss_emulator, oss_bucket, facade,
                            endpoint=f"http://127.0.0.1:{free_port()}", **creds) as down:
            with pytest.raises(RequestError) as no_answer:
                await down.put_object("k", b"x")
            seen.append(no_answer.value)

    assert any("retrying" in t for t in logs.texts)  # the collector did see DEBUG..WARNING
    assert any("HTTP Request" in t for t in logs.texts)  # and httpx's lines
    haystacks = logs.texts + _secret_texts(*seen) + [b.decode() for b in checkpoint_bytes]
    for secret in (sk, token, wrong):
        for text in haystacks:
            assert secret not in text
    assert len(checkpoint_bytes) == 2


@pytest.mark.parametrize("version", ["v1", "v4"])
async def test_sts_token_is_not_kept_in_signature_errors(
    oss_emulator: OSSEmulator, oss_bucket: str, version: str
) -> None:
    ak, _, token = oss_emulator.issue_sts_token()
    async with open_api(oss_emulator, oss_bucket, "async", access_key_id=ak,
                        access_key_secret="wrong-secret", security_token=token,
                        signature_version=version) as api:
        with pytest.raises(ServiceError) as info:
            await api.put_object("k", b"x")
    err = info.value
    assert err.code == "SignatureDoesNotMatch"
    assert token not in every_text_of(err)  # already true
    hexed = " ".join(f"{b:02x}" for b in token.encode())
    for value in err.details.values():
        assert token not in value and hexed not in value
    assert token.encode() not in pickle.dumps(err)


async def test_checkpoint_file_is_0600_in_a_0700_folder_even_with_umask_0(
    facade: str, oss_emulator: OSSEmulator, oss_bucket: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = tmp_path / "state" / "checkpoints"
    monkeypatch.setenv("OSS_CALLBACK_STATE_DIR", str(state))
    src = tmp_path / "src.bin"
    write_file(src, 4 * PART)
    modes: list[tuple[int, int]] = []

    async with open_api(oss_emulator, oss_bucket, facade) as api:
        ckpt = Path(default_checkpoint_path(oss_bucket, "k", str(src)))

        def record(done: int, total: int | None) -> None:
            if ckpt.exists():
                modes.append((stat.S_IMODE(ckpt.stat().st_mode),
                              stat.S_IMODE(state.stat().st_mode)))
            if done >= 3 * PART:
                raise Stop

        with umask(0), pytest.raises(Stop):
            await api.resumable_upload("k", src, part_size=PART, concurrency=1,
                                       progress=record)
    assert ckpt.parent == state and ckpt.exists()
    assert modes and set(modes) == {(0o600, 0o700)}  # every rewrite, not just the first
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o600
    assert [p.name for p in state.iterdir()] == [ckpt.name]  # no temp file left


# --------------------------------------------------------------------------- the emulator


KEYS = st.one_of(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=120),
    st.builds(lambda prefix, rest: prefix + rest,
              st.sampled_from(["../", "..\\", "/", "\\", "\x00", "%2e%2e/", "./", "~/", "C:\\",
                               "/etc/", "../../../../../../tmp/", "..", "."]),
              st.text(st.characters(codec="utf-8"), max_size=40)),
    st.sampled_from(["a/" * 511 + "b", "../" * 341, "\x00" * 1023, "é" * 511 + "x",
                     "x" * 1024, "é" * 512, "/" * 10, ".", "..", "...", "../"]),
)


def test_any_key_stays_inside_the_data_dir(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    root = oss_emulator.data_dir.resolve()
    stored: dict[str, bytes] = {}
    http = httpx.Client(trust_env=False, timeout=30)

    @settings(max_examples=80, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(key=KEYS)
    def check(key: str) -> None:
        body = os.urandom(16)
        r = oss_request(oss_emulator, "PUT", oss_bucket, key, body=body, client=http)
        too_long = len(key.encode()) > 1023
        if too_long or key[0] in "/\\":
            assert r.status_code == 400, (key, r.status_code)
            assert oss_emulator.head_object(oss_bucket, key) is None
            return
        assert r.status_code == 200, (key, r.text)
        stored[key] = body
        path = oss_emulator.object_path(oss_bucket, key)
        assert path is not None and path.resolve().is_relative_to(root)
        assert oss_request(oss_emulator, "GET", oss_bucket, key, client=http).content == body

    with http:
        check()
    assert stored
    for key, body in stored.items():  # nothing overwrote anything else
        assert oss_emulator.get_object(oss_bucket, key) == body
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root)


def _burst(port: int, rng: random.Random) -> list[bytes]:
    """1,000 malformed requests: broken HTTP, hostile headers, paths and signatures."""

    def junk(n: int) -> bytes:
        return bytes(rng.choice(b"\x00\x01\x7f\xff\xfe%?#&=:/\\ \"'<>{}|^`abc019")
                     for _ in range(rng.randint(1, n)))

    def head(method: bytes, target: bytes, *headers: bytes) -> bytes:
        lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", *headers]
        return b"\r\n".join(lines) + b"\r\n\r\n"

    obj = b"/test-bucket/obj"
    makers: list[Callable[[], bytes]] = [
        lambda: junk(300).replace(b"\r\n\r\n", b"") + b"\r\n\r\n",
        lambda: b"GET\r\n\r\n",
        lambda: b"GET / HTTP/9.9\r\n\r\n",
        lambda: b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
        lambda: head(b"BREW", obj, b"Content-Length: 0"),
        lambda: head(b"PUT", obj, b"Content-Length: -5"),
        lambda: head(b"PUT", obj, b"Content-Length: abc"),
        lambda: head(b"PUT", obj, b"Content-Length: 5", b"Content-Length: 7") + b"hello",
        lambda: head(b"PUT", obj, b"Transfer-Encoding: chunked") + b"ZZ\r\nxx\r\n0\r\n\r\n",
        lambda: head(b"PUT", obj, b"Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n",
        lambda: head(b"GET", obj, b"Bad Header Line"),
        lambda: head(b"GET", obj, b"X-Big: " + b"a" * rng.randint(1000, 8000)),
        lambda: head(b"GET", obj, b"Host: second.host"),
        lambda: head(b"GET", rng.choice([b"/%ff%fe", b"/test-bucket/%00", b"//", b"/%",
                                          b"/test-bucket/%zz", b"/" + b"a" * 5000,
                                          b"/../../etc/passwd", b"/test-bucket/../../x",
                                          b"/test-bucket/k?uploadId=&partNumber=abc",
                                          b"/test-bucket/k?" + b"a=1&" * 500,
                                          b"/INVALID_BUCKET/k", b"/-bad-/k"])),
        lambda: head(rng.choice([b"GET", b"PUT", b"POST", b"DELETE", b"HEAD"]), obj,
                     b"Content-Length: 0",
                     b"Authorization: " + rng.choice([
                         b"OSS ", b"OSS :", b"OSS a:b", b"OSS4-HMAC-SHA256",
                         b"OSS4-HMAC-SHA256 Credential=,Signature=",
                         b"OSS4-HMAC-SHA256 Credential=a/b/c/d/e,Signature=x",
                         b"OSS4-HMAC-SHA256 Credential=LTAI-oss-emulator/20240101/cn-hangzhou"
                         b"/oss/aliyun_v4_request,Signature=00",
                         b"Basic Zm9vOmJhcg==", b"\xff\xfe", b"OSS " + b"a" * 4000,
                     ]),
                     b"x-oss-date: " + rng.choice([b"", b"20240101T000000Z", b"nonsense",
                                                   b"99991231T235959Z", b"\xff"]),
                     b"Date: " + rng.choice([b"", b"Mon, 99 Foo 0000", b"\xff",
                                             b"Thu, 01 Jan 1970 00:00:00 GMT"])),
        lambda: head(b"GET", obj + b"?OSSAccessKeyId=x&Signature=y&Expires="
                     + rng.choice([b"", b"abc", b"-1", b"9" * 30, b"1e9", b"%00"])),
        lambda: head(b"GET", obj + b"?x-oss-signature=a&x-oss-signature-version="
                     + rng.choice([b"OSS4-HMAC-SHA256", b"v9", b""]) + b"&x-oss-date="
                     + rng.choice([b"20240101T000000Z", b"junk", b""]) + b"&x-oss-expires="
                     + rng.choice([b"60", b"", b"-5", b"9" * 30]) + b"&x-oss-credential="
                     + rng.choice([b"a%2Fb", b"", b"x" * 300])),
        lambda: head(b"GET", obj, b"Host: " + rng.choice([b"\xff\xfe", b"test-bucket.",
                                                          b"[::1", b"a" * 300, b""])),
    ]
    return [rng.choice(makers)() for _ in range(1000)]


def test_a_burst_of_1000_malformed_requests_gets_4xx_and_no_crash(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    seed = random.randrange(2**32)
    payloads = _burst(oss_emulator.port, random.Random(seed))
    with LogCollector("oss_callback.testing", "uvicorn.error") as logs, \
            ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda p: raw_exchange(oss_emulator.port, p, 10), payloads))
    statuses = []
    for payload, answer in zip(payloads, answers, strict=True):
        match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
        assert match is not None, f"seed {seed}: no HTTP answer to {payload[:120]!r}"
        statuses.append(int(match.group(1)))
        assert 400 <= statuses[-1] < 500, f"seed {seed}: {statuses[-1]} for {payload[:120]!r}"
    assert len(statuses) == 1000
    assert not [r for r in oss_emulator.requests if r.status >= 500]
    assert not [t for t in logs.texts if "ERROR" in t or "Traceback" in t], logs.texts[:3]
    # and it still works
    r = oss_request(oss_emulator, "PUT", oss_bucket, "after-the-burst", body=b"alive")
    assert r.status_code == 200
    assert oss_emulator.get_object(oss_bucket, "after-the-burst") == b"alive"


COMPLETE_BODIES = {
    "empty": b"",
    "truncated": b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>",
    "not-xml": b"\x00\xff garbage",
    "wrong-root": b"<Foo><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></Foo>",
    "no-parts": b"<CompleteMultipartUpload></CompleteMultipartUpload>",
    "doctype": (b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&x;</ETag>"
                b"</Part></CompleteMultipartUpload>"),
    "entity-bomb": (b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY a "aaaaaaaaaa">'
                    b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
                    b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&b;</ETag>"
                    b"</Part></CompleteMultipartUpload>"),
    "text-part-number": (b"<CompleteMultipartUpload><Part><PartNumber>one</PartNumber>"
                         b"<ETag>x</ETag></Part></CompleteMultipartUpload>"),
    "negative-part-number": (b"<CompleteMultipartUpload><Part><PartNumber>-1</PartNumber>"
                             b"<ETag>x</ETag></Part></CompleteMultipartUpload>"),
    "huge-part-number": (b"<CompleteMultipartUpload><Part><PartNumber>" + b"9" * 400
                         + b"</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>"),
    "unknown-etag": (b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>"
                     b"<ETag>NOPE</ETag></Part></CompleteMultipartUpload>"),
    "deep-nesting": b"<CompleteMultipartUpload>" + b"<a>" * 5000 + b"</a>" * 5000
                    + b"</CompleteMultipartUpload>",
    "not-utf8": b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\xff"
                b"</ETag></Part></CompleteMultipartUpload>",
    "5-mb": b"<CompleteMultipartUpload>" + b" " * (5 * MiB) + b"</CompleteMultipartUpload>",
}


def _start_upload(emu: OSSEmulator, bucket: str, key: str) -> tuple[str, str]:
    r = oss_request(emu, "POST", bucket, key, query=[("uploads", "")])
    match = re.search(r"<UploadId>(\w+)</UploadId>", r.text)
    assert r.status_code == 200 and match is not None, r.text
    upload_id = match.group(1)
    part = oss_request(emu, "PUT", bucket, key, query=[("partNumber", "1"),
                                                       ("uploadId", upload_id)],
                       body=b"only part")
    assert part.status_code == 200
    return upload_id, part.headers["etag"]


def test_malformed_complete_xml_is_a_4xx_and_the_upload_survives(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    upload_id, etag = _start_upload(oss_emulator, oss_bucket, "xml")
    for name, body in COMPLETE_BODIES.items():
        r = oss_request(oss_emulator, "POST", oss_bucket, "xml", query=[("uploadId", upload_id)],
                        body=body)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        assert "root:" not in r.text  # no external entity was read
        assert oss_emulator.head_object(oss_bucket, "xml") is None
    good = (f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag>"
            "</Part></CompleteMultipartUpload>").encode()
    r = oss_request(oss_emulator, "POST", oss_bucket, "xml", query=[("uploadId", upload_id)],
                    body=good)
    assert r.status_code == 200, r.text
    assert oss_emulator.get_object(oss_bucket, "xml") == b"only part"


@pytest.mark.parametrize("where", ["presigned-v1-expires", "presigned-v4-expires",
                                   "part-number", "max-parts", "complete-part-number"])
def test_non_ascii_digits_are_a_4xx(oss_emulator: OSSEmulator, oss_bucket: str,
                                    where: str) -> None:
    sup2 = "\u00b2"
    if where.startswith("presigned"):
        query = (b"OSSAccessKeyId=x&Signature=y&Expires=%C2%B2" if where.endswith("v1-expires")
                 else b"x-oss-signature=a&x-oss-signature-version=OSS4-HMAC-SHA256"
                      b"&x-oss-date=20240101T000000Z&x-oss-expires=%C2%B2")
        answer = raw_exchange(oss_emulator.port, b"GET /" + oss_bucket.encode()
                              + b"/k?" + query + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status = int(answer.split(b" ", 2)[1])
    else:
        upload_id, etag = _start_upload(oss_emulator, oss_bucket, "k")
        if where == "part-number":
            r = oss_request(oss_emulator, "PUT", oss_bucket, "k", body=b"x",
                            query=[("partNumber", sup2), ("uploadId", upload_id)])
        elif where == "max-parts":
            r = oss_request(oss_emulator, "GET", oss_bucket, "k",
                            query=[("max-parts", sup2), ("uploadId", upload_id)])
        else:
            r = oss_request(oss_emulator, "POST", oss_bucket, "k", query=[("uploadId", upload_id)],
                            body=(f"<CompleteMultipartUpload><Part><PartNumber>{sup2}"
                                  f"</PartNumber><ETag>{etag}</ETag></Part>"
                                  "</CompleteMultipartUpload>").encode())
        status = r.status_code
    assert 400 <= status < 500
