"""The emulator driven by the official ``alibabacloud-oss-v2`` SDK (its CRC checks on)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

import alibabacloud_oss_v2 as oss
import httpx
import pytest

from oss_callback.protocol._crc64 import crc64
from oss_callback.testing import CallbackReceiver, OSSEmulator

pytestmark = pytest.mark.oracle

PART = 100 * 1024
ClientFactory = Callable[..., oss.Client]


@pytest.fixture
def make_client(oss_emulator: OSSEmulator, oss_bucket: str) -> ClientFactory:
    def make(
        signature_version: str = "v4",
        *,
        sts: bool = False,
        secret: str | None = None,
        region: str | None = None,
    ) -> oss.Client:
        if sts:
            ak, sk, token = oss_emulator.issue_sts_token()
            provider = oss.credentials.StaticCredentialsProvider(ak, sk, token)
        else:
            provider = oss.credentials.StaticCredentialsProvider(
                oss_emulator.access_key_id, secret or oss_emulator.access_key_secret
            )
        cfg = oss.config.load_default()
        cfg.credentials_provider = provider
        cfg.region = region or oss_emulator.region
        cfg.endpoint = oss_emulator.endpoint
        cfg.use_path_style = True
        cfg.signature_version = signature_version
        cfg.retry_max_attempts = 1
        return oss.Client(cfg)

    return make


def b64json(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    ("version", "sts"), [("v1", False), ("v4", False), ("v1", True), ("v4", True)]
)
def test_put_get_head_delete(
    make_client: ClientFactory, oss_bucket: str, version: str, sts: bool
) -> None:
    client = make_client(version, sts=sts)
    key = "dir/ü n+i=c&o?de.txt"
    data = os.urandom(5000)
    put = client.put_object(
        oss.PutObjectRequest(
            bucket=oss_bucket,
            key=key,
            body=data,
            content_type="text/plain",
            metadata={"color": "blue"},
        )
    )
    assert put.status_code == 200
    assert put.hash_crc64 == str(crc64(data))  # the SDK also checked it
    got = client.get_object(oss.GetObjectRequest(bucket=oss_bucket, key=key))
    assert got.body.read() == data
    assert got.metadata == {"color": "blue"}
    assert got.content_type == "text/plain"
    head = client.head_object(oss.HeadObjectRequest(bucket=oss_bucket, key=key))
    assert head.content_length == len(data)
    assert head.etag == put.etag
    assert client.is_object_exist(oss_bucket, key)
    client.delete_object(oss.DeleteObjectRequest(bucket=oss_bucket, key=key))
    assert not client.is_object_exist(oss_bucket, key)
    with pytest.raises(oss.exceptions.OperationError) as info:
        client.get_object(oss.GetObjectRequest(bucket=oss_bucket, key=key))
    assert info.value.unwrap().code == "NoSuchKey"
    with pytest.raises(oss.exceptions.OperationError) as info:
        client.head_object(oss.HeadObjectRequest(bucket=oss_bucket, key=key))
    assert info.value.unwrap().code == "NoSuchKey"  # decoded from x-oss-err


def test_delete_multiple_objects(make_client: ClientFactory, oss_bucket: str) -> None:
    client = make_client()
    for key in ("x/1", "x/2 ü", "y"):
        client.put_object(oss.PutObjectRequest(bucket=oss_bucket, key=key, body=b"1"))
    result = client.delete_multiple_objects(
        oss.DeleteMultipleObjectsRequest(
            bucket=oss_bucket,
            objects=[oss.DeleteObject(key="x/1"), oss.DeleteObject(key="x/2 ü")],
        )
    )
    assert sorted(d.key for d in result.deleted_objects or []) == ["x/1", "x/2 ü"]
    assert not client.is_object_exist(oss_bucket, "x/1")
    assert client.is_object_exist(oss_bucket, "y")


def test_range_get(make_client: ClientFactory, oss_bucket: str) -> None:
    client = make_client()
    client.put_object(oss.PutObjectRequest(bucket=oss_bucket, key="r", body=b"0123456789"))
    got = client.get_object(
        oss.GetObjectRequest(bucket=oss_bucket, key="r", range_header="bytes=3-6")
    )
    assert got.status_code == 206
    assert got.body.read() == b"3456"
    assert got.content_range == "bytes 3-6/10"


def test_list_v1_and_v2(make_client: ClientFactory, oss_bucket: str) -> None:
    client = make_client()
    keys = ["a/1", "a/2", "b c/3", "plus+key", "top", "é/x"]
    for key in keys:
        client.put_object(oss.PutObjectRequest(bucket=oss_bucket, key=key, body=b"1"))
    v1 = [
        o.key
        for page in client.list_objects_paginator().iter_page(
            oss.ListObjectsRequest(bucket=oss_bucket, max_keys=2)
        )
        for o in page.contents or []
    ]
    assert v1 == sorted(keys)
    pages = list(
        client.list_objects_v2_paginator().iter_page(
            oss.ListObjectsV2Request(bucket=oss_bucket, max_keys=2, delimiter="/")
        )
    )
    assert len(pages) == 3
    entries = [o.key for p in pages for o in p.contents or []]
    entries += [c.prefix for p in pages for c in p.common_prefixes or []]
    assert sorted(entries) == ["a/", "b c/", "plus+key", "top", "é/"]


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_uploader_and_downloader(
    make_client: ClientFactory, oss_bucket: str, tmp_path: Path, version: str
) -> None:
    client = make_client(version)
    data = os.urandom(4 * PART + 999)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    uploader = client.uploader(part_size=PART, parallel_num=2)
    result = uploader.upload_file(
        oss.PutObjectRequest(bucket=oss_bucket, key="big/f"), filepath=str(src)
    )
    assert result.status_code == 200
    assert result.upload_id  # multipart was used
    assert result.hash_crc64 == str(crc64(data))  # Uploader compared combined part CRCs too
    dst = tmp_path / "dst.bin"
    downloader = client.downloader(part_size=PART, parallel_num=2)
    downloader.download_file(
        oss.GetObjectRequest(bucket=oss_bucket, key="big/f"), filepath=str(dst)
    )
    assert dst.read_bytes() == data


def test_uploader_with_callback(
    make_client: ClientFactory,
    oss_bucket: str,
    tmp_path: Path,
    callback_receiver: CallbackReceiver,
    oss_emulator: OSSEmulator,
) -> None:
    client = make_client()
    data = os.urandom(2 * PART + 5)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    callback = b64json(
        {
            "callbackUrl": callback_receiver.url + "/up",
            "callbackBody": "object=${object}&size=${size}&uid=${x:uid}",
        }
    )
    result = client.uploader(part_size=PART, parallel_num=2).upload_file(
        oss.PutObjectRequest(
            bucket=oss_bucket, key="cb/up", callback=callback, callback_var=b64json({"x:uid": "42"})
        ),
        filepath=str(src),
    )
    assert result.status_code == 200
    assert result.upload_id
    (got,) = callback_receiver.wait_for(1)
    assert parse_qs(got.body.decode()) == {
        "object": ["cb/up"],
        "size": [str(len(data))],
        "uid": ["42"],
    }
    assert [r.operation for r in oss_emulator.requests if r.headers.get("x-oss-callback")] == [
        "CompleteMultipartUpload"
    ]
    assert oss_emulator.get_object(oss_bucket, "cb/up") == data


def test_put_with_callback_and_203(
    make_client: ClientFactory, oss_bucket: str, callback_receiver: CallbackReceiver
) -> None:
    client = make_client()
    callback = b64json(
        {
            "callbackUrl": callback_receiver.url,
            "callbackBody": '{"key":${object},"v":${x:v}}',
            "callbackBodyType": "application/json",
        }
    )
    ok = client.put_object(
        oss.PutObjectRequest(
            bucket=oss_bucket,
            key="cb/json",
            body=b"data",
            callback=callback,
            callback_var=b64json({"x:v": "x"}),
        )
    )
    assert ok.status_code == 200
    assert json.loads(ok.callback_result) == {"Status": "OK"}  # v2 keeps the raw text
    assert json.loads(callback_receiver.wait_for(1)[0].body) == {"key": "cb/json", "v": "x"}

    callback_receiver.respond(body=b"not json")
    failed = client.put_object(
        oss.PutObjectRequest(bucket=oss_bucket, key="cb/failed", body=b"data", callback=callback)
    )
    assert failed.status_code == 203  # v2 returns 203 as success
    assert "CallbackFailed" in str(failed.callback_result)
    assert client.is_object_exist(oss_bucket, "cb/failed")


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_wrong_secret_is_rejected(
    make_client: ClientFactory, oss_bucket: str, version: str
) -> None:
    client = make_client(version, secret="not-the-secret")
    with pytest.raises(oss.exceptions.OperationError) as info:
        client.put_object(oss.PutObjectRequest(bucket=oss_bucket, key="k", body=b"x"))
    error = info.value.unwrap()
    assert error.status_code == 403
    assert error.code == "SignatureDoesNotMatch"
    assert "StringToSign" in error.error_fileds  # (sic: the SDK's spelling)
    assert error.ec == "0002-00000040"


def test_wrong_region_is_rejected(make_client: ClientFactory, oss_bucket: str) -> None:
    client = make_client(region="cn-shanghai")
    with pytest.raises(oss.exceptions.OperationError) as info:
        client.put_object(oss.PutObjectRequest(bucket=oss_bucket, key="k", body=b"x"))
    assert info.value.unwrap().status_code == 403
    assert "cn-shanghai" in info.value.unwrap().message


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_presign(make_client: ClientFactory, oss_bucket: str, version: str) -> None:
    client = make_client(version)
    put = client.presign(oss.PutObjectRequest(bucket=oss_bucket, key="ps/k"))
    r = httpx.put(put.url, content=b"presigned", headers=put.signed_headers or {}, trust_env=False)
    assert r.status_code == 200, r.text
    get = client.presign(oss.GetObjectRequest(bucket=oss_bucket, key="ps/k"))
    assert httpx.get(get.url, trust_env=False).content == b"presigned"
