"""Upload callbacks through the emulator, received by a real HTTP server and verified here.

The signature check below is an independent implementation of PROTOCOL.md §2 (it does not
use the emulator's or the package's code): fetch the PEM from the base64 ``x-oss-pub-key-url``,
then RSA PKCS#1 v1.5 / MD5 over ``unquote(path) [+ '?' + query] + '\\n' + body``.
"""

from __future__ import annotations

import base64
import json
import socket
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from support.emulator_helpers import error_code, error_field, oss_request

from oss_callback.protocol._crc64 import crc64
from oss_callback.testing import CallbackReceiver, OSSEmulator, ReceivedCallback

PART = 100 * 1024


def b64json(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def verify_callback(received: ReceivedCallback, *, expected_key_url: str) -> bool:
    """PROTOCOL.md §2, from scratch."""
    key_url = base64.b64decode(received.headers["x-oss-pub-key-url"]).decode()
    assert key_url == expected_key_url
    pem = httpx.get(key_url, trust_env=False).content
    public_key = serialization.load_pem_public_key(pem)
    assert isinstance(public_key, RSAPublicKey)
    signature = base64.b64decode(received.headers["authorization"])
    message = unquote(received.path)
    if received.query:
        message += "?" + received.query
    try:
        public_key.verify(
            signature, message.encode() + b"\n" + received.body, padding.PKCS1v15(), hashes.MD5()
        )
    except InvalidSignature:
        return False
    return True


def _free_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nobody-listens"


def put_with_callback(
    emu: OSSEmulator,
    bucket: str,
    key: str,
    body: bytes,
    callback: Any,
    var: Any = None,
    **kw: Any,
) -> httpx.Response:
    headers = {"x-oss-callback": callback if isinstance(callback, str) else b64json(callback)}
    if var is not None:
        headers["x-oss-callback-var"] = var if isinstance(var, str) else b64json(var)
    headers.update(kw.pop("headers", {}))
    return oss_request(emu, "PUT", bucket, key, body=body, headers=headers, **kw)


def test_public_key_is_served(oss_emulator: OSSEmulator) -> None:
    r = httpx.get(oss_emulator.public_key_url, trust_env=False)
    assert r.status_code == 200
    assert r.content == oss_emulator.public_key_pem
    assert r.content.startswith(b"-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_put_with_form_callback_and_variables(
    oss_emulator: OSSEmulator, oss_bucket: str, callback_receiver: CallbackReceiver, version: str
) -> None:
    callback_receiver.respond(body=b'{"Status":"OK","n":1}')
    template = (
        "bucket=${bucket}&object=${object}&etag=${etag}&size=${size}&mimeType=${mimeType}"
        "&crc64=${crc64}&md5=${contentMd5}&op=${operation}&rid=${reqId}&ip=${clientIp}"
        "&h=${imageInfo.height}&uid=${x:uid}&missing=${x:missing}"
    )
    data = b"hello world"
    r = put_with_callback(
        oss_emulator,
        oss_bucket,
        "dir/a b+c.txt",
        data,
        {"callbackUrl": callback_receiver.url + "/cb/p%20q?token=1%2B2", "callbackBody": template},
        {"x:uid": "u 1/2&3"},
        headers={"Content-Type": "text/plain"},
        version=version,
    )
    assert r.status_code == 200, r.text
    assert r.content == b'{"Status":"OK","n":1}'
    assert r.headers["content-type"] == "application/json"
    assert r.headers["etag"] == '"5EB63BBBE01EEED093CB22BB8F5ACDC3"'
    assert r.headers["x-oss-hash-crc64ecma"] == "5981764153023615706"

    (got,) = callback_receiver.wait_for(1)
    assert got.method == "POST"
    assert (got.path, got.query) == ("/cb/p%20q", "token=1%2B2")
    assert got.headers["content-type"] == "application/x-www-form-urlencoded"
    assert verify_callback(got, expected_key_url=oss_emulator.public_key_url)
    assert "object=dir%2Fa%20b%2Bc.txt" in got.body.decode()  # quote(value, safe="")
    fields = {
        k: v[0] if v else "" for k, v in parse_qs(got.body.decode(), keep_blank_values=True).items()
    }
    assert fields["bucket"] == oss_bucket
    assert fields["object"] == "dir/a b+c.txt"
    assert fields["etag"] == "5EB63BBBE01EEED093CB22BB8F5ACDC3"
    assert fields["size"] == "11"
    assert fields["mimeType"] == "text/plain"
    assert fields["crc64"] == str(crc64(data))
    assert fields["md5"] == r.headers["content-md5"]
    assert fields["op"] == "PutObject"
    assert fields["rid"] == r.headers["x-oss-request-id"]
    assert fields["ip"] == "127.0.0.1"
    assert fields["h"] == ""
    assert fields["uid"] == "u 1/2&3"
    assert fields["missing"] == ""
    # the signature covers the body: a tampered copy does not verify
    tampered = ReceivedCallback(
        method=got.method,
        path=got.path,
        query=got.query,
        headers=got.headers,
        body=got.body + b"&x=1",
    )
    assert not verify_callback(tampered, expected_key_url=oss_emulator.public_key_url)
    (record,) = oss_emulator.callbacks
    assert record.ok and record.status == 200 and record.body == got.body
    assert oss_emulator.get_object(oss_bucket, "dir/a b+c.txt") == data


def test_json_callback_body(
    oss_emulator: OSSEmulator, oss_bucket: str, callback_receiver: CallbackReceiver
) -> None:
    template = (
        '{"object":${object},"size":${size},"crc":${crc64},"quoted":"${x:v} and ${bucket}","n":1}'
    )
    r = put_with_callback(
        oss_emulator,
        oss_bucket,
        'q"uote\\d',
        b"12345",
        {
            "callbackUrl": callback_receiver.url,
            "callbackBody": template,
            "callbackBodyType": "application/json",
            "callbackHost": "app.example.com",
        },
        {"x:v": 'say "hi"'},
    )
    assert r.status_code == 200, r.text
    (got,) = callback_receiver.wait_for(1)
    assert got.headers["content-type"] == "application/json"
    assert got.headers["host"] == "app.example.com"
    assert got.path == "/"
    assert verify_callback(got, expected_key_url=oss_emulator.public_key_url)
    assert json.loads(got.body) == {
        "object": 'q"uote\\d',
        "size": 5,
        "crc": crc64(b"12345"),
        "quoted": f'say "hi" and {oss_bucket}',
        "n": 1,
    }


def test_second_url_used_when_first_fails(
    oss_emulator: OSSEmulator, oss_bucket: str, callback_receiver: CallbackReceiver
) -> None:
    dead = _free_port_url()
    r = put_with_callback(
        oss_emulator,
        oss_bucket,
        "k",
        b"x",
        {"callbackUrl": f"{dead};{callback_receiver.url}/ok", "callbackBody": "o=${object}"},
    )
    assert r.status_code == 200
    assert [c.url for c in oss_emulator.callbacks] == [dead, callback_receiver.url + "/ok"]
    assert [c.ok for c in oss_emulator.callbacks] == [False, True]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("refused", "Error status : -1. OSS can not connect to your callbackUrl, please check it."),
        ("502", "Error status : 502."),
        ("not-json", "Response body is not valid json format."),
        ("bom", "Response body is not valid json format."),
        ("timeout", "timeout"),
        ("too-long", "too long"),
    ],
)
def test_failed_callback_is_203_and_object_kept(
    oss_emulator: OSSEmulator,
    oss_bucket: str,
    callback_receiver: CallbackReceiver,
    setup: str,
    message: str,
) -> None:
    url = callback_receiver.url + "/cb"
    if setup == "refused":
        url = _free_port_url()
    elif setup == "502":
        callback_receiver.respond(status=502)
    elif setup == "not-json":
        callback_receiver.respond(body=b"OK")
    elif setup == "bom":
        callback_receiver.respond(body=b'\xef\xbb\xbf{"a":1}')
    elif setup == "timeout":
        oss_emulator.callback_timeout = 0.3
        callback_receiver.respond(delay=3)
    elif setup == "too-long":
        callback_receiver.respond(body=b'"' + b"a" * (1024 * 1024 + 10) + b'"')
    r = put_with_callback(
        oss_emulator,
        oss_bucket,
        "kept",
        b"data",
        {"callbackUrl": url, "callbackBody": "o=${object}"},
    )
    assert r.status_code == 203
    assert error_code(r) == "CallbackFailed"
    assert message in (error_field(r, "Message") or "")
    assert r.headers["etag"] == '"8D777F385D3DFEC8815D20F7496026DC"'
    assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(b"data"))
    assert oss_emulator.get_object(oss_bucket, "kept") == b"data"
    assert oss_emulator.callbacks[-1].error == error_field(r, "Message")


GOOD = {"callbackUrl": "http://127.0.0.1:9/cb", "callbackBody": "a=${object}"}


@pytest.mark.parametrize(
    ("callback", "var", "argument"),
    [
        ("not base64!!", None, "callback"),
        (base64.b64encode(b"{not json").decode(), None, "callback"),
        (b64json(["a list"]), None, "callback"),
        (b64json({"callbackUrl": "http://127.0.0.1:9/"}), None, "callback"),
        (b64json({**GOOD, "callbackBody": ""}), None, "callback"),
        (b64json({**GOOD, "callbackUrl": ";".join(["http://127.0.0.1:9/"] * 6)}), None, "callback"),
        (b64json({**GOOD, "callbackUrl": "http://127.0.0.1:port/"}), None, "callback"),
        (b64json({**GOOD, "callbackUrl": "ftp://127.0.0.1/"}), None, "callback"),
        (b64json({**GOOD, "callbackBodyType": "text/plain"}), None, "callback"),
        (b64json({**GOOD, "callbackSNI": "true"}), None, "callback"),
        (b64json({**GOOD, "callbackBody": "a=${object"}), None, "callback"),
        (b64json({**GOOD, "callbackBody": "a=${bad name}"}), None, "callback"),
        (b64json(GOOD), b64json({"x:UPPER": "v"}), "callback-var"),
        (b64json(GOOD), b64json({"uid": "v"}), "callback-var"),
        (b64json(GOOD), b64json({"x:a": {"nested": 1}}), "callback-var"),
        (b64json(GOOD), b64json(["x:a"]), "callback-var"),
        (b64json(GOOD), "%%%", "callback-var"),
        ("A" * 6000, None, "callback"),
    ],
)
def test_malformed_callback_is_400_and_nothing_stored(
    oss_emulator: OSSEmulator, oss_bucket: str, callback: str, var: str | None, argument: str
) -> None:
    r = put_with_callback(oss_emulator, oss_bucket, "never", b"data", callback, var)
    assert r.status_code == 400, r.text
    assert error_code(r) == "InvalidArgument"
    assert error_field(r, "ArgumentName") == argument
    assert error_field(r, "ArgumentValue") is not None
    assert oss_emulator.head_object(oss_bucket, "never") is None
    assert oss_emulator.callbacks == []


def test_header_and_query_callback_together_is_400(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    r = oss_request(
        oss_emulator,
        "PUT",
        oss_bucket,
        "never",
        body=b"x",
        headers={"x-oss-callback": b64json(GOOD)},
        query=[("callback", b64json(GOOD))],
    )
    assert (r.status_code, error_code(r)) == (400, "InvalidArgument")
    assert oss_emulator.head_object(oss_bucket, "never") is None


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_query_form_callback(
    oss_emulator: OSSEmulator, oss_bucket: str, callback_receiver: CallbackReceiver, version: str
) -> None:
    query = [
        ("callback", b64json({"callbackUrl": callback_receiver.url, "callbackBody": "v=${x:v}"})),
        ("callback-var", b64json({"x:v": "1"})),
    ]
    r = oss_request(oss_emulator, "PUT", oss_bucket, "qk", body=b"x", query=query, version=version)
    assert r.status_code == 200, r.text
    assert callback_receiver.wait_for(1)[0].body == b"v=1"


def test_multipart_complete_with_callback(
    oss_emulator: OSSEmulator, oss_bucket: str, callback_receiver: CallbackReceiver
) -> None:
    key = "mp/cb"
    r = oss_request(
        oss_emulator,
        "POST",
        oss_bucket,
        key,
        query=[("uploads", "")],
        headers={"Content-Type": "image/png"},
    )
    upload_id = ET.fromstring(r.content).findtext("UploadId") or ""
    parts = [b"a" * PART, b"b" * 10]
    etags = [
        oss_request(
            oss_emulator,
            "PUT",
            oss_bucket,
            key,
            body=p,
            query=[("partNumber", str(n)), ("uploadId", upload_id)],
        ).headers["etag"]
        for n, p in enumerate(parts, 1)
    ]
    body = (
        "<CompleteMultipartUpload>"
        + "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
            for n, e in enumerate(etags, 1)
        )
        + "</CompleteMultipartUpload>"
    )
    bad = oss_request(
        oss_emulator,
        "POST",
        oss_bucket,
        key,
        query=[("uploadId", upload_id)],
        body=body.encode(),
        headers={"x-oss-callback": "%%"},
    )
    assert (bad.status_code, error_code(bad)) == (400, "InvalidArgument")
    assert oss_emulator.head_object(oss_bucket, key) is None
    assert oss_emulator.list_uploads(oss_bucket) == [upload_id]  # still completable

    callback = {
        "callbackUrl": callback_receiver.url + "/mp",
        "callbackBody": '{"size":${size},"op":${operation},"mime":${mimeType},"md5":${contentMd5}}',
        "callbackBodyType": "application/json",
    }
    r = oss_request(
        oss_emulator,
        "POST",
        oss_bucket,
        key,
        query=[("uploadId", upload_id)],
        body=body.encode(),
        headers={"x-oss-callback": b64json(callback)},
    )
    assert r.status_code == 200, r.text
    assert r.content == b'{"Status":"OK"}'  # the XML result is replaced
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(b"".join(parts)))
    (got,) = callback_receiver.wait_for(1)
    assert verify_callback(got, expected_key_url=oss_emulator.public_key_url)
    assert json.loads(got.body) == {
        "size": PART + 10,
        "op": "CompleteMultipartUpload",
        "mime": "image/png",
        "md5": "",
    }
    assert oss_emulator.get_object(oss_bucket, key) == b"".join(parts)
