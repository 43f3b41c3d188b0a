"""The OSS emulator over raw, hand-signed HTTP: objects, auth, errors, multipart, faults, CLI."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from support.emulator_helpers import error_code, error_field, oss_request

from oss_callback.protocol._crc64 import crc64, crc64_combine
from oss_callback.protocol._signing import v1_string_to_sign
from oss_callback.testing import (
    DEFAULT_ACCESS_KEY_ID,
    DEFAULT_ACCESS_KEY_SECRET,
    CallbackReceiver,
    Fault,
    OSSEmulator,
    RequestRecord,
    StoredObject,
)

B = "test-bucket"


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --------------------------------------------------------------------------- lifecycle


def test_context_manager_serves_and_stops() -> None:
    with OSSEmulator(buckets=["life-bucket"]) as emu:
        endpoint = emu.endpoint
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", endpoint)
        assert emu.bucket_exists("life-bucket")
        data_dir = emu.data_dir
        assert data_dir.is_dir()
        assert oss_request(emu, "GET", "life-bucket").status_code == 200
    assert not data_dir.exists()  # the temporary data dir is removed
    with pytest.raises(httpx.ConnectError):
        httpx.get(endpoint, timeout=2)
    with pytest.raises(RuntimeError, match="cannot be started again"):
        emu.start()


async def test_async_context_manager() -> None:
    async with OSSEmulator(buckets=["async-bucket"]) as emu:
        async with httpx.AsyncClient(trust_env=False) as client:
            r = await client.get(emu.endpoint + "/async-bucket/x")
        assert r.status_code == 403  # anonymous
        assert r.headers["x-oss-request-id"]


def test_repr_and_logs_never_show_secrets(
    oss_emulator: OSSEmulator, oss_bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sts = oss_emulator.issue_sts_token()
    r = oss_request(
        oss_emulator,
        "PUT",
        oss_bucket,
        "k",
        body=b"x",
        access_key_id=sts.access_key_id,
        access_key_secret=sts.access_key_secret,
        security_token=sts.security_token,
    )
    assert r.status_code == 200
    oss_request(oss_emulator, "PUT", oss_bucket, "k", body=b"x", access_key_secret="wrong")
    for text in (repr(oss_emulator), repr(sts), caplog.text, repr(oss_emulator.requests)):
        assert oss_emulator.access_key_secret not in text
        assert sts.access_key_secret not in text
    assert sts.security_token not in repr(sts)
    assert all("authorization" not in rec.headers for rec in oss_emulator.requests)
    assert any("oss emulator" in m for m in caplog.messages)  # it does log requests


def test_persistent_data_dir(tmp_path: Path) -> None:
    with OSSEmulator(data_dir=tmp_path, buckets=["keep-bucket"]) as emu:
        assert oss_request(emu, "PUT", "keep-bucket", "a/b", body=b"persist").status_code == 200
        r = oss_request(emu, "POST", "keep-bucket", "mp", query=[("uploads", "")])
        upload_id = ET.fromstring(r.content).findtext("UploadId") or ""
        r = oss_request(
            emu,
            "PUT",
            "keep-bucket",
            "mp",
            body=b"part one",
            query=[("partNumber", "1"), ("uploadId", upload_id)],
        )
        etag = r.headers["etag"]
    with OSSEmulator(data_dir=tmp_path) as emu:
        r = oss_request(emu, "GET", "keep-bucket", "a/b")
        assert r.status_code == 200
        assert r.content == b"persist"
        assert emu.list_uploads("keep-bucket") == [upload_id]  # uploads survive too
        body = f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag>"
        body += "</Part></CompleteMultipartUpload>"
        r = oss_request(
            emu, "POST", "keep-bucket", "mp", query=[("uploadId", upload_id)], body=body.encode()
        )
        assert r.status_code == 200, r.text
        assert emu.get_object("keep-bucket", "mp") == b"part one"
    assert (tmp_path / "buckets" / "keep-bucket.json").exists()


# --------------------------------------------------------------------------- objects


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_put_get_head_delete(oss_emulator: OSSEmulator, oss_bucket: str, version: str) -> None:
    data = b"hello world"
    r = oss_request(
        oss_emulator,
        "PUT",
        oss_bucket,
        "dir/hello.txt",
        body=data,
        version=version,
        headers={
            "Content-Type": "text/plain",
            "x-oss-meta-author": "alice",
            "Content-MD5": _md5_b64(data),
            "Cache-Control": "no-cache",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"' + hashlib.md5(data).hexdigest().upper() + '"'
    assert r.headers["x-oss-hash-crc64ecma"] == "5981764153023615706"
    assert r.headers["content-md5"] == _md5_b64(data)
    assert re.fullmatch(r"[0-9A-F]{24}", r.headers["x-oss-request-id"])

    g = oss_request(oss_emulator, "GET", oss_bucket, "dir/hello.txt", version=version)
    assert g.status_code == 200
    assert g.content == data
    assert g.headers["content-type"] == "text/plain"
    assert g.headers["x-oss-meta-author"] == "alice"
    assert g.headers["cache-control"] == "no-cache"
    assert g.headers["x-oss-object-type"] == "Normal"
    assert g.headers["etag"] == r.headers["etag"]
    assert g.headers["last-modified"].endswith("GMT")

    h = oss_request(oss_emulator, "HEAD", oss_bucket, "dir/hello.txt", version=version)
    assert h.status_code == 200
    assert h.headers["content-length"] == str(len(data))
    assert h.content == b""

    assert oss_request(oss_emulator, "DELETE", oss_bucket, "dir/hello.txt").status_code == 204
    assert oss_request(oss_emulator, "DELETE", oss_bucket, "dir/hello.txt").status_code == 204
    missing = oss_request(oss_emulator, "GET", oss_bucket, "dir/hello.txt")
    assert missing.status_code == 404
    assert error_code(missing) == "NoSuchKey"
    assert error_field(missing, "Key") == "dir/hello.txt"


def test_content_type_guessed_from_extension(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    oss_request(oss_emulator, "PUT", oss_bucket, "pics/cat.png", body=b"x")
    oss_request(oss_emulator, "PUT", oss_bucket, "noext", body=b"x")
    oss_request(
        oss_emulator, "PUT", oss_bucket, "a.txt", body=b"x", headers={"Content-Type": "x/y"}
    )
    head = oss_request(oss_emulator, "HEAD", oss_bucket, "pics/cat.png")
    assert head.headers["content-type"] == "image/png"
    types = {k: oss_emulator.head_object(oss_bucket, k) for k in ("noext", "a.txt")}
    assert {k: v.content_type if v else None for k, v in types.items()} == {
        "noext": "application/octet-stream",
        "a.txt": "x/y",
    }


def test_forbid_overwrite(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    forbid = {"x-oss-forbid-overwrite": "true"}
    assert (
        oss_request(oss_emulator, "PUT", oss_bucket, "k", body=b"1", headers=forbid).status_code
        == 200
    )
    r = oss_request(oss_emulator, "PUT", oss_bucket, "k", body=b"2", headers=forbid)
    assert (r.status_code, error_code(r)) == (409, "FileAlreadyExists")
    assert oss_emulator.get_object(oss_bucket, "k") == b"1"


def test_empty_object_and_response_overrides(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    r = oss_request(oss_emulator, "PUT", oss_bucket, "empty", body=b"")
    assert r.headers["x-oss-hash-crc64ecma"] == "0"
    assert r.headers["content-md5"] == "1B2M2Y8AsgTpgAmY7PhCfg=="
    g = oss_request(
        oss_emulator, "GET", oss_bucket, "empty", query=[("response-content-type", "a/b")]
    )
    assert g.content == b""
    assert g.headers["content-type"] == "a/b"


def test_error_xml_shape(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    r = oss_request(oss_emulator, "GET", oss_bucket, "nope")
    assert r.headers["content-type"] == "application/xml"
    assert r.headers["x-oss-ec"]
    root = ET.fromstring(r.content)
    assert root.tag == "Error"
    tags = [child.tag for child in root]
    assert tags[:4] == ["Code", "Message", "RequestId", "HostId"]
    assert "EC" in tags
    assert root.findtext("RequestId") == r.headers["x-oss-request-id"]
    assert root.findtext("EC") == r.headers["x-oss-ec"]
    assert r.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')


def test_head_error_has_x_oss_err(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    r = oss_request(oss_emulator, "HEAD", oss_bucket, "nope")
    assert r.status_code == 404
    assert r.content == b""
    decoded = base64.b64decode(r.headers["x-oss-err"])
    assert ET.fromstring(decoded).findtext("Code") == "NoSuchKey"


def test_content_md5_mismatch_is_rejected_and_not_stored(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    r = oss_request(
        oss_emulator, "PUT", oss_bucket, "k", body=b"data", headers={"Content-MD5": _md5_b64(b"x")}
    )
    assert r.status_code == 400
    assert error_code(r) == "InvalidDigest"
    assert oss_emulator.head_object(oss_bucket, "k") is None
    assert not list((oss_emulator.data_dir / "tmp").iterdir())  # temp file cleaned up


@pytest.mark.parametrize(
    ("range_header", "status", "expected", "content_range"),
    [
        ("bytes=2-5", 206, b"2345", "bytes 2-5/10"),
        ("bytes=7-", 206, b"789", "bytes 7-9/10"),
        ("bytes=-3", 206, b"789", "bytes 7-9/10"),
        ("bytes=8-100", 206, b"89", "bytes 8-9/10"),
        ("bytes=5-2", 200, b"0123456789", None),
        ("bytes=0-1,4-5", 200, b"0123456789", None),
        ("lines=1-2", 200, b"0123456789", None),
    ],
)
def test_range_get(
    oss_emulator: OSSEmulator,
    oss_bucket: str,
    range_header: str,
    status: int,
    expected: bytes,
    content_range: str | None,
) -> None:
    oss_request(oss_emulator, "PUT", oss_bucket, "digits", body=b"0123456789")
    r = oss_request(oss_emulator, "GET", oss_bucket, "digits", headers={"Range": range_header})
    assert r.status_code == status
    assert r.content == expected
    assert r.headers.get("content-range") == content_range


def test_unsatisfiable_range_is_416(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    oss_request(oss_emulator, "PUT", oss_bucket, "digits", body=b"0123456789")
    r = oss_request(oss_emulator, "GET", oss_bucket, "digits", headers={"Range": "bytes=10-"})
    assert r.status_code == 416
    assert error_code(r) == "InvalidRange"
    assert r.headers["content-range"] == "bytes */10"


def test_bucket_and_key_errors(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    r = oss_request(oss_emulator, "PUT", "no-such-bucket", "k", body=b"x")
    assert (r.status_code, error_code(r)) == (404, "NoSuchBucket")
    r = oss_request(oss_emulator, "PUT", "Bad_Bucket", "k", body=b"x")
    assert (r.status_code, error_code(r)) == (400, "InvalidBucketName")
    r = oss_request(oss_emulator, "PUT", oss_bucket, "k" * 1024, body=b"x")
    assert (r.status_code, error_code(r)) == (400, "InvalidObjectName")
    assert oss_request(oss_emulator, "PUT", oss_bucket, "k" * 1023, body=b"x").status_code == 200
    r = oss_request(oss_emulator, "PUT", oss_bucket, "/abs", body=b"x")
    assert (r.status_code, error_code(r)) == (400, "InvalidObjectName")
    assert oss_emulator.list_keys(oss_bucket) == ["k" * 1023]


def test_delete_multiple_objects(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    for key in ("a", "b c", "keep"):
        oss_request(oss_emulator, "PUT", oss_bucket, key, body=b"1")
    body = b"<Delete><Quiet>false</Quiet><Object><Key>a</Key></Object>"
    body += b"<Object><Key>b c</Key></Object><Object><Key>never-existed</Key></Object></Delete>"
    r = oss_request(
        oss_emulator,
        "POST",
        oss_bucket,
        query=[("delete", ""), ("encoding-type", "url")],
        body=body,
        headers={"Content-MD5": _md5_b64(body)},
    )
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    assert [k.text for k in root.iter("Key")] == ["a", "b%20c", "never-existed"]
    assert oss_emulator.list_keys(oss_bucket) == ["keep"]
    empty = b"<Delete/>"
    r = oss_request(oss_emulator, "POST", oss_bucket, query=[("delete", "")], body=empty,
                    headers={"Content-MD5": _md5_b64(empty)})
    assert (r.status_code, error_code(r)) == (400, "MalformedXML")
    # OSS requires Content-MD5 on this request (EC 0016-00000606)
    r = oss_request(oss_emulator, "POST", oss_bucket, query=[("delete", "")], body=body)
    assert (r.status_code, error_code(r)) == (400, "InvalidRequest")
    assert "Content-MD5" in r.text


def test_empty_object_name(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    r = oss_request(oss_emulator, "POST", oss_bucket, query=[("uploads", "")])
    assert (r.status_code, error_code(r)) == (400, "InvalidObjectName")


def test_put_bucket_and_delete_bucket(oss_emulator: OSSEmulator) -> None:
    assert oss_request(oss_emulator, "PUT", "made-by-put").status_code == 200
    assert oss_emulator.bucket_exists("made-by-put")
    oss_request(oss_emulator, "PUT", "made-by-put", "x", body=b"1")
    r = oss_request(oss_emulator, "DELETE", "made-by-put")
    assert (r.status_code, error_code(r)) == (409, "BucketNotEmpty")
    oss_request(oss_emulator, "DELETE", "made-by-put", "x")
    assert oss_request(oss_emulator, "DELETE", "made-by-put").status_code == 204
    assert not oss_emulator.bucket_exists("made-by-put")
    with pytest.raises(ValueError, match="invalid bucket name"):
        oss_emulator.create_bucket("UPPER")


def test_virtual_hosted_style(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    r = oss_request(oss_emulator, "PUT", oss_bucket, "vh/key", body=b"vhost", virtual_host=True)
    assert r.status_code == 200, r.text
    assert oss_emulator.get_object(oss_bucket, "vh/key") == b"vhost"
    g = oss_request(oss_emulator, "GET", oss_bucket, "vh/key", virtual_host=True)
    assert g.content == b"vhost"
    listing = oss_request(oss_emulator, "GET", oss_bucket, virtual_host=True)
    assert b"<Key>vh/key</Key>" in listing.content


PATH_KEYS = [
    "../../../../escape.txt",
    "a/../../b",
    "..",
    ".",
    "x/./y/../../z",
    "nul\x00byte",
    "C:\\windows\\system32",
    "..\\..\\up",
    "dir/" + "é" * 500,  # 1004 bytes
    "%2e%2e/literal-percent",
    "trailing/",
]


def test_path_traversal_keys_stay_inside_data_dir(
    oss_emulator: OSSEmulator, oss_bucket: str, tmp_path: Path
) -> None:
    root = oss_emulator.data_dir.resolve()
    before = set(Path("/tmp").iterdir()) if Path("/tmp").is_dir() else set()
    for i, key in enumerate(PATH_KEYS):
        body = f"payload {i}".encode()
        r = oss_request(oss_emulator, "PUT", oss_bucket, key, body=body)
        assert r.status_code == 200, (key, r.text)
        path = oss_emulator.object_path(oss_bucket, key)
        assert path is not None
        assert path.resolve().is_relative_to(root)
        g = oss_request(oss_emulator, "GET", oss_bucket, key)
        assert g.content == body, key
    assert oss_emulator.list_keys(oss_bucket) == sorted(PATH_KEYS)
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root)
        assert "escape" not in path.name and "payload" not in path.name
    assert not (root.parent / "escape.txt").exists()
    after = set(Path("/tmp").iterdir()) if Path("/tmp").is_dir() else set()
    assert not any(p.name == "escape.txt" for p in after - before)


# --------------------------------------------------------------------------- listing


def _list(emu: OSSEmulator, bucket: str, **params: str) -> ET.Element:
    r = oss_request(emu, "GET", bucket, query=list(params.items()))
    assert r.status_code == 200, r.text
    return ET.fromstring(r.content)


def test_list_objects_v1_pagination_and_delimiter(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    keys = ["a/1", "a/2", "b/1", "c", "d", "e/x/y"]
    for key in keys:
        oss_request(oss_emulator, "PUT", oss_bucket, key, body=b"1")
    root = _list(oss_emulator, oss_bucket, delimiter="/")
    assert [e.text for e in root.iter("Key")] == ["c", "d"]
    assert [e.text for e in root.findall("CommonPrefixes/Prefix")] == ["a/", "b/", "e/"]
    seen: list[str] = []
    marker = ""
    pages = 0
    while True:
        root = _list(oss_emulator, oss_bucket, delimiter="/", **{"max-keys": "2", "marker": marker})
        pages += 1
        seen += [e.text or "" for e in root.iter("Key")]
        seen += [e.text or "" for e in root.findall("CommonPrefixes/Prefix")]
        if root.findtext("IsTruncated") == "false":
            break
        marker = root.findtext("NextMarker") or ""
    assert sorted(seen) == ["a/", "b/", "c", "d", "e/"]
    assert pages == 3
    root = _list(oss_emulator, oss_bucket, prefix="a/")
    assert [e.text for e in root.iter("Key")] == ["a/1", "a/2"]
    assert root.find("Contents/Owner") is not None
    r = oss_request(oss_emulator, "GET", oss_bucket, query=[("max-keys", "1001")])
    assert error_code(r) == "InvalidArgument"


def test_list_objects_v2_tokens_and_url_encoding(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    keys = ["k 1", "k&2", "k/3", "k/4", "kü5"]
    for key in keys:
        oss_request(oss_emulator, "PUT", oss_bucket, key, body=b"1")
    collected: list[str] = []
    token = None
    while True:
        params = {"list-type": "2", "max-keys": "2", "encoding-type": "url"}
        if token:
            params["continuation-token"] = token
        root = _list(oss_emulator, oss_bucket, **params)
        assert root.findtext("EncodingType") == "url"
        assert int(root.findtext("KeyCount") or -1) == len(root.findall("Contents"))
        collected += [
            httpx.URL("http://x/?k=" + (e.text or "")).params["k"] for e in root.iter("Key")
        ]
        if root.findtext("IsTruncated") != "true":
            break
        token = root.findtext("NextContinuationToken")
    assert collected == sorted(keys)
    root = _list(oss_emulator, oss_bucket, **{"list-type": "2", "start-after": "k/3"})
    assert [e.text for e in root.iter("Key")] == ["k/4", "kü5"]
    assert root.find("Contents/Owner") is None
    root = _list(oss_emulator, oss_bucket, **{"list-type": "2", "delimiter": "/", "prefix": "k"})
    assert [e.text for e in root.findall("CommonPrefixes/Prefix")] == ["k/"]


# --------------------------------------------------------------------------- auth


def test_anonymous_request_is_denied(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    r = oss_request(oss_emulator, "PUT", oss_bucket, "k", body=b"x", version="none")
    assert (r.status_code, error_code(r)) == (403, "AccessDenied")
    assert oss_emulator.head_object(oss_bucket, "k") is None


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_unknown_access_key(oss_emulator: OSSEmulator, oss_bucket: str, version: str) -> None:
    r = oss_request(oss_emulator, "GET", oss_bucket, version=version, access_key_id="nobody")
    assert (r.status_code, error_code(r)) == (403, "InvalidAccessKeyId")
    assert error_field(r, "OSSAccessKeyId") == "nobody"


def test_v1_bad_signature_reports_string_to_sign(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    headers = {"Content-Type": "text/plain", "x-oss-meta-a": "b"}
    r = oss_request(
        oss_emulator,
        "PUT",
        oss_bucket,
        "k",
        query=[("acl", "")],
        headers=headers,
        body=b"x",
        version="v1",
        access_key_secret="wrong-secret",
    )
    assert (r.status_code, error_code(r)) == (403, "SignatureDoesNotMatch")
    sts = error_field(r, "StringToSign") or ""
    assert sts.startswith("PUT\n\ntext/plain\n")
    assert sts.endswith("x-oss-meta-a:b\n/test-bucket/k?acl")
    date = sts.split("\n")[3]
    assert sts == v1_string_to_sign(
        "PUT", oss_bucket, "k", [("acl", "")], {**headers, "Date": date}
    )


def test_v4_bad_signature_reports_canonical_request(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    r = oss_request(
        oss_emulator,
        "PUT",
        oss_bucket,
        "a b/c",
        body=b"x",
        access_key_secret="wrong-secret",
        query=[("x-param", "1/2")],
    )
    assert (r.status_code, error_code(r)) == (403, "SignatureDoesNotMatch")
    canonical = error_field(r, "CanonicalRequest") or ""
    assert canonical.startswith("PUT\n/test-bucket/a%20b/c\nx-param=1%2F2\n")
    assert (error_field(r, "StringToSign") or "").startswith("OSS4-HMAC-SHA256\n")
    assert oss_emulator.head_object(oss_bucket, "a b/c") is None


def test_v4_accepts_comma_space_separators(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    from oss_callback.protocol._credentials import Credentials
    from oss_callback.protocol._signing import sign_v4

    headers: dict[str, str] = {"Content-Type": "text/plain", "Abc": "v"}
    creds = Credentials(
        access_key_id=oss_emulator.access_key_id, access_key_secret=oss_emulator.access_key_secret
    )
    sign_v4(
        "GET",
        oss_bucket,
        None,
        [],
        headers,
        creds,
        datetime.now(timezone.utc),
        oss_emulator.region,
        additional_headers=["abc"],
    )
    assert ",AdditionalHeaders=abc," in headers["authorization"]
    # oss2's order and separators: "Credential=..., Signature=..., AdditionalHeaders=..."
    fields = dict(p.split("=", 1) for p in headers["authorization"].split(" ", 1)[1].split(","))
    headers["authorization"] = (
        f"OSS4-HMAC-SHA256 Credential={fields['Credential']}, Signature={fields['Signature']}, "
        f"AdditionalHeaders={fields['AdditionalHeaders']}"
    )
    r = httpx.get(f"{oss_emulator.endpoint}/{oss_bucket}/", headers=headers, trust_env=False)
    assert r.status_code == 200, r.text
    headers["Abc"] = "changed"  # an additional header is signed
    r = httpx.get(f"{oss_emulator.endpoint}/{oss_bucket}/", headers=headers, trust_env=False)
    assert error_code(r) == "SignatureDoesNotMatch"


@pytest.mark.parametrize("version", ["v1", "v4"])
@pytest.mark.parametrize("offset", [timedelta(minutes=-16), timedelta(minutes=16)])
def test_clock_skew(
    oss_emulator: OSSEmulator, oss_bucket: str, version: str, offset: timedelta
) -> None:
    now = datetime.now(timezone.utc) + offset
    r = oss_request(oss_emulator, "GET", oss_bucket, version=version, now=now)
    assert (r.status_code, error_code(r)) == (403, "RequestTimeTooSkewed")
    ok = oss_request(
        oss_emulator,
        "GET",
        oss_bucket,
        version=version,
        now=datetime.now(timezone.utc) - timedelta(minutes=14),
    )
    assert ok.status_code == 200


def test_v4_wrong_region(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    r = oss_request(oss_emulator, "GET", oss_bucket, region="us-west-1")
    assert r.status_code == 403
    assert error_code(r) == "SignatureDoesNotMatch"
    message = error_field(r, "Message") or ""
    assert "us-west-1" in message and "cn-hangzhou" in message


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_sts_token_required_and_checked(
    oss_emulator: OSSEmulator, oss_bucket: str, version: str
) -> None:
    ak, secret, token = oss_emulator.issue_sts_token()

    def get(security_token: str | None) -> httpx.Response:
        return oss_request(
            oss_emulator,
            "GET",
            oss_bucket,
            access_key_id=ak,
            access_key_secret=secret,
            version=version,
            security_token=security_token,
        )

    assert get(token).status_code == 200
    missing = get(None)
    assert (missing.status_code, error_code(missing)) == (403, "InvalidAccessKeyId")
    wrong = get(token + "x")
    assert (wrong.status_code, error_code(wrong)) == (403, "InvalidAccessKeyId")
    oss_emulator.remove_credentials(ak)
    revoked = get(token)
    assert error_code(revoked) == "InvalidAccessKeyId"


def test_add_credentials(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    oss_emulator.add_credentials("second-key", "second-secret")
    r = oss_request(
        oss_emulator,
        "GET",
        oss_bucket,
        access_key_id="second-key",
        access_key_secret="second-secret",
    )
    assert r.status_code == 200
    oss_emulator.reset()  # extra credentials do not survive a reset
    r = oss_request(
        oss_emulator,
        "GET",
        "any-bucket",
        access_key_id="second-key",
        access_key_secret="second-secret",
    )
    assert error_code(r) == "InvalidAccessKeyId"


# --------------------------------------------------------------------------- multipart


PART = 100 * 1024


def _initiate(emu: OSSEmulator, key: str, **headers: str) -> str:
    r = oss_request(emu, "POST", B, key, query=[("uploads", "")], headers=headers)
    assert r.status_code == 200, r.text
    return ET.fromstring(r.content).findtext("UploadId") or ""


def _upload_part(emu: OSSEmulator, key: str, upload_id: str, n: int, data: bytes) -> httpx.Response:
    return oss_request(
        emu, "PUT", B, key, query=[("partNumber", str(n)), ("uploadId", upload_id)], body=data
    )


def _complete(
    emu: OSSEmulator, key: str, upload_id: str, parts: list[tuple[int, str]], **kw: object
) -> httpx.Response:
    body = (
        "<CompleteMultipartUpload>"
        + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>" for n, etag in parts
        )
        + "</CompleteMultipartUpload>"
    )
    query = [("uploadId", upload_id), *kw.pop("query", [])]  # type: ignore[misc]
    return oss_request(emu, "POST", B, key, query=query, body=body.encode(), **kw)  # type: ignore[arg-type]


def test_multipart_happy_path(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    key = "multi/part ü.bin"
    upload_id = _initiate(oss_emulator, key, **{"Content-Type": "video/mp4", "x-oss-meta-k": "v"})
    chunks = [os.urandom(PART), os.urandom(PART + 7), os.urandom(1000)]
    etags = []
    for n, data in enumerate(chunks, 1):
        r = _upload_part(oss_emulator, key, upload_id, n, data)
        assert r.status_code == 200
        assert r.headers["etag"] == '"' + hashlib.md5(data).hexdigest().upper() + '"'
        assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(data))
        assert r.headers["content-md5"] == _md5_b64(data)
        etags.append(r.headers["etag"])
    # overwriting part 2 replaces it
    chunks[1] = os.urandom(PART + 1)
    etags[1] = _upload_part(oss_emulator, key, upload_id, 2, chunks[1]).headers["etag"]
    # quoted and unquoted ETags are both accepted
    parts = [(1, etags[0]), (2, etags[1].strip('"')), (3, etags[2])]
    r = _complete(oss_emulator, key, upload_id, parts, query=[("encoding-type", "url")])
    assert r.status_code == 200, r.text
    root = ET.fromstring(r.content)
    assert root.findtext("EncodingType") == "url"
    assert root.findtext("Key") == "multi/part%20%C3%BC.bin"
    md5s = b"".join(hashlib.md5(c).digest() for c in chunks)
    expected_etag = f'"{hashlib.md5(md5s).hexdigest().upper()}-3"'
    assert root.findtext("ETag") == expected_etag
    crc = 0
    for c in chunks:
        crc = crc64_combine(crc, crc64(c), len(c))
    assert r.headers["x-oss-hash-crc64ecma"] == str(crc) == str(crc64(b"".join(chunks)))
    g = oss_request(oss_emulator, "GET", oss_bucket, key)
    assert g.content == b"".join(chunks)
    assert g.headers["x-oss-object-type"] == "Multipart"
    assert g.headers["content-type"] == "video/mp4"
    assert g.headers["x-oss-meta-k"] == "v"
    assert g.headers["etag"] == expected_etag
    assert oss_emulator.list_uploads() == []


def test_multipart_errors(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    key = "errs"
    upload_id = _initiate(oss_emulator, key)
    small = _upload_part(oss_emulator, key, upload_id, 1, b"tiny").headers["etag"]
    big = _upload_part(oss_emulator, key, upload_id, 2, b"b" * PART).headers["etag"]
    r = _upload_part(oss_emulator, key, upload_id, 10001, b"x")
    assert (r.status_code, error_code(r)) == (400, "InvalidArgument")
    r = _upload_part(oss_emulator, key, "NOSUCHUPLOAD", 1, b"x")
    assert (r.status_code, error_code(r)) == (404, "NoSuchUpload")

    r = _complete(oss_emulator, key, upload_id, [(2, big), (1, small)])
    assert (r.status_code, error_code(r)) == (400, "InvalidPartOrder")
    r = _complete(oss_emulator, key, upload_id, [(1, '"' + "0" * 32 + '"'), (2, big)])
    assert (r.status_code, error_code(r)) == (400, "InvalidPart")
    r = _complete(oss_emulator, key, upload_id, [(1, small), (3, big)])
    assert error_code(r) == "InvalidPart"
    r = _complete(oss_emulator, key, upload_id, [(1, small), (2, big)])
    assert (r.status_code, error_code(r)) == (400, "EntityTooSmall")
    r = oss_request(oss_emulator, "POST", B, key, query=[("uploadId", upload_id)], body=b"<oops")
    assert error_code(r) == "MalformedXML"
    assert oss_emulator.head_object(oss_bucket, key) is None  # nothing was completed

    # a small LAST part is fine
    r = _complete(oss_emulator, key, upload_id, [(2, big)])
    assert r.status_code == 200
    assert oss_emulator.get_object(oss_bucket, key) == b"b" * PART
    r = oss_request(oss_emulator, "DELETE", B, key, query=[("uploadId", upload_id)])
    assert (r.status_code, error_code(r)) == (404, "NoSuchUpload")


def test_list_parts_pagination_and_abort(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    key = "lp"
    upload_id = _initiate(oss_emulator, key)
    for n in (1, 2, 3, 5, 8):
        _upload_part(oss_emulator, key, upload_id, n, bytes([n]) * 10)
    numbers: list[int] = []
    marker = "0"
    while True:
        r = oss_request(
            oss_emulator,
            "GET",
            B,
            key,
            query=[
                ("uploadId", upload_id),
                ("max-parts", "2"),
                ("part-number-marker", marker),
                ("encoding-type", "url"),
            ],
        )
        root = ET.fromstring(r.content)
        for part in root.findall("Part"):
            numbers.append(int(part.findtext("PartNumber") or 0))
            n = numbers[-1]
            assert part.findtext("Size") == "10"
            assert part.findtext("HashCrc64ecma") == str(crc64(bytes([n]) * 10))
            assert (
                part.findtext("ETag")
                == '"' + hashlib.md5(bytes([n]) * 10).hexdigest().upper() + '"'
            )
            assert part.findtext("LastModified", "").endswith("Z")
        if root.findtext("IsTruncated") == "false":
            break
        marker = root.findtext("NextPartNumberMarker") or ""
    assert numbers == [1, 2, 3, 5, 8]
    r = oss_request(oss_emulator, "GET", B, query=[("uploads", "")])
    assert upload_id in r.text
    assert (
        oss_request(oss_emulator, "DELETE", B, key, query=[("uploadId", upload_id)]).status_code
        == 204
    )
    assert oss_emulator.list_uploads() == []
    assert not (oss_emulator.data_dir / "uploads" / upload_id).exists()


def test_complete_all(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    key = "all"
    upload_id = _initiate(oss_emulator, key)
    _upload_part(oss_emulator, key, upload_id, 2, b"y" * 10)
    _upload_part(oss_emulator, key, upload_id, 1, b"x" * PART)
    r = oss_request(
        oss_emulator,
        "POST",
        B,
        key,
        query=[("uploadId", upload_id)],
        headers={"x-oss-complete-all": "yes"},
    )
    assert r.status_code == 200, r.text
    assert oss_emulator.get_object(oss_bucket, key) == b"x" * PART + b"y" * 10


# --------------------------------------------------------------------------- faults / records


def test_fault_status_on_nth_upload_part(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    rule = oss_emulator.faults.add(method="PUT", query_has="partNumber", nth=2, status=500)
    upload_id = _initiate(oss_emulator, "f")
    assert _upload_part(oss_emulator, "f", upload_id, 1, b"1").status_code == 200
    r = _upload_part(oss_emulator, "f", upload_id, 2, b"2")
    assert (r.status_code, error_code(r)) == (500, "InternalError")
    assert _upload_part(oss_emulator, "f", upload_id, 2, b"2").status_code == 200  # times=1
    assert (rule.matched, rule.fired) == (2, 1)
    statuses = [rec.status for rec in oss_emulator.requests if rec.operation == "UploadPart"]
    assert statuses == [200, 500, 200]
    faulted = [rec for rec in oss_emulator.requests if rec.fault]
    assert len(faulted) == 1
    assert faulted[0].query == (("partNumber", "2"), ("uploadId", upload_id))


def test_fault_drop_connection(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    oss_emulator.faults.add(Fault(operation="PutObject", drop_connection=True))
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        oss_request(oss_emulator, "PUT", oss_bucket, "dropped", body=b"x" * 1000)
    assert oss_emulator.head_object(oss_bucket, "dropped") is None
    assert oss_request(oss_emulator, "PUT", oss_bucket, "dropped", body=b"x").status_code == 200
    assert [r.status for r in oss_emulator.requests if r.operation == "PutObject"] == [-1, 200]


def test_fault_delay_corrupt_crc_and_body(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    oss_request(oss_emulator, "PUT", oss_bucket, "obj", body=b"hello world")
    oss_emulator.faults.add(operation="GetObject", corrupt_crc=True, corrupt_body=True, delay=0.3)
    with httpx.Client(trust_env=False) as client:
        r = oss_request(oss_emulator, "GET", oss_bucket, "obj", client=client)
    assert r.elapsed.total_seconds() >= 0.3
    assert r.headers["x-oss-hash-crc64ecma"] == str(5981764153023615706 ^ 1)
    assert r.content != b"hello world"
    assert r.content[1:] == b"ello world"
    r = oss_request(oss_emulator, "GET", oss_bucket, "obj")
    assert r.content == b"hello world"


def test_fault_drop_mid_body(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    data = os.urandom(600_000)
    oss_request(oss_emulator, "PUT", oss_bucket, "big", body=data)
    oss_emulator.faults.add(operation="GetObject", drop_after_bytes=1000)
    url = f"{oss_emulator.endpoint}/{oss_bucket}/big"
    headers = _signed_get_headers(oss_emulator, oss_bucket, "big")
    received = bytearray()
    with (  # noqa: PT012 - the error comes while streaming the body
        httpx.Client(trust_env=False) as client,
        pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)),
        client.stream("GET", url, headers=headers) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-length"] == str(len(data))
        for chunk in r.iter_raw():
            received += chunk
    assert bytes(received) == data[:1000]
    assert oss_request(oss_emulator, "GET", oss_bucket, "big").content == data


def _signed_get_headers(emu: OSSEmulator, bucket: str, key: str) -> dict[str, str]:
    from oss_callback.protocol._credentials import Credentials
    from oss_callback.protocol._signing import sign_v4

    headers: dict[str, str] = {}
    creds = Credentials(access_key_id=emu.access_key_id, access_key_secret=emu.access_key_secret)
    sign_v4("GET", bucket, key, [], headers, creds, datetime.now(timezone.utc), emu.region)
    return headers


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="needs an effect"):
        Fault(method="PUT")
    with pytest.raises(ValueError, match="nth"):
        Fault(status=500, nth=0)


def test_request_records(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    oss_request(
        oss_emulator, "PUT", oss_bucket, "rec/k", body=b"12345", headers={"x-oss-meta-z": "1"}
    )
    oss_request(oss_emulator, "GET", oss_bucket, "missing")
    put, get = oss_emulator.requests[-2:]
    assert isinstance(put, RequestRecord)
    assert (put.method, put.bucket, put.key, put.operation, put.status) == (
        "PUT",
        oss_bucket,
        "rec/k",
        "PutObject",
        200,
    )
    assert put.body_size == 5
    assert put.headers["x-oss-meta-z"] == "1"
    assert "authorization" not in put.headers
    assert (get.status, get.error_code) == (404, "NoSuchKey")
    obj = oss_emulator.head_object(oss_bucket, "rec/k")
    assert isinstance(obj, StoredObject)
    assert (obj.size, obj.crc64, obj.metadata["x-oss-meta-z"]) == (5, crc64(b"12345"), "1")


def test_reset_clears_everything(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    oss_request(oss_emulator, "PUT", oss_bucket, "k", body=b"1")
    oss_emulator.faults.add(status=503, operation="GetObject")
    oss_emulator.callback_timeout = 0.5
    oss_emulator.reset()
    assert not oss_emulator.bucket_exists(oss_bucket)
    assert oss_emulator.requests == []
    assert oss_emulator.faults.rules == []
    assert oss_emulator.callback_timeout == 5.0


def test_callback_receiver_helper() -> None:
    with CallbackReceiver(status=201, body=b"nope") as receiver:
        r = httpx.post(receiver.url + "/p?q=1", content=b"body", trust_env=False)
        assert (r.status_code, r.content) == (201, b"nope")
        (got,) = receiver.wait_for(1)
        assert (got.path, got.query, got.body) == ("/p", "q=1", b"body")


# --------------------------------------------------------------------------- CLI


def _start_cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "oss_callback.testing", "--port", "0",
         "--data-dir", str(tmp_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _startup_lines(proc: subprocess.Popen[str]) -> tuple[str, list[str]]:
    """The endpoint of the first line, and the lines after it (up to the export line)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.fullmatch(r"OSS emulator listening on (http://127\.0\.0\.1:(\d+))\n", line)
    assert match, line
    assert int(match.group(2)) > 0
    rest = [proc.stdout.readline().rstrip("\n") for _ in range(6)]
    return match.group(1), rest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_prints_how_to_connect_and_stops_on_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    env = {**os.environ, "OSS_ACCESS_KEY_ID": "", "OSS_ACCESS_KEY_SECRET": ""}
    proc = _start_cli(tmp_path, env, "--bucket", "cli-bucket", "--region", "cn-beijing")
    try:
        endpoint, rest = _startup_lines(proc)
        # What a newcomer needs to configure a client: the emulator's test key, in full.
        assert rest == [
            f"  endpoint           {endpoint}",
            "  region             cn-beijing",
            f"  access key id      {DEFAULT_ACCESS_KEY_ID}",
            f"  access key secret  {DEFAULT_ACCESS_KEY_SECRET}",
            "  buckets            cli-bucket",
            f"  export OSS_ENDPOINT={endpoint} OSS_REGION=cn-beijing "
            f"OSS_ACCESS_KEY_ID={DEFAULT_ACCESS_KEY_ID} "
            f"OSS_ACCESS_KEY_SECRET={DEFAULT_ACCESS_KEY_SECRET}",
        ]
        r = httpx.get(endpoint + "/cli-bucket/x", trust_env=False)
        assert r.status_code == 403  # anonymous; the server is up and speaks OSS
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == ""  # nothing after the startup lines
    assert (tmp_path / "buckets" / "cli-bucket.json").exists()


def test_cli_does_not_print_a_secret_from_the_environment(tmp_path: Path) -> None:
    env = {**os.environ, "OSS_ACCESS_KEY_ID": "dev-id", "OSS_ACCESS_KEY_SECRET": "dev-secret"}
    (tmp_path / "buckets").mkdir()  # a --data-dir kept from an earlier run: its buckets count
    (tmp_path / "buckets" / "kept.json").write_text('{"name": "kept", "created": 0}')
    proc = _start_cli(tmp_path, env, "--bucket", "new-one")
    try:
        endpoint, rest = _startup_lines(proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert rest == [
        f"  endpoint           {endpoint}",
        "  region             cn-hangzhou",
        "  access key id      dev-id",
        "  access key secret  (the value of $OSS_ACCESS_KEY_SECRET)",
        "  buckets            kept, new-one",
        f"  export OSS_ENDPOINT={endpoint} OSS_REGION=cn-hangzhou",
    ]
    assert "dev-secret" not in out + err


def test_readme_shows_what_the_cli_prints() -> None:
    from oss_callback.testing._cli import startup_lines

    lines = startup_lines("http://127.0.0.1:9000", "cn-hangzhou", DEFAULT_ACCESS_KEY_ID,
                          DEFAULT_ACCESS_KEY_SECRET, ["examplebucket"])
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "```\n" + "\n".join(lines) + "\n```\n" in readme


def test_public_names() -> None:
    import oss_callback.testing as testing

    # isort-style, as ruff (RUF022) wants: constants first, then classes
    assert testing.__all__ == sorted(testing.__all__, key=lambda n: (not n.isupper(), n))
    for name in testing.__all__:
        value = getattr(testing, name)
        assert isinstance(value, str) or value.__doc__, name
    assert {"OSSEmulator", "Fault", "FaultInjector", "CallbackReceiver"} <= set(testing.__all__)


def test_cli_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    from oss_callback.testing._cli import main_emulator

    with OSSEmulator() as emu:
        port = emu.port
        assert main_emulator(["--port", str(port)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert f"cannot listen on 127.0.0.1:{port}" in err
