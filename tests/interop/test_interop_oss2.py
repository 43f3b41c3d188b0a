"""The emulator driven by the official ``oss2`` SDK (its own CRC checks on)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import oss2
import pytest

from oss_callback.protocol._crc64 import crc64
from oss_callback.testing import CallbackReceiver, OSSEmulator

pytestmark = pytest.mark.oracle

PART = 100 * 1024
BucketFactory = Callable[..., oss2.Bucket]


@pytest.fixture
def make_bucket(oss_emulator: OSSEmulator, oss_bucket: str) -> BucketFactory:
    def make(auth: str = "v4", secret: str | None = None) -> oss2.Bucket:
        ak, sk = oss_emulator.access_key_id, secret or oss_emulator.access_key_secret
        if auth == "v1":
            a: oss2.AuthBase = oss2.Auth(ak, sk)
        elif auth == "v4":
            a = oss2.AuthV4(ak, sk)
        elif auth == "sts-v1":
            sts = oss_emulator.issue_sts_token()
            a = oss2.StsAuth(sts.access_key_id, sts.access_key_secret, sts.security_token)
        else:
            sts = oss_emulator.issue_sts_token()
            a = oss2.StsAuth(
                sts.access_key_id,
                sts.access_key_secret,
                sts.security_token,
                auth_version=oss2.AUTH_VERSION_4,
            )
        return oss2.Bucket(
            a, oss_emulator.endpoint, oss_bucket, region=oss_emulator.region, enable_crc=True
        )

    return make


def b64json(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize("auth", ["v1", "v4", "sts-v1", "sts-v4"])
def test_put_get_head_delete(make_bucket: BucketFactory, auth: str) -> None:
    bucket = make_bucket(auth)
    key = "dir/ü n+i=c&o?de.txt"
    data = os.urandom(3000)
    result = bucket.put_object(key, data, headers={"x-oss-meta-color": "blue"})
    assert result.status == 200
    assert result.crc == crc64(data)
    got = bucket.get_object(key)
    assert got.read() == data  # oss2 checks the CRC of the full read
    assert got.headers["x-oss-meta-color"] == "blue"
    head = bucket.head_object(key)
    assert head.content_length == len(data)
    assert head.etag == result.etag
    assert bucket.object_exists(key)
    bucket.delete_object(key)
    assert not bucket.object_exists(key)
    with pytest.raises(oss2.exceptions.NoSuchKey):
        bucket.get_object(key)
    with pytest.raises(oss2.exceptions.NotFound) as info:
        bucket.head_object(key)  # HEAD: oss2 decodes the x-oss-err header
    assert info.value.code == "NoSuchKey"


def test_batch_delete(make_bucket: BucketFactory) -> None:
    bucket = make_bucket()
    for key in ("x/1", "x/2 ü", "y"):
        bucket.put_object(key, b"1")
    result = bucket.batch_delete_objects(["x/1", "x/2 ü"])
    assert sorted(result.deleted_keys) == ["x/1", "x/2 ü"]
    assert [o.key for o in oss2.ObjectIterator(bucket)] == ["y"]


def test_range_get(make_bucket: BucketFactory) -> None:
    bucket = make_bucket()
    bucket.put_object("r", b"0123456789")
    assert bucket.get_object("r", byte_range=(2, 5)).read() == b"2345"
    assert bucket.get_object("r", byte_range=(7, None)).read() == b"789"
    assert bucket.get_object("r", byte_range=(None, 3)).read() == b"789"


def test_list_v1_and_v2(make_bucket: BucketFactory) -> None:
    bucket = make_bucket()
    keys = ["a/1", "a/2", "b c/3", "top", "é/x"]
    for key in keys:
        bucket.put_object(key, b"1")
    assert [o.key for o in oss2.ObjectIterator(bucket, max_keys=2)] == sorted(keys)
    assert [o.key for o in oss2.ObjectIteratorV2(bucket, max_keys=2)] == sorted(keys)
    top = [o.key for o in oss2.ObjectIterator(bucket, delimiter="/", max_keys=1)]
    assert top == ["a/", "b c/", "top", "é/"]
    v2 = oss2.ObjectIteratorV2(bucket, delimiter="/", prefix="a/")
    assert [(o.key, o.is_prefix()) for o in v2] == [("a/1", False), ("a/2", False)]


@pytest.mark.parametrize("auth", ["v1", "v4"])
def test_resumable_upload_and_download(
    make_bucket: BucketFactory, tmp_path: Path, auth: str
) -> None:
    bucket = make_bucket(auth)
    data = os.urandom(5 * PART + 123)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    result = oss2.resumable_upload(
        bucket,
        "big/file.bin",
        str(src),
        store=oss2.ResumableStore(root=str(tmp_path)),
        multipart_threshold=PART,
        part_size=PART,
        num_threads=2,
    )
    assert result.status == 200
    assert result.crc == crc64(data)  # oss2 also compared it with the combined part CRCs
    head = bucket.head_object("big/file.bin")
    assert head.object_type == "Multipart"
    dst = tmp_path / "dst.bin"
    oss2.resumable_download(
        bucket,
        "big/file.bin",
        str(dst),
        store=oss2.ResumableDownloadStore(root=str(tmp_path)),
        multiget_threshold=PART,
        part_size=PART,
        num_threads=2,
    )
    assert dst.read_bytes() == data
    bucket.get_object_to_file("big/file.bin", str(dst))
    assert dst.read_bytes() == data


def test_multipart_complete_with_callback(
    make_bucket: BucketFactory, callback_receiver: CallbackReceiver, oss_emulator: OSSEmulator
) -> None:
    bucket = make_bucket()
    key = "mp/with-callback"
    parts_data = [os.urandom(PART), os.urandom(PART), os.urandom(77)]
    upload_id = bucket.init_multipart_upload(key).upload_id
    parts = []
    for n, chunk in enumerate(parts_data, 1):
        r = bucket.upload_part(key, upload_id, n, chunk)
        parts.append(oss2.models.PartInfo(n, r.etag, size=len(chunk), part_crc=r.crc))
    listed = bucket.list_parts(key, upload_id, max_parts=2)
    assert [p.part_number for p in listed.parts] == [1, 2]
    assert listed.is_truncated
    callback = {
        "callbackUrl": callback_receiver.url + "/done",
        "callbackBody": "object=${object}&size=${size}&v=${x:var1}",
    }
    result = bucket.complete_multipart_upload(
        key,
        upload_id,
        parts,
        headers={
            "x-oss-callback": b64json(callback),
            "x-oss-callback-var": b64json({"x:var1": "value 1"}),
        },
    )
    assert result.status == 200
    assert result.resp.read() == b'{"Status":"OK"}'
    (got,) = callback_receiver.wait_for(1)
    fields = parse_qs(got.body.decode())
    assert fields == {"object": [key], "size": [str(2 * PART + 77)], "v": ["value 1"]}
    assert bucket.get_object(key).read() == b"".join(parts_data)


def test_put_with_callback_and_203(
    make_bucket: BucketFactory, callback_receiver: CallbackReceiver
) -> None:
    bucket = make_bucket()
    callback = {
        "callbackUrl": callback_receiver.url,
        "callbackBody": "bucket=${bucket}",
        "callbackBodyType": "application/x-www-form-urlencoded",
    }
    ok = bucket.put_object("cb/ok", b"data", headers={"x-oss-callback": b64json(callback)})
    assert ok.status == 200
    assert ok.resp.read() == b'{"Status":"OK"}'
    assert callback_receiver.wait_for(1)[0].body == f"bucket={bucket.bucket_name}".encode()

    callback_receiver.respond(status=500)
    failed = bucket.put_object("cb/failed", b"data", headers={"x-oss-callback": b64json(callback)})
    assert failed.status == 203  # oss2 treats 203 as success: the object is stored
    assert b"<Code>CallbackFailed</Code>" in failed.resp.read()
    assert bucket.get_object("cb/failed").read() == b"data"


def test_wrong_secret_is_rejected(make_bucket: BucketFactory) -> None:
    for auth in ("v1", "v4"):
        bucket = make_bucket(auth, secret="not-the-secret")
        with pytest.raises(oss2.exceptions.ServerError) as info:
            bucket.put_object("k", b"x")
        assert info.value.status == 403
        assert info.value.code == "SignatureDoesNotMatch"
        assert "StringToSign" in info.value.details


def test_unknown_key_and_wrong_region(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    bucket = oss2.Bucket(oss2.Auth("nobody", "x"), oss_emulator.endpoint, oss_bucket)
    with pytest.raises(oss2.exceptions.ServerError) as info:
        bucket.list_objects()
    assert info.value.code == "InvalidAccessKeyId"
    bucket = oss2.Bucket(
        oss2.AuthV4(oss_emulator.access_key_id, oss_emulator.access_key_secret),
        oss_emulator.endpoint,
        oss_bucket,
        region="cn-beijing",
    )
    with pytest.raises(oss2.exceptions.ServerError) as info:
        bucket.list_objects()
    assert info.value.status == 403
    assert "cn-beijing" in info.value.message


@pytest.mark.parametrize("auth", ["v1", "v4"])
def test_presigned_urls(make_bucket: BucketFactory, auth: str) -> None:
    bucket = make_bucket(auth)
    put_url = bucket.sign_url("PUT", "signed/k", 60)
    r = httpx.put(put_url, content=b"via presigned url", trust_env=False)
    assert r.status_code == 200, r.text
    get_url = bucket.sign_url("GET", "signed/k", 60)
    r = httpx.get(get_url, trust_env=False)
    assert r.content == b"via presigned url"
    assert "signed%2Fk" in get_url
    r = httpx.get(get_url.replace("signed%2Fk", "signed%2Fother"), trust_env=False)
    assert r.status_code == 403
    assert b"SignatureDoesNotMatch" in r.content
