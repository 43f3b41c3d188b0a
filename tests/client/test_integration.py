"""put/get/head/delete and callbacks over real sockets, on the emulator, for both facades.

Every test body runs twice: against ``AsyncBucket`` directly and against the synchronous
``Bucket`` (called from a worker thread), through the ``api`` fixture.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.facades import Api
from support.helpers import form_fields, json_body

from oss_callback import Callback, CallbackError, InconsistentError, ServiceError
from oss_callback.testing import CallbackReceiver

pytestmark = pytest.mark.usefixtures("oss_emulator")


async def test_put_get_head_delete_round_trip(api: Api, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    result = await api.put_object("dir/héllo wörld+%.bin", data,
                                  headers={"Content-Type": "application/x-test",
                                           "x-oss-meta-owner": "alice"})
    assert result.etag == hashlib.md5(data).hexdigest().upper()
    assert result.crc64 is not None
    assert result.callback_body is None and result.callback_status is None
    assert await api.get_object("dir/héllo wörld+%.bin") == data
    head = await api.head_object("dir/héllo wörld+%.bin")
    assert head.size == len(data)
    assert head.etag == result.etag
    assert head.crc64 == result.crc64
    assert head.content_type == "application/x-test"
    assert head.metadata == {"owner": "alice"}
    assert await api.object_exists("dir/héllo wörld+%.bin") is True
    await api.delete_object("dir/héllo wörld+%.bin")
    assert await api.object_exists("dir/héllo wörld+%.bin") is False
    with pytest.raises(ServiceError) as info:
        await api.get_object("dir/héllo wörld+%.bin")
    assert info.value.status == 404 and info.value.code == "NoSuchKey"


@pytest.mark.parametrize("key", ["a//b///c", "trailing/", "x/./y/../z", "杭州/😀 key", "q?#&=.txt"])
async def test_awkward_keys_round_trip(api: Api, key: str) -> None:
    await api.put_object(key, key.encode())
    assert await api.get_object(key) == key.encode()


async def test_every_data_shape(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    payload = os.urandom(2 * 1024 * 1024 + 17)
    path.write_bytes(payload)

    def gen() -> Iterator[bytes]:
        yield b"abc"
        yield b""
        yield b"def"

    async def agen() -> AsyncIterator[bytes]:
        yield b"123"
        yield b"456"

    cases: list[tuple[str, Any, bytes]] = [
        ("bytes", b"raw", b"raw"),
        ("str", "text é", "text é".encode()),
        ("bytearray", bytearray(b"ba"), b"ba"),
        ("memoryview", memoryview(b"mv"), b"mv"),
        ("fileobj", io.BytesIO(b"from file object"), b"from file object"),
        ("iter", gen(), b"abcdef"),
        ("empty", b"", b""),
    ]
    if api.is_async:
        cases.append(("aiter", agen(), b"123456"))
    for name, data, expected in cases:
        result = await api.put_object(f"shape/{name}", data)
        assert await api.get_object(f"shape/{name}") == expected, name
        assert result.size == len(expected), name
    progress: list[tuple[int, int | None]] = []
    await api.put_object("shape/file", file=path, progress=lambda d, t: progress.append((d, t)))
    assert await api.get_object("shape/file") == payload
    assert progress[-1] == (len(payload), len(payload))
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    with path.open("rb") as f:
        f.seek(10)
        await api.put_object("shape/seeked", f)
    assert await api.get_object("shape/seeked") == payload[10:]


async def test_range_get_and_get_to_file(api: Api, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    await api.put_object("r", data)
    assert await api.get_object("r", byte_range=(10, 19)) == data[10:20]
    assert await api.get_object("r", byte_range=(99_990, None)) == data[99_990:]
    target = tmp_path / "out.bin"
    head = await api.get_object_to_file("r", target)
    assert target.read_bytes() == data
    assert head.size == len(data)
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temp file left


async def test_put_with_callback_reaches_the_server_once(
    api: Api, callback_receiver: CallbackReceiver, bucket_name: str
) -> None:
    cb = Callback(
        callback_receiver.url + "/hooks/upload",
        query={"source": "test suite"},
        body="bucket=${bucket}&object=${object}&size=${size}&etag=${etag}&uid=${x:uid}",
        variables={"x:uid": "42"},
    )
    callback_receiver.respond(body=b'{"Status":"OK","id":7}')
    result = await api.put_object("cb/form.txt", b"hello callback", callback=cb)
    assert result.callback_status == 200
    assert result.callback_body == b'{"Status":"OK","id":7}'
    assert result.callback_json() == {"Status": "OK", "id": 7}
    (received,) = callback_receiver.received
    assert received.path == "/hooks/upload"
    assert received.query == "source=test+suite"
    fields = form_fields(received.body)
    assert fields == {"bucket": bucket_name, "object": "cb/form.txt", "size": "14",
                      "etag": result.etag, "uid": "42"}
    assert received.headers["authorization"]
    assert received.headers["x-oss-pub-key-url"]


async def test_json_callback_body(api: Api, callback_receiver: CallbackReceiver) -> None:
    cb = Callback(callback_receiver.url, body='{"object":${object},"size":${size}}',
                  body_type="application/json")
    await api.put_object("cb/json", b"12345", callback=cb)
    (received,) = callback_receiver.received
    assert received.headers["content-type"].startswith("application/json")
    assert json_body(received.body) == {"object": "cb/json", "size": 5}


@pytest.mark.parametrize(
    ("status", "reply", "message"),
    [(500, b'{"error":"boom"}', "500"), (200, b"not json", "json")],
)
async def test_failing_callback_raises_callback_error_and_keeps_the_object(
    api: Api, callback_receiver: CallbackReceiver, status: int, reply: bytes, message: str
) -> None:
    callback_receiver.respond(status=status, body=reply)
    data = b"stored despite the callback"
    with pytest.raises(CallbackError) as info:
        await api.put_object("cb/fails", data, callback=Callback(callback_receiver.url))
    err = info.value
    assert err.status == 203 and err.code == "CallbackFailed"
    assert message in err.message.lower()
    assert err.result.etag == hashlib.md5(data).hexdigest().upper()
    assert err.result.crc64 is not None
    assert await api.get_object("cb/fails") == data  # the object IS stored


async def test_callback_receiver_down_is_a_callback_error(api: Api) -> None:
    with pytest.raises(CallbackError, match="connect"):
        await api.put_object("cb/down", b"x", callback=Callback("http://127.0.0.1:9/nothing"))
    assert await api.object_exists("cb/down")


async def test_wrong_secret_is_rejected_with_a_hint(oss_emulator: Any, bucket_name: str) -> None:
    from oss_callback import AsyncClient

    oss_emulator.create_bucket(bucket_name)
    async with AsyncClient(oss_emulator.endpoint, oss_emulator.access_key_id, "wrong-secret",
                           region=oss_emulator.region) as client:
        with pytest.raises(ServiceError) as info:
            await client.get_bucket(bucket_name).put_object("k", b"x")
    assert info.value.status == 403
    assert info.value.code == "SignatureDoesNotMatch"
    assert "secret" in str(info.value)
    assert "wrong-secret" not in str(info.value)
    assert info.value.details.get("StringToSign")


async def test_v1_and_sts(oss_emulator: Any, bucket_name: str) -> None:
    from oss_callback import AsyncClient

    oss_emulator.create_bucket(bucket_name)
    ak, sk, token = oss_emulator.issue_sts_token()
    for version in ("v1", "v4"):
        async with AsyncClient(oss_emulator.endpoint, ak, sk, security_token=token,
                               region=oss_emulator.region, signature_version=version) as c:
            b = c.get_bucket(bucket_name)
            await b.put_object(f"sts/{version}", version.encode())
            assert await b.get_object(f"sts/{version}") == version.encode()


async def test_corrupted_crc_from_server_is_detected(
    api: Api, oss_emulator: Any
) -> None:
    oss_emulator.faults.add(operation="PutObject", corrupt_crc=True, times=None)
    with pytest.raises(InconsistentError):
        await api.put_object("crc/bad", b"data")
