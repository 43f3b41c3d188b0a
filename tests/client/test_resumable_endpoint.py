"""Checkpoints belong to the upload, not the endpoint; and how the emulator tells
virtual-hosted from path-style requests (a missing bucket is ``NoSuchBucket`` either way).

The emulator is one server reached under two endpoint strings, ``http://127.0.0.1:PORT`` and
``http://localhost:PORT`` (both path-style, with its region), as one bucket is reached
through its internal and public endpoints, a CNAME or a proxy.
"""

from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import oss2
import pytest
import requests
from support.emulator_helpers import error_code, error_field
from support.reliability_helpers import PART, assert_stored_exactly, open_api, records, write_file

from oss_callback import CheckpointError, ServiceError
from oss_callback.client._checkpoint import default_checkpoint_path, legacy_checkpoint_path
from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._endpoint import encode_key
from oss_callback.protocol._signing import sign_v1, sign_v4
from oss_callback.testing import OSSEmulator

BUCKET = "test-bucket"
PARTS = 8


class Stop(Exception):
    """Raised from a progress callback: the run dies mid-upload (parts stay on OSS)."""


def stop_after(parts: int) -> Any:
    def progress(done: int, total: int | None) -> None:
        if done >= parts * PART:
            raise Stop

    return progress


def localhost(emu: OSSEmulator) -> str:
    endpoint = emu.endpoint.replace("://127.0.0.1:", "://localhost:")
    assert endpoint != emu.endpoint
    return endpoint


@pytest.fixture(params=["async", "sync"])
def facade(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Default checkpoints go here (the per-user folder, for this test only)."""
    state = tmp_path / "state"
    monkeypatch.setenv("OSS_CALLBACK_STATE_DIR", str(state))
    return state


async def interrupted_upload(emu: OSSEmulator, facade: str, src: Path, key: str = "big.bin",
                             **kwargs: Any) -> str:
    """Start ``src`` through 127.0.0.1 and kill the run after 3 parts: the upload id."""
    async with open_api(emu, BUCKET, facade) as api:
        with pytest.raises(Stop):
            await api.resumable_upload(key, src, part_size=PART, concurrency=1,
                                       progress=stop_after(3), **kwargs)
    (upload_id,) = emu.list_uploads(BUCKET)
    return upload_id


# --------------------------------------------------------------------------- resuming


@pytest.mark.parametrize("where", ["default", "explicit"])
async def test_upload_killed_through_one_endpoint_finishes_through_another(
    oss_emulator: OSSEmulator, oss_bucket: str, facade: str, state_dir: Path, tmp_path: Path,
    where: str,
) -> None:
    src = tmp_path / "big.bin"
    data = write_file(src, PARTS * PART)
    kwargs: dict[str, Any] = {}
    if where == "explicit":
        kwargs["checkpoint_file"] = tmp_path / "big.ckpt"
    upload_id = await interrupted_upload(oss_emulator, facade, src, **kwargs)
    stored = {int(dict(r.query)["partNumber"]) for r in records(oss_emulator, "UploadPart")
              if r.status == 200}
    assert 2 <= len(stored) < PARTS
    mark = len(oss_emulator.requests)

    async with open_api(oss_emulator, BUCKET, facade, endpoint=localhost(oss_emulator)) as api:
        result = await api.resumable_upload("big.bin", src, part_size=PART, concurrency=2,
                                            **kwargs)

    assert result.upload_id == upload_id  # the same multipart upload, continued
    resent = {int(dict(r.query)["partNumber"]) for r in
              records(oss_emulator, "UploadPart", since=mark)}
    assert resent == set(range(1, PARTS + 1)) - stored  # stored parts were not sent again
    assert records(oss_emulator, "InitiateMultipartUpload", since=mark) == []
    assert records(oss_emulator, "AbortMultipartUpload", since=mark) == []
    assert_stored_exactly(oss_emulator, BUCKET, "big.bin", data)
    assert oss_emulator.list_uploads() == []
    assert not any(state_dir.glob("*.json")) and not (tmp_path / "big.ckpt").exists()


async def test_upload_gone_at_the_other_endpoint_restarts_cleanly(
    oss_emulator: OSSEmulator, oss_bucket: str, facade: str, state_dir: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As if the other endpoint reached another bucket of the same name (another region):
    # the upload id is unknown there.
    src = tmp_path / "big.bin"
    data = write_file(src, PARTS * PART)
    upload_id = await interrupted_upload(oss_emulator, facade, src)
    async with open_api(oss_emulator, BUCKET, facade) as api:
        await api.abort_multipart_upload("big.bin", upload_id)
    mark = len(oss_emulator.requests)

    with caplog.at_level(logging.WARNING, logger="oss_callback"):
        async with open_api(oss_emulator, BUCKET, facade,
                            endpoint=localhost(oss_emulator)) as api:
            result = await api.resumable_upload("big.bin", src, part_size=PART)

    assert result.upload_id != upload_id
    assert len(records(oss_emulator, "InitiateMultipartUpload", since=mark)) == 1
    assert len(records(oss_emulator, "UploadPart", since=mark)) == PARTS
    assert_stored_exactly(oss_emulator, BUCKET, "big.bin", data)
    assert not any(state_dir.glob("*.json"))
    (warning,) = [r.getMessage() for r in caplog.records if upload_id in r.getMessage()]
    assert f"begun through {oss_emulator.endpoint}" in warning
    assert f"abort-uploads oss://{BUCKET}/big.bin --endpoint {oss_emulator.endpoint}" in warning


async def test_checkpoint_at_its_old_per_endpoint_default_path_is_adopted(
    oss_emulator: OSSEmulator, oss_bucket: str, facade: str, state_dir: Path, tmp_path: Path,
) -> None:
    # Earlier versions named the default checkpoint after the endpoint too: an upload they
    # began resumes after the upgrade (through that endpoint or any other).
    src = tmp_path / "big.bin"
    data = write_file(src, PARTS * PART)
    upload_id = await interrupted_upload(oss_emulator, facade, src)
    new = Path(default_checkpoint_path(BUCKET, "big.bin", str(src)))
    old = Path(legacy_checkpoint_path(oss_emulator.endpoint, BUCKET, "big.bin", str(src)))
    assert new.exists() and new != old
    shutil.move(new, old)
    mark = len(oss_emulator.requests)

    async with open_api(oss_emulator, BUCKET, facade) as api:
        result = await api.resumable_upload("big.bin", src, part_size=PART)

    assert result.upload_id == upload_id
    assert len(records(oss_emulator, "UploadPart", since=mark)) < PARTS
    assert_stored_exactly(oss_emulator, BUCKET, "big.bin", data)
    assert not old.exists() and not new.exists()


async def test_foreign_checkpoint_error_says_how_to_abort_its_upload(
    oss_emulator: OSSEmulator, oss_bucket: str, facade: str, state_dir: Path, tmp_path: Path,
) -> None:
    src = tmp_path / "big.bin"
    write_file(src, PARTS * PART)
    ckpt = tmp_path / "shared.ckpt"
    upload_id = await interrupted_upload(oss_emulator, facade, src, key="theirs.bin",
                                         checkpoint_file=ckpt)
    async with open_api(oss_emulator, BUCKET, facade, endpoint=localhost(oss_emulator)) as api:
        with pytest.raises(CheckpointError) as info:
            await api.resumable_upload("mine.bin", src, part_size=PART, checkpoint_file=ckpt)
        message = str(info.value)
        assert "another upload" in message and upload_id in message
        assert (f"oss-callback abort-uploads oss://{BUCKET}/theirs.bin --endpoint "
                f"{oss_emulator.endpoint}") in message
        assert f"abort_multipart_upload('theirs.bin', '{upload_id}')" in message
        assert oss_emulator.list_uploads() == [upload_id]  # refused, nothing touched
        await api.abort_multipart_upload("theirs.bin", upload_id)  # the hint works
    assert oss_emulator.list_uploads() == []


# --------------------------------------------------------------------------- addressing


def signed(emu: OSSEmulator, method: str, bucket: str, key: str | None, host: str,
           version: str, body: bytes = b"") -> httpx.Response:
    """One request signed by the SDK's signer for ``bucket``/``key``, sent to the emulator
    with ``Host: host`` (virtual-hosted when ``host`` starts with the bucket)."""
    headers = {"Host": host}
    creds = Credentials(access_key_id=emu.access_key_id, access_key_secret=emu.access_key_secret)
    now = datetime.now(timezone.utc)
    if version == "v1":
        sign_v1(method, bucket, key, [], headers, creds, now)
    else:
        sign_v4(method, bucket, key, [], headers, creds, now, emu.region)
    virtual = host.startswith(bucket + ".")
    path = "/" + ("" if virtual else bucket + "/") + (encode_key(key) if key else "")
    with httpx.Client(trust_env=False, timeout=30) as client:
        return client.request(method, emu.endpoint + path, headers=headers, content=body)


@pytest.mark.parametrize("version", ["v1", "v4"])
@pytest.mark.parametrize("style", ["localhost", "oss-name", "path"])
def test_a_missing_bucket_is_no_such_bucket_in_every_addressing_style(
    oss_emulator: OSSEmulator, oss_bucket: str, version: str, style: str
) -> None:
    # Before: "<bucket>.localhost" for a bucket that doesn't exist fell back to path style,
    # the signature (made for that bucket) didn't match, and the answer was 403
    # SignatureDoesNotMatch, sending a user with a mistyped bucket name after their keys.
    port = oss_emulator.port
    host = {"localhost": f"typo-bucket.localhost:{port}",
            "oss-name": f"typo-bucket.oss-{oss_emulator.region}.aliyuncs.com",
            "path": f"127.0.0.1:{port}"}[style]
    for method, key in (("GET", "k"), ("PUT", "k"), ("GET", None)):
        r = signed(oss_emulator, method, "typo-bucket", key, host, version)
        assert (r.status_code, error_code(r)) == (404, "NoSuchBucket"), (method, key, r.text)
        assert error_field(r, "BucketName") == "typo-bucket"
    # the same host shape reaches an existing bucket
    host = host.replace("typo-bucket", oss_bucket)
    r = signed(oss_emulator, "PUT", oss_bucket, "dir/k", host, version, body=b"addressed")
    assert r.status_code == 200, r.text
    assert oss_emulator.get_object(oss_bucket, "dir/k") == b"addressed"
    (put,) = [r for r in records(oss_emulator, "PutObject") if r.status == 200]
    assert (put.bucket, put.key) == (oss_bucket, "dir/k")


def test_endpoint_hosts_themselves_are_path_style(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    for host in (f"localhost:{oss_emulator.port}", f"oss-{oss_emulator.region}.aliyuncs.com",
                 f"127.0.0.1:{oss_emulator.port}"):
        r = signed(oss_emulator, "PUT", oss_bucket, "p", host, "v4", body=host.encode())
        assert r.status_code == 200, (host, r.text)
        assert oss_emulator.get_object(oss_bucket, "p") == host.encode()


class LoopbackTransport(httpx.AsyncBaseTransport):
    """Connects every request to the emulator, keeping its Host header (``*.localhost``
    names don't resolve here)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(host="127.0.0.1", port=self.port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_sdk_virtual_hosted_addressing_and_a_mistyped_bucket(
    oss_emulator: OSSEmulator, oss_bucket: str, facade: str
) -> None:
    endpoint = localhost(oss_emulator)
    transport = LoopbackTransport(oss_emulator.port)
    async with open_api(oss_emulator, oss_bucket, facade, endpoint=endpoint, path_style=False,
                        transport=transport) as api:
        await api.put_object("vh.txt", b"virtual")
        assert await api.get_object("vh.txt") == b"virtual"
    (put,) = records(oss_emulator, "PutObject")
    assert put.headers["host"] == f"{oss_bucket}.localhost:{oss_emulator.port}"
    assert put.path == "/vh.txt"
    async with open_api(oss_emulator, "typo-bucket", facade, endpoint=endpoint,
                        path_style=False, transport=LoopbackTransport(oss_emulator.port)) as api:
        with pytest.raises(ServiceError) as info:
            await api.put_object("vh.txt", b"virtual")
    assert (info.value.status, info.value.code) == (404, "NoSuchBucket")


class _LoopbackAdapter(requests.adapters.HTTPAdapter):
    """requests (under oss2): send to the emulator, keep the virtual-hosted Host."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def send(  # type: ignore[override]
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        assert request.url is not None
        parts = urlsplit(request.url)
        request.headers["Host"] = parts.netloc
        request.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{self.port}"))
        return super().send(request, **kwargs)


@pytest.mark.oracle
@pytest.mark.parametrize("auth", ["v1", "v4"])
def test_oss2_virtual_hosted_and_a_mistyped_bucket(
    oss_emulator: OSSEmulator, oss_bucket: str, auth: str
) -> None:
    session = oss2.Session(adapter=_LoopbackAdapter(oss_emulator.port))
    session.session.trust_env = False
    keys = (oss_emulator.access_key_id, oss_emulator.access_key_secret)
    endpoint = f"http://oss-{oss_emulator.region}.aliyuncs.com"

    def bucket(name: str) -> oss2.Bucket:
        a = oss2.Auth(*keys) if auth == "v1" else oss2.AuthV4(*keys)
        return oss2.Bucket(a, endpoint, name, session=session, region=oss_emulator.region)

    data = os.urandom(1000)
    bucket(oss_bucket).put_object("o2.bin", data)
    assert bucket(oss_bucket).get_object("o2.bin").read() == data
    (put,) = records(oss_emulator, "PutObject")
    assert put.headers["host"] == f"{oss_bucket}.oss-{oss_emulator.region}.aliyuncs.com"
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        bucket("typo-bucket").put_object("o2.bin", data)
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        bucket("typo-bucket").get_object("o2.bin")
