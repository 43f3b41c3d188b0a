"""PostObject in the emulator: a browser's form upload with a signed POST policy (V1 and V4),
policy conditions, the file streamed to disk, and an upload callback, over real sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from support.emulator_helpers import error_code, error_field

from oss_callback.protocol._crc64 import crc64
from oss_callback.protocol._signing import v4_signature
from oss_callback.server import CallbackVerifier
from oss_callback.testing import CallbackReceiver, OSSEmulator

B = "post-bucket"
MiB = 1024 * 1024


@pytest.fixture
def emu(oss_emulator: OSSEmulator) -> OSSEmulator:
    oss_emulator.create_bucket(B)
    return oss_emulator


def _policy(conditions: Sequence[object], expires_in: float = 600) -> str:
    expiration = datetime.now(timezone.utc) + timedelta(seconds=expires_in)
    document = {"expiration": expiration.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "conditions": list(conditions)}
    return base64.b64encode(json.dumps(document).encode()).decode()


def _v1(emulator: OSSEmulator, policy: str, secret: str | None = None) -> dict[str, str]:
    digest = hmac.new((secret or emulator.access_key_secret).encode(), policy.encode(),
                      hashlib.sha1).digest()
    return {"OSSAccessKeyId": emulator.access_key_id, "policy": policy,
            "Signature": base64.b64encode(digest).decode()}


def _v4_fields(emulator: OSSEmulator) -> dict[str, str]:
    now = datetime.now(timezone.utc)
    day = now.strftime("%Y%m%d")
    scope = f"{day}/{emulator.region}/oss/aliyun_v4_request"
    return {
        "x-oss-signature-version": "OSS4-HMAC-SHA256",
        "x-oss-credential": f"{emulator.access_key_id}/{scope}",
        "x-oss-date": now.strftime("%Y%m%dT%H%M%SZ"),
    }


def _v4(emulator: OSSEmulator, policy: str, fields: dict[str, str]) -> dict[str, str]:
    # Derived here from the documented steps, not with the SDK's signer.
    key = ("aliyun_v4" + emulator.access_key_secret).encode()
    for part in (fields["x-oss-date"][:8], emulator.region, "oss", "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, policy.encode(), hashlib.sha256).hexdigest()
    assert signature == v4_signature(emulator.access_key_secret, fields["x-oss-date"],
                                     emulator.region, policy)  # the SDK's signer agrees
    return {**fields, "policy": policy, "x-oss-signature": signature}


def _form(fields: dict[str, str], data: bytes, filename: str = "photo.jpg",
          file_type: str | None = None, after: dict[str, str] | None = None,
          ) -> tuple[bytes, str]:
    boundary = "----oss-emulator-test-" + os.urandom(8).hex()
    out = bytearray()
    for name, value in fields.items():
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n").encode()
    out += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{filename}"\r\n').encode()
    if file_type:
        out += f"Content-Type: {file_type}\r\n".encode()
    out += b"\r\n" + data + b"\r\n"
    for name, value in (after or {}).items():  # ignored, as on OSS
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                f"{value}\r\n").encode()
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _post(emulator: OSSEmulator, body: bytes, content_type: str) -> httpx.Response:
    def chunks() -> Iterator[bytes]:  # small pieces: boundaries fall across reads
        for i in range(0, len(body), 65_000):
            yield body[i : i + 65_000]

    with httpx.Client(trust_env=False, timeout=30) as http:
        return http.post(f"{emulator.endpoint}/{B}", content=chunks(),
                         headers={"Content-Type": content_type,
                                  "Content-Length": str(len(body))})


def test_v1_form_upload_stores_the_file(emu: OSSEmulator) -> None:
    data = os.urandom(3 * MiB + 17)  # several reads, the delimiter split across them
    policy = _policy([{"bucket": B}, ["starts-with", "$key", "user/"],
                      ["content-length-range", 1, 10 * MiB]])
    fields = {"key": "user/${filename}", **_v1(emu, policy), "x-oss-meta-owner": "alice",
              "Content-Type": "image/jpeg"}
    body, ctype = _form(fields, data, after={"key": "ignored-after-the-file"})
    r = _post(emu, body, ctype)
    assert r.status_code == 204, r.text
    assert r.headers["etag"] == f'"{hashlib.md5(data).hexdigest().upper()}"'
    assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(data))
    assert emu.get_object(B, "user/photo.jpg") == data
    obj = emu.head_object(B, "user/photo.jpg")
    assert obj is not None
    assert obj.content_type == "image/jpeg"
    assert obj.metadata == {"x-oss-meta-owner": "alice"}
    assert emu.requests[-1].operation == "PostObject"


def test_v4_form_upload_with_success_action_status_201(emu: OSSEmulator) -> None:
    data = b"hello from a browser"
    v4 = _v4_fields(emu)
    policy = _policy([{"bucket": B}, ["eq", "$key", "v4.txt"],
                      {"x-oss-signature-version": "OSS4-HMAC-SHA256"},
                      {"x-oss-credential": v4["x-oss-credential"]},
                      {"x-oss-date": v4["x-oss-date"]}])
    fields = {"key": "v4.txt", "success_action_status": "201", **_v4(emu, policy, v4)}
    body, ctype = _form(fields, data, file_type="text/plain")
    r = _post(emu, body, ctype)
    assert r.status_code == 201, r.text
    xml = ET.fromstring(r.content)
    assert xml.tag == "PostResponse"
    assert xml.findtext("Bucket") == B and xml.findtext("Key") == "v4.txt"
    assert xml.findtext("ETag") == f'"{hashlib.md5(data).hexdigest().upper()}"'
    assert emu.get_object(B, "v4.txt") == data
    head = emu.head_object(B, "v4.txt")
    assert head is not None and head.content_type == "text/plain"  # from the file part


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ("wrong-secret", 403, "SignatureDoesNotMatch"),
        ("unknown-key", 403, "InvalidAccessKeyId"),
        ("no-policy", 403, "AccessDenied"),
        ("no-signature", 400, "InvalidArgument"),
        ("expired", 403, "AccessDenied"),
        ("condition", 403, "AccessDenied"),
        ("not-json", 400, "InvalidPolicyDocument"),
        ("too-large", 400, "EntityTooLarge"),
        ("too-small", 400, "EntityTooSmall"),
        ("no-key", 400, "InvalidArgument"),
        ("v4-wrong-region", 403, "SignatureDoesNotMatch"),
    ],
)
def test_bad_forms_are_refused_and_store_nothing(
    emu: OSSEmulator, change: str, status: int, code: str
) -> None:
    conditions: list[object] = [] if change == "no-key" else [["starts-with", "$key", "ok/"]]
    if change == "too-large":
        conditions.append(["content-length-range", 0, 10])
    if change == "too-small":
        conditions.append(["content-length-range", 1000, 2000])
    policy = _policy(conditions, expires_in=-1 if change == "expired" else 600)
    if change == "not-json":
        policy = base64.b64encode(b"{nope").decode()
    fields = {"key": "bad/x" if change == "condition" else "ok/x", **_v1(emu, policy)}
    if change == "wrong-secret":
        fields = {"key": "ok/x", **_v1(emu, policy, secret="not-the-secret")}
    elif change == "unknown-key":
        fields["OSSAccessKeyId"] = "LTAI-nobody"
    elif change == "no-policy":
        del fields["policy"]
    elif change == "no-signature":
        del fields["Signature"]
    elif change == "no-key":
        del fields["key"]
    elif change == "v4-wrong-region":
        v4 = _v4_fields(emu)
        v4["x-oss-credential"] = v4["x-oss-credential"].replace(emu.region, "us-west-1")
        fields = {"key": "ok/x", **_v4(emu, policy, v4)}
    body, ctype = _form(fields, b"0123456789abcdef")
    r = _post(emu, body, ctype)
    assert (r.status_code, error_code(r)) == (status, code), r.text
    assert emu.list_keys(B) == []
    assert list((emu.data_dir / "tmp").iterdir()) == []


@pytest.mark.parametrize("case", ["not-a-form", "no-file", "unterminated-file", "huge-field"])
def test_malformed_forms_get_400(emu: OSSEmulator, case: str) -> None:
    signed = "".join(
        f'--B\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in {"key": "k", **_v1(emu, _policy([]))}.items()
    ).encode()
    body = {
        "not-a-form": b"not a form at all",
        "no-file": signed + b"--B--\r\n",
        "unterminated-file": signed
        + b'--B\r\nContent-Disposition: form-data; name="file"\r\n\r\nno closing boundary',
        "huge-field": b'--B\r\nContent-Disposition: form-data; name="x:big"\r\n\r\n'
        + b"a" * (200 * 1024) + b"\r\n" + signed + b"--B--\r\n",
    }[case]
    r = _post(emu, body, "multipart/form-data; boundary=B")
    assert r.status_code == 400, r.text
    assert error_code(r) == "MalformedPOSTRequest"
    r = _post(emu, body, "text/plain")
    assert error_code(r) == "MalformedPOSTRequest"
    assert emu.list_keys(B) == []
    assert list((emu.data_dir / "tmp").iterdir()) == []


def test_form_callback_is_sent_signed_and_answered(
    emu: OSSEmulator, callback_receiver: CallbackReceiver
) -> None:
    callback = {"callbackUrl": callback_receiver.url + "/cb",
                "callbackBody": "object=${object}&size=${size}&who=${x:who}&op=${operation}"}
    callback_b64 = base64.b64encode(json.dumps(callback).encode()).decode()
    policy = _policy([{"bucket": B}, {"callback": callback_b64}])
    fields = {"key": "cb.bin", **_v1(emu, policy), "callback": callback_b64, "x:who": "bob"}
    data = os.urandom(1000)
    body, ctype = _form(fields, data)
    r = _post(emu, body, ctype)
    assert r.status_code == 200, r.text
    assert r.content == b'{"Status":"OK"}'  # the callback server's answer, handed back
    (received,) = callback_receiver.wait_for(1)
    assert received.body == b"object=cb.bin&size=1000&who=bob&op=PostObject"
    verifier = CallbackVerifier(public_key=emu.public_key_pem)
    import anyio

    verified = anyio.run(verifier.verify, received.method, received.path, received.query,
                         received.headers, received.body)
    assert verified.fields["who"] == "bob"
    assert emu.get_object(B, "cb.bin") == data


def test_form_callback_failure_is_203_with_the_object_stored(emu: OSSEmulator) -> None:
    with CallbackReceiver(status=500) as failing:
        callback = {"callbackUrl": failing.url, "callbackBody": "object=${object}"}
        callback_b64 = base64.b64encode(json.dumps(callback).encode()).decode()
        policy = _policy([{"bucket": B}])
        fields = {"key": "stored.bin", **_v1(emu, policy), "callback": callback_b64}
        body, ctype = _form(fields, b"payload")
        r = _post(emu, body, ctype)
    assert r.status_code == 203
    assert error_code(r) == "CallbackFailed"
    assert emu.get_object(B, "stored.bin") == b"payload"


def test_forms_over_the_5_gb_limit_are_refused(
    emu: OSSEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oss_callback.testing import _post_object

    monkeypatch.setattr(_post_object, "MAX_PUT_SIZE", 1000)  # 5 GB stands for 1000 bytes here
    fields = {"key": "big.bin", **_v1(emu, _policy([]))}
    body, ctype = _form(fields, os.urandom(2000))
    # Chunked, so no size is announced: found while storing.
    with httpx.Client(trust_env=False, timeout=30) as http:
        r = http.post(f"{emu.endpoint}/{B}", content=iter([body]),
                      headers={"Content-Type": ctype})
    assert (r.status_code, error_code(r)) == (400, "EntityTooLarge"), r.text
    assert error_field(r, "MaxSizeAllowed") == "1000"
    assert error_field(r, "ProposedSize") == "2000"  # the file's size
    # Announced: refused before anything is read.
    monkeypatch.setattr(_post_object, "POST_FORM_OVERHEAD", 0)
    r = _post(emu, body, ctype)
    assert (r.status_code, error_code(r)) == (400, "EntityTooLarge"), r.text
    assert error_field(r, "ProposedSize") == str(len(body))  # the announced length
    assert emu.list_keys(B) == []
    assert list((emu.data_dir / "tmp").iterdir()) == []
