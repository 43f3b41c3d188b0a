"""callbackSNI: on by default for https callback URLs, honoured by the emulator over real
TLS (a receiver whose handshake fails without SNI), and the hint a 203 gets without it."""

from __future__ import annotations

import base64
import json
import socket

import pytest
from support.tls_helpers import SniServer

from oss_callback import AsyncBucket, Callback, CallbackError
from oss_callback.testing import OSSEmulator
from oss_callback.testing._callback_send import CONNECT_FAILED

pytestmark = pytest.mark.timeout(60)


def _sent(cb: Callback) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(base64.b64decode(cb.encoded_callback))
    return decoded


@pytest.mark.parametrize(
    ("url", "sni", "expected"),
    [
        ("https://a.example/cb", None, True),  # the default for https
        ("https://a.example/cb", True, True),
        ("https://a.example/cb", False, None),  # off: absent, OSS's default
        ("http://a.example/cb", None, None),  # http: unchanged output
        ("http://a.example/cb", True, True),
        ("http://a.example/cb;https://b.example/cb", None, True),  # any https URL
        ("HTTPS://a.example/cb", None, True),
    ],
)
def test_callback_sni_default_follows_the_scheme(
    url: str, sni: bool | None, expected: bool | None
) -> None:
    cb = Callback(url, sni=sni)
    assert cb.sni is sni
    assert cb.sends_sni is bool(expected)
    assert _sent(cb).get("callbackSNI") is expected


def test_http_callback_encoding_is_unchanged_by_the_sni_default() -> None:
    cb = Callback("http://app.server.com/callback", body="hello world")
    assert cb.encoded_callback == Callback(
        "http://app.server.com/callback", body="hello world", sni=False
    ).encoded_callback
    assert "callbackSNI" not in _sent(cb)


async def test_default_https_callback_sends_sni_and_succeeds(
    bucket: AsyncBucket, oss_emulator: OSSEmulator
) -> None:
    with SniServer() as server:
        result = await bucket.put_object("sni/ok.txt", b"data", callback=Callback(
            server.url + "/cb", body="object=${object}"))
    assert result.callback_status == 200
    assert json.loads(result.callback_body or b"") == {"Status": "OK"}
    assert server.server_names == ["localhost"]
    ((path, _headers, body),) = server.requests
    assert (path, body) == ("/cb", b"object=sni%2Fok.txt")
    assert oss_emulator.callbacks[-1].ok


async def test_sni_false_fails_the_handshake_and_says_to_turn_sni_on(
    bucket: AsyncBucket, oss_emulator: OSSEmulator
) -> None:
    with SniServer() as server, pytest.raises(CallbackError) as info:
        await bucket.put_object("sni/off.txt", b"data",
                                callback=Callback(server.url + "/cb", sni=False))
    assert server.server_names == [None]  # the handshake named no server
    assert server.requests == []
    error = info.value
    assert error.status == 203 and error.code == "CallbackFailed"
    assert error.message.startswith(CONNECT_FAILED)  # OSS's text first
    assert "sni=True" in error.message and "sni=True" in str(error)
    assert "sni=True" in (oss_emulator.callbacks[-1].error or "")
    assert error.result.etag  # stored all the same
    assert oss_emulator.get_object(bucket.name, "sni/off.txt") == b"data"


async def test_explicit_sni_true_sends_sni(bucket: AsyncBucket) -> None:
    with SniServer() as server:
        result = await bucket.put_object("sni/on.txt", b"x",
                                         callback=Callback(server.url + "/cb", sni=True))
    assert result.callback_status == 200
    assert server.server_names == ["localhost"]


def _refused_https_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"https://127.0.0.1:{port}/cb"


async def test_sdk_hints_sni_when_oss_cannot_connect_to_https_without_it(
    bucket: AsyncBucket,
) -> None:
    # OSS says the same for a refused connection and a failed handshake: the SDK can't
    # tell them apart, so it hints SNI whenever an https callback without it can't connect.
    with pytest.raises(CallbackError) as info:
        await bucket.put_object("sni/refused.txt", b"x",
                                callback=Callback(_refused_https_url(), sni=False))
    assert info.value.message == CONNECT_FAILED  # no handshake: the emulator adds nothing
    assert info.value.hint is not None and "sni=True" in info.value.hint
    assert str(info.value).endswith(info.value.hint)

    with pytest.raises(CallbackError) as info:  # SNI was on: nothing to hint
        await bucket.put_object("sni/refused.txt", b"x",
                                callback=Callback(_refused_https_url()))
    assert info.value.message == CONNECT_FAILED
    assert info.value.hint is None and "sni=" not in str(info.value).lower()


async def test_multipart_complete_without_sni_gets_the_hint(bucket: AsyncBucket) -> None:
    with SniServer() as server:
        upload_id = (await bucket.initiate_multipart_upload("sni/multi.bin")).upload_id
        part = await bucket.upload_part("sni/multi.bin", upload_id, 1, b"part one")
        with pytest.raises(CallbackError) as info:
            await bucket.complete_multipart_upload(
                "sni/multi.bin", upload_id, [part],
                callback=Callback(server.url + "/cb", sni=False))
        assert "sni=True" in str(info.value)
        assert server.server_names == [None]
        assert info.value.result.upload_id == upload_id
