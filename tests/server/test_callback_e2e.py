"""End to end: upload to the OSS emulator with a callback to a FastAPI app under uvicorn.

The emulator signs its callback POSTs with its own RSA key and serves the public key at a
URL on itself; the app verifies them with ``oss_callback.fastapi`` either with that key
pinned or by fetching it (the emulator's host allowed).
"""

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI

from oss_callback import AsyncClient, Callback, CallbackError, RetryPolicy
from oss_callback.fastapi import callback_dependency
from oss_callback.server import CallbackVerifier, VerifiedCallback
from oss_callback.testing import ServeASGI

testing = pytest.importorskip("oss_callback.testing")
OSSEmulator = testing.OSSEmulator

_names = itertools.count()


class CallbackApp:
    """A FastAPI callback server that records what its handlers saw."""

    def __init__(self, verifier: CallbackVerifier | None) -> None:
        self.calls: list[VerifiedCallback] = []
        self.app = FastAPI()
        verified = callback_dependency(verifier)

        @self.app.post("/oss-callback")
        async def on_upload(cb: Annotated[VerifiedCallback, Depends(verified)]) -> dict[str, Any]:
            self.calls.append(cb)
            return {"Status": "OK", "object": cb["object"], "size": cb.get("size"),
                    "uid": cb.get("uid"), "src": cb.query.get("src")}

        @self.app.post("/hooks/{name}")
        async def hook(name: str, cb: Annotated[VerifiedCallback, Depends(verified)]
                       ) -> dict[str, Any]:
            self.calls.append(cb)
            return {"name": name, "fields": cb.fields}

        @self.app.post("/boom")
        async def boom(cb: Annotated[VerifiedCallback, Depends(verified)]) -> dict[str, Any]:
            self.calls.append(cb)
            raise RuntimeError("the application failed")


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    with OSSEmulator() as emulator:
        yield emulator


@pytest.fixture
def bucket_name(emu: Any) -> str:
    name = f"e2e-callbacks-{next(_names)}"
    emu.create_bucket(name)
    return name


def client_for(emu: Any) -> AsyncClient:
    return AsyncClient(emu.endpoint, emu.access_key_id, emu.access_key_secret,
                       region=emu.region, retry=RetryPolicy.no_wait())


def key_host(emu: Any) -> str:
    return httpx.URL(emu.endpoint).netloc.decode()


FORM_TEMPLATE = "bucket=${bucket}&object=${object}&size=${size}&etag=${etag}&uid=${x:uid}"


def key_fetches(emu: Any) -> int:
    return sum(1 for r in emu.requests if r.operation == "GetCallbackPublicKey")


async def test_upload_with_callback_verified_by_the_pinned_key(
    emu: Any, bucket_name: str
) -> None:
    server = CallbackApp(CallbackVerifier(public_key=emu.public_key_pem))
    data = b"hello, callback" * 100
    with ServeASGI(server.app) as app:
        cb = Callback(app.url + "/oss-callback", query={"src": "e2e"}, body=FORM_TEMPLATE,
                      variables={"x:uid": "42"})
        async with client_for(emu) as client:
            result = await client.get_bucket(bucket_name).put_object("dir/a b+c.txt", data,
                                                                     callback=cb)
    assert len(server.calls) == 1
    seen = server.calls[0]
    assert seen.fields["bucket"] == bucket_name
    assert seen.fields["object"] == "dir/a b+c.txt"
    assert seen.fields["size"] == str(len(data))
    assert seen.fields["uid"] == "42"
    assert seen.fields["etag"].strip('"').upper() == result.etag.upper()
    assert seen.query == {"src": "e2e"}
    assert seen.key_url is None
    assert result.callback_status == 200
    assert result.callback_json() == {"Status": "OK", "object": "dir/a b+c.txt",
                                      "size": str(len(data)), "uid": "42", "src": "e2e"}


async def test_upload_with_callback_verified_by_fetching_the_emulator_key(
    emu: Any, bucket_name: str
) -> None:
    server = CallbackApp(CallbackVerifier(allowed_key_hosts=(key_host(emu),)))
    before = key_fetches(emu)
    with ServeASGI(server.app) as app:
        async with client_for(emu) as client:
            bucket = client.get_bucket(bucket_name)
            for i in range(3):
                cb = Callback(app.url + "/oss-callback", body=FORM_TEMPLATE,
                              variables={"x:uid": str(i)})
                result = await bucket.put_object(f"k{i}", b"x" * (i + 1), callback=cb)
                assert result.callback_json()["uid"] == str(i)  # type: ignore[index]
    assert [c.fields["size"] for c in server.calls] == ["1", "2", "3"]
    assert {c.key_url for c in server.calls} == {emu.public_key_url}
    assert key_fetches(emu) - before == 1  # fetched once, then cached


async def test_json_callback_body_and_path_parameters(emu: Any, bucket_name: str) -> None:
    server = CallbackApp(CallbackVerifier(public_key=emu.public_key_pem))
    template = '{"bucket":${bucket},"object":${object},"size":${size},"uid":${x:uid}}'
    with ServeASGI(server.app) as app:
        cb = Callback(app.url + "/hooks/up%20load", body=template,
                      body_type="application/json", variables={"x:uid": "7"})
        async with client_for(emu) as client:
            result = await client.get_bucket(bucket_name).put_object("j.json", b"{}",
                                                                     callback=cb)
    assert result.callback_json() == {
        "name": "up load",
        "fields": {"bucket": bucket_name, "object": "j.json", "size": 2, "uid": "7"},
    }
    assert server.calls[0].content_type == "application/json"


async def test_resumable_upload_callback_on_complete(
    emu: Any, bucket_name: str, tmp_path: Path
) -> None:
    server = CallbackApp(CallbackVerifier(public_key=emu.public_key_pem))
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 1600)  # 400 KiB: 4 parts of 100 KiB
    with ServeASGI(server.app) as app:
        cb = Callback(app.url + "/oss-callback", body=FORM_TEMPLATE, variables={"x:uid": "mp"})
        async with client_for(emu) as client:
            result = await client.get_bucket(bucket_name).resumable_upload(
                "big.bin", path, callback=cb, part_size=100 * 1024, disable_checkpoint=True
            )
    assert result.upload_id is not None
    assert result.callback_json()["size"] == str(400 * 1024)  # type: ignore[index]
    assert server.calls[0].fields["uid"] == "mp"


async def test_handler_failure_gives_the_uploader_a_callback_error(
    emu: Any, bucket_name: str
) -> None:
    server = CallbackApp(CallbackVerifier(public_key=emu.public_key_pem))
    with ServeASGI(server.app) as app:
        cb = Callback(app.url + "/boom", body=FORM_TEMPLATE, variables={"x:uid": "1"})
        async with client_for(emu) as client:
            bucket = client.get_bucket(bucket_name)
            with pytest.raises(CallbackError) as info:
                await bucket.put_object("stored-anyway", b"data!", callback=cb)
            head = await bucket.head_object("stored-anyway")
    assert len(server.calls) == 1  # verified, then the handler raised
    assert info.value.status == 203
    assert info.value.code == "CallbackFailed"
    assert info.value.result.key == "stored-anyway"
    assert head.size == 5
    assert head.etag == info.value.result.etag


async def test_unverifiable_callback_is_refused_and_the_uploader_told(
    emu: Any, bucket_name: str
) -> None:
    # The default verifier only trusts gosspublic.alicdn.com, not the emulator's key URL.
    server = CallbackApp(None)
    before = key_fetches(emu)
    with ServeASGI(server.app) as app:
        cb = Callback(app.url + "/oss-callback", body=FORM_TEMPLATE, variables={"x:uid": "1"})
        async with client_for(emu) as client:
            bucket = client.get_bucket(bucket_name)
            with pytest.raises(CallbackError) as info:
                await bucket.put_object("refused", b"abc", callback=cb)
            assert await bucket.object_exists("refused")
    assert server.calls == []  # refused before the handler
    assert "400" in info.value.message
    assert key_fetches(emu) == before  # the key URL was not allowed: nothing fetched
