"""Presigned URLs (``sign_url``), proven three ways.

a. The same URL as the official SDKs for the same inputs at a frozen time: byte for byte
   as ``alibabacloud_oss_v2``'s ``Client.presign``; as ``oss2``'s ``Bucket.sign_url``, the
   same signature, host, path and query parameters (each byte-equal), only their order
   differs (oss2 puts ``security-token``/``x-oss-security-token`` first and writes
   ``x-oss-date&x-oss-expires&x-oss-signature-version``; OSS's docs fix no order, and v2's
   is followed). Plus the presigned vectors of PROTOCOL.md §4.1/§4.2.
b. A plain ``httpx`` request (no SDK) to the emulator with the URL works; a presigned PUT
   carrying a callback stores the object and delivers a callback that
   :class:`~oss_callback.server.CallbackVerifier` accepts, and the PUT's response is the
   callback server's answer.
c. Expired and tampered URLs are refused with OSS's codes and nothing is stored.

Known differences between the SDKs, found here:

* alibabacloud-oss-v2 (1.4.1) accepts ``Config.additional_headers`` but never hands them to
  its signer, so its presigned URLs sign no additional header: for a header such as
  ``Cache-Control`` (V4) we match oss2's ``sign_url(additional_headers=...)``, which is what
  OSS documents (``x-oss-additional-headers``).
* alibabacloud-oss-v2's V1 sub-resource list lacks ``x-oss-process`` and
  ``x-oss-traffic-limit``, which OSS's V1 docs list as sub-resources ("Add a signature to
  the header": CanonicalizedResource) and oss2 signs: v2 is compared with them added
  (``SigningContext.sub_resource`` is how its own operations add such names).
"""

from __future__ import annotations

import base64
import json
import types
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

import alibabacloud_oss_v2 as oss_v2
import alibabacloud_oss_v2.presigner as v2_presigner
import alibabacloud_oss_v2.signer.v1 as v2_signer_v1
import alibabacloud_oss_v2.signer.v4 as v2_signer_v4
import attrs
import httpx
import oss2
import oss2.auth
import oss2.credentials
import pytest
from support.emulator_helpers import error_code, error_field
from support.helpers import form_fields

from oss_callback import AsyncClient, Callback
from oss_callback.client._http import Session
from oss_callback.client._sync import Bucket, Client
from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._endpoint import Endpoint
from oss_callback.protocol._presign import MAX_V4_EXPIRES, presign_url
from oss_callback.server import CallbackVerifier

CLOUD = "https://oss-cn-hangzhou.aliyuncs.com"
BUCKET = "examplebucket"
NOW = datetime(2024, 3, 5, 6, 7, 8, tzinfo=timezone.utc)
TOKEN = "CAIS+sts/token=="  # a made-up STS token, with characters to encode
V2_SUBRESOURCES = v2_signer_v1.SignerV1._subresource_key_set
#: sub-resources in OSS's V1 docs (and oss2's list) that alibabacloud-oss-v2 leaves out
DOCUMENTED_SUBRESOURCES = frozenset({"x-oss-process", "x-oss-traffic-limit"})
CALLBACK = Callback("https://app.example.com/oss-callback", query={"src": "device"},
                    body="object=${object}&size=${size}&uid=${x:uid}",
                    variables={"x:uid": "42"})


# --------------------------------------------------------------------------- a. oracles


class _Frozen(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return NOW.astimezone(tz) if tz else NOW.replace(tzinfo=None)

    @classmethod
    def utcnow(cls) -> Any:
        return NOW.replace(tzinfo=None)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> datetime:
    """One instant for us (``Session.now``), oss2 (``time.time``, ``datetime.utcnow`` in
    ``oss2.auth``) and alibabacloud-oss-v2 (``datetime.datetime.now`` in its signers and
    presigner)."""
    monkeypatch.setattr(Session, "now", lambda self: NOW)
    monkeypatch.setattr(oss2.auth, "datetime", _Frozen)
    monkeypatch.setattr(oss2.auth, "time", types.SimpleNamespace(time=NOW.timestamp))
    shim = types.SimpleNamespace(datetime=_Frozen, timezone=timezone, timedelta=timedelta)
    for module in (v2_signer_v1, v2_signer_v4, v2_presigner):
        monkeypatch.setattr(module, "datetime", shim)
    monkeypatch.setattr(v2_signer_v1.SignerV1, "_subresource_key_set",
                        V2_SUBRESOURCES | DOCUMENTED_SUBRESOURCES)
    return NOW


@attrs.frozen
class Case:
    id: str
    method: str
    key: str
    headers: dict[str, str] = attrs.field(factory=dict)
    params: dict[str, str] = attrs.field(factory=dict)
    callback: bool = False
    #: a header beyond x-oss-*/Content-Type/Content-MD5 (V4 signs it as additional)
    additional: bool = False


CASES = [
    Case("get", "GET", "photo.jpg"),
    Case("get-encoded-key", "GET", "dir/杭州 a+b~(1).jpg"),
    Case("put", "PUT", "videos/a.mp4"),
    Case("put-content-type", "PUT", "videos/a.mp4", headers={"Content-Type": "video/mp4"}),
    Case("put-meta-and-md5", "PUT", "docs/x.txt",
         headers={"Content-Type": "text/plain", "Content-MD5": "eB5eJF1ptWaXm4bijSPyxw==",
                  "x-oss-meta-author": "alice", "x-oss-object-acl": "private"}),
    Case("get-params", "GET", "report.pdf",
         params={"response-content-type": "application/pdf",
                 "response-content-disposition": 'attachment; filename="r.pdf"',
                 "x-oss-process": "image/resize,w_100", "not-a-subresource": "a&b=c"}),
    Case("get-bare-param", "GET", "report.pdf", params={"acl": ""}),
    Case("put-callback", "PUT", "uploads/u42/clip.mp4", callback=True,
         headers={"Content-Type": "video/mp4"}),
    Case("put-callback-params", "PUT", "uploads/u42/clip.mp4", callback=True,
         params={"x-oss-traffic-limit": "819200"}),
    Case("put-additional", "PUT", "a.bin", additional=True,
         headers={"Content-Type": "application/octet-stream", "Cache-Control": "no-cache",
                  "Content-Disposition": "inline"}),
]


def _ours(case: Case, version: str, token: str | None) -> str:
    with Bucket(BUCKET, CLOUD, "ak-id", "ak-secret", security_token=token,
                signature_version=version) as bucket:
        return bucket.sign_url(case.method, case.key, 600, headers=case.headers or None,
                               params=case.params or None,
                               callback=CALLBACK if case.callback else None)


def _official_params(case: Case) -> dict[str, str]:
    params = dict(case.params)
    if case.callback:  # how oss2 users carry a callback in a URL (oss2 test_sign_url_with_callback)
        params["callback"] = CALLBACK.encoded_callback
        params["callback-var"] = CALLBACK.encoded_variables or ""
    return params


def _oss2(case: Case, version: str, token: str | None) -> str:
    provider = oss2.credentials.StaticCredentialsProvider("ak-id", "ak-secret", token or "")
    auth: Any = (oss2.ProviderAuthV4(provider) if version == "v4"
                 else oss2.ProviderAuth(provider))
    bucket = oss2.Bucket(auth, CLOUD, BUCKET, region="cn-hangzhou")
    extra: dict[str, Any] = {}
    if version == "v4":
        # oss2 sorts this list by first character only: hand it over sorted
        extra["additional_headers"] = sorted(
            h.lower() for h in case.headers
            if not h.lower().startswith("x-oss-") and h.lower() not in ("content-type",
                                                                           "content-md5"))
    url: str = bucket.sign_url(case.method, case.key, 600, headers=dict(case.headers),
                               params=_official_params(case), slash_safe=True, **extra)
    return url


def _v2(case: Case, version: str, token: str | None) -> str:
    cfg = oss_v2.config.load_default()
    cfg.credentials_provider = oss_v2.credentials.StaticCredentialsProvider(
        "ak-id", "ak-secret", token)
    cfg.region = "cn-hangzhou"
    cfg.endpoint = CLOUD
    cfg.signature_version = version
    model = oss_v2.GetObjectRequest if case.method == "GET" else oss_v2.PutObjectRequest
    request = model(bucket=BUCKET, key=case.key, headers=dict(case.headers),
                    parameters=_official_params(case))
    result = oss_v2.Client(cfg).presign(request, expiration=NOW + timedelta(seconds=600))
    assert result.method == case.method
    url: str = result.url
    return url


def _pairs(url: str) -> list[tuple[str, str]]:
    """The query's (name, value) pairs, still percent-encoded."""
    return [(k, v) for k, _, v in (p.partition("=") for p in urlsplit(url).query.split("&"))]


def _signature(url: str) -> str:
    (value,) = [v for k, v in _pairs(url) if k in ("Signature", "x-oss-signature")]
    return value


@pytest.mark.oracle
@pytest.mark.parametrize("token", [None, TOKEN], ids=["aksk", "sts"])
@pytest.mark.parametrize("version", ["v1", "v4"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_same_url_as_the_official_sdks(
    frozen: datetime, case: Case, version: str, token: str | None
) -> None:
    ours = _ours(case, version, token)
    official = _oss2(case, version, token)
    v2 = _v2(case, version, token)

    # oss2: the same signature, origin, path and query parameters (each byte-equal)
    assert _signature(ours) == _signature(official)
    assert ours.split("?")[0] == official.split("?")[0]
    assert sorted(_pairs(ours)) == sorted(_pairs(official))
    if version == "v1" and token is None:  # the one case where oss2's order is v2's
        assert ours == official

    # alibabacloud-oss-v2: byte for byte, except where it can't say the same thing
    if case.additional and version == "v4":
        assert "x-oss-additional-headers=cache-control%3Bcontent-disposition" in ours
        assert "x-oss-additional-headers" not in v2  # v2 drops Config.additional_headers
    else:
        assert ours == v2

    # what the URL carries
    names = [k for k, _ in _pairs(ours)]
    if token:
        token_name = "security-token" if version == "v1" else "x-oss-security-token"
        assert (token_name, "CAIS%2Bsts%2Ftoken%3D%3D") in _pairs(ours)
    else:
        assert not any("security-token" in n for n in names)
    if case.callback:
        assert unquote(dict(_pairs(ours))["callback"]) == CALLBACK.encoded_callback
        assert unquote(dict(_pairs(ours))["callback-var"]) == CALLBACK.encoded_variables
    assert "ak-secret" not in ours


@pytest.mark.oracle
@pytest.mark.parametrize("version", ["v1", "v4"])
def test_expiry_as_the_official_sdks(frozen: datetime, version: str) -> None:
    """V1 carries the instant it expires, V4 the signing time and a duration; 7 days is V4's
    limit in both SDKs and here."""
    with Bucket(BUCKET, CLOUD, "ak-id", "ak-secret", signature_version=version) as bucket:
        url = bucket.sign_url("GET", "k", MAX_V4_EXPIRES)
        pairs = dict(_pairs(url))
        if version == "v1":
            assert pairs["Expires"] == str(int(NOW.timestamp()) + MAX_V4_EXPIRES)
            assert bucket.sign_url("GET", "k", MAX_V4_EXPIRES + 1)  # V1 has no limit
        else:
            assert (pairs["x-oss-date"], pairs["x-oss-expires"]) == ("20240305T060708Z",
                                                                     "604800")
            with pytest.raises(ValueError, match="7 days"):
                bucket.sign_url("GET", "k", MAX_V4_EXPIRES + 1)
            with pytest.raises(oss_v2.exceptions.PresignExpirationError):
                oss_v2.Client(_v2_config()).presign(
                    oss_v2.GetObjectRequest(bucket=BUCKET, key="k"),
                    expiration=NOW + timedelta(seconds=MAX_V4_EXPIRES + 1))
    provider = oss2.credentials.StaticCredentialsProvider("ak-id", "ak-secret")
    auth: Any = oss2.ProviderAuthV4(provider) if version == "v4" else oss2.ProviderAuth(provider)
    official = oss2.Bucket(auth, CLOUD, BUCKET, region="cn-hangzhou").sign_url(
        "GET", "k", MAX_V4_EXPIRES, params={})
    assert _signature(official) == _signature(url)


def _v2_config() -> Any:
    cfg = oss_v2.config.load_default()
    cfg.credentials_provider = oss_v2.credentials.StaticCredentialsProvider("ak-id", "ak-secret")
    cfg.region = "cn-hangzhou"
    cfg.endpoint = CLOUD
    return cfg


# PROTOCOL.md §4.1 (alibabacloud-oss-v2 tests/unit/signer/test_v1.py) and §4.2 (test_v4.py)
V4_QUERY = {"param1": "value1", "+param1": "value3", "|param1": "value4", "+param2": "",
            "|param2": "", "param2": ""}


@pytest.mark.parametrize(
    ("version", "key", "when", "expires", "token", "headers", "params", "signature"),
    [
        ("v1", "key", 1699807420 - 600, 600, None, {}, {"versionId": "versionId"},
         "dcLTea%2BYh9ApirQ8o8dOPqtvJXQ%3D"),
        ("v1", "key+123", 1699808204 - 60, 60, "token", {}, {"versionId": "versionId"},
         "jzKYRrM5y6Br0dRFPaTGOsbrDhY%3D"),
        ("v4", "1234+-/123/1.txt", 1702781677, 599, None,
         {"x-oss-head1": "value", "content-type": "application/octet-stream"}, V4_QUERY,
         "a39966c61718be0d5b14e668088b3fa07601033f6518ac7b523100014269c0fe"),
        ("v4", "1234+-/123/1.txt", 1702785388, 599, "token",
         {"x-oss-head1": "value", "content-type": "application/octet-stream"}, V4_QUERY,
         "3817ac9d206cd6dfc90f1c09c00be45005602e55898f26f5ddb06d7892e1f8b5"),
        ("v4", "1234+-/123/1.txt", 1702783809, 599, None,
         {"x-oss-head1": "value", "content-type": "application/octet-stream", "abc": "value",
          "ZAbc": "value"}, V4_QUERY,
         "6bd984bfe531afb6db1f7550983a741b103a8c58e5e14f83ea474c2322dfa2b7"),
    ],
    ids=["v1", "v1-sts", "v4", "v4-sts", "v4-additional"],
)
def test_protocol_vectors(version: str, key: str, when: int, expires: int, token: str | None,
                          headers: dict[str, str], params: dict[str, str],
                          signature: str) -> None:
    url = presign_url(
        "GET" if version == "v1" else "PUT", "bucket", key, expires,
        credentials=Credentials(access_key_id="ak", access_key_secret="sk",
                                security_token=token),
        now=datetime.fromtimestamp(when, timezone.utc), endpoint=Endpoint.parse(CLOUD),
        signature_version=version,  # type: ignore[arg-type]
        region="cn-hangzhou", headers=headers, params=params,
    )
    assert _signature(url) == signature
    if version == "v4" and "abc" in headers:
        assert ("x-oss-additional-headers", "abc%3Bzabc") in _pairs(url)


# --------------------------------------------------------------------------- arguments


@pytest.fixture
def cloud_bucket() -> Iterator[Bucket]:
    with Client(CLOUD, "ak-id", "ak-secret") as client:
        yield client.get_bucket(BUCKET)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "PATCH"}, ValueError, "method must be one of"),
        ({"key": ""}, ValueError, "must not be empty"),
        ({"key": "/abs"}, ValueError, "must not start with"),
        ({"expires": 0}, ValueError, "at least 1 second"),
        ({"expires": float("inf")}, ValueError, "at least 1 second"),
        ({"expires": True}, TypeError, "number of seconds"),
        ({"expires": "600"}, TypeError, "number of seconds"),
        ({"expires": MAX_V4_EXPIRES + 1}, ValueError, "at most 7 days"),
        ({"headers": {"Date": "x"}}, ValueError, "can't be presigned"),
        ({"headers": {"Authorization": "x"}}, ValueError, "can't be presigned"),
        ({"headers": {"x-oss-date": "x"}}, ValueError, "can't be presigned"),
        ({"headers": {"x-oss-security-token": "x"}}, ValueError, "can't be presigned"),
        ({"headers": {"Content-Type": ""}}, ValueError, "empty value"),
        ({"headers": {"x-oss-meta-a": "1\r\nEvil: 1"}}, ValueError, "CR, LF"),
        ({"headers": {"a": "1", "A": "2"}}, ValueError, "given twice"),
        ({"headers": {"bad name": "1"}}, ValueError, "invalid header name"),
        ({"headers": {"a": 1}}, TypeError, "str"),
        ({"params": {"Expires": "1"}}, ValueError, "set by the signature"),
        ({"params": {"x-oss-signature": "1"}}, ValueError, "set by the signature"),
        ({"params": {"OSSAccessKeyId": "1"}}, ValueError, "set by the signature"),
        ({"params": {"": "1"}}, ValueError, "must not be empty"),
        ({"params": {"a": None}}, TypeError, "str"),
        ({"method": "GET", "callback": CALLBACK}, ValueError, "sign a PUT"),
        ({"callback": {"url": "http://a"}}, TypeError, "must be a Callback"),
        ({"callback": CALLBACK, "params": {"callback": "x"}}, ValueError, "callback=..."),
        ({"callback": CALLBACK, "headers": {"x-oss-callback": "x"}}, ValueError, "not both"),
        ({"params": {"callback": "x"}, "headers": {"X-OSS-Callback": "x"}}, ValueError,
         "not both"),
    ],
)
def test_bad_arguments(cloud_bucket: Bucket, kwargs: dict[str, Any], error: type[Exception],
                       match: str) -> None:
    args: dict[str, Any] = {"method": "PUT", "key": "k", "expires": 60, **kwargs}
    with pytest.raises(error, match=match):
        cloud_bucket.sign_url(args.pop("method"), args.pop("key"), args.pop("expires"), **args)


def test_method_case_and_fractional_expires(frozen: datetime, cloud_bucket: Bucket) -> None:
    assert cloud_bucket.sign_url("put", "k", 60.9) == cloud_bucket.sign_url("PUT", "k", 60)


def test_v4_without_a_region_says_so() -> None:
    with pytest.raises(ValueError, match="region"):
        presign_url("GET", BUCKET, "k", 60,
                    credentials=Credentials(access_key_id="a", access_key_secret="s"),
                    now=NOW, endpoint=Endpoint.parse("http://127.0.0.1:1"),
                    signature_version="v4", region=None)


def test_closed_bucket_refuses() -> None:
    client = Client(CLOUD, "ak-id", "ak-secret")
    bucket = client.get_bucket(BUCKET)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        bucket.sign_url("GET", "k", 60)


# --------------------------------------------------------------------------- b. emulator


def _client(emu: Any, version: str, creds: tuple[str, str, str | None] | None = None) -> Client:
    ak, secret, token = creds or (emu.access_key_id, emu.access_key_secret, None)
    return Client(emu.endpoint, ak, secret, security_token=token, region=emu.region,
                  signature_version=version)  # type: ignore[arg-type]


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """The device: plain httpx, no SDK, no proxies from the environment."""
    with httpx.Client(trust_env=False, timeout=30) as client:
        yield client


@pytest.mark.parametrize("sts", [False, True], ids=["aksk", "sts"])
@pytest.mark.parametrize("version", ["v1", "v4"])
def test_plain_http_put_and_get(oss_emulator: Any, oss_bucket: str, http: httpx.Client,
                                version: str, sts: bool) -> None:
    creds = None
    if sts:
        ak, secret, token = oss_emulator.issue_sts_token()
        creds = (ak, secret, token)
    key = "dir/杭州 a+b.txt"
    with _client(oss_emulator, version, creds) as client:
        bucket = client.get_bucket(oss_bucket)
        put_url = bucket.sign_url("PUT", key, 600, headers={"Content-Type": "text/plain",
                                                             "x-oss-meta-owner": "u42"})
        get_url = bucket.sign_url("GET", key, 600,
                                  params={"response-cache-control": "no-store"})
        head_url = bucket.sign_url("HEAD", key, 600)
    if sts:
        assert ("security-token" if version == "v1" else "x-oss-security-token") in put_url
    r = http.put(put_url, content=b"from a device",
                 headers={"Content-Type": "text/plain", "x-oss-meta-owner": "u42"})
    assert r.status_code == 200, r.text
    stored = oss_emulator.head_object(oss_bucket, key)
    assert stored is not None
    assert stored.content_type == "text/plain"
    assert oss_emulator.get_object(oss_bucket, key) == b"from a device"
    r = http.get(get_url)
    assert (r.status_code, r.content) == (200, b"from a device")
    assert r.headers["cache-control"] == "no-store"  # the signed response-cache-control
    r = http.head(head_url)
    assert (r.status_code, r.headers["x-oss-meta-owner"]) == (200, "u42")


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_presigned_put_with_a_callback(oss_emulator: Any, oss_bucket: str, http: httpx.Client,
                                       callback_receiver: Any, version: str) -> None:
    callback_receiver.respond(body=b'{"Status":"OK","id":7}')
    cb = Callback(callback_receiver.url + "/hooks/upload", query={"src": "device"},
                  body="object=${object}&size=${size}&mime=${mimeType}&uid=${x:uid}",
                  variables={"x:uid": "42"})
    with _client(oss_emulator, version) as client:
        url = client.get_bucket(oss_bucket).sign_url(
            "PUT", "uploads/u42/clip.mp4", 600, callback=cb,
            headers={"Content-Type": "video/mp4"})
    assert "x-oss-callback" not in url and "?callback=" in url
    data = b"\x00mp4" * 1000

    r = http.put(url, content=data, headers={"Content-Type": "video/mp4"})

    assert r.status_code == 200, r.text
    assert r.json() == {"Status": "OK", "id": 7}  # the callback server's answer
    assert oss_emulator.get_object(oss_bucket, "uploads/u42/clip.mp4") == data
    (received,) = callback_receiver.wait_for(1)
    verified = CallbackVerifier(public_key=oss_emulator.public_key_pem).verify_sync(
        received.method, received.path, received.query, received.headers, received.body)
    assert verified.fields == {"object": "uploads/u42/clip.mp4", "size": str(len(data)),
                               "mime": "video/mp4", "uid": "42"}
    assert (received.path, received.query) == ("/hooks/upload", "src=device")


def test_presigned_put_whose_callback_fails_gets_203(
    oss_emulator: Any, oss_bucket: str, http: httpx.Client, callback_receiver: Any
) -> None:
    callback_receiver.respond(status=500)
    with _client(oss_emulator, "v4") as client:
        url = client.get_bucket(oss_bucket).sign_url(
            "PUT", "k", 600, callback=Callback(callback_receiver.url))
    r = http.put(url, content=b"x")
    assert (r.status_code, error_code(r)) == (203, "CallbackFailed")
    assert oss_emulator.get_object(oss_bucket, "k") == b"x"  # stored all the same


async def test_async_bucket_sign_url_from_an_async_device(
    oss_emulator: Any, oss_bucket: str, callback_receiver: Any
) -> None:
    """AsyncBucket.sign_url is a plain method; the URL works from an async device too."""
    async with AsyncClient(oss_emulator.endpoint, oss_emulator.access_key_id,
                           oss_emulator.access_key_secret, region=oss_emulator.region) as c:
        url = c.get_bucket(oss_bucket).sign_url(
            "PUT", "async/k", 600, callback=Callback(callback_receiver.url,
                                                     body="object=${object}"))
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        r = await http.put(url, content=b"async bytes")
    assert (r.status_code, r.json()) == (200, {"Status": "OK"})
    assert oss_emulator.get_object(oss_bucket, "async/k") == b"async bytes"
    assert form_fields(callback_receiver.wait_for(1)[0].body) == {"object": "async/k"}


# --------------------------------------------------------------------------- c. refused


def _replace_param(url: str, name: str, value: str) -> str:
    base, _, query = url.partition("?")
    pairs = [(k, value if k == name else v) for k, _, v in (p.partition("=") for p in
                                                                 query.split("&"))]
    return base + "?" + "&".join(f"{k}={v}" if v else k for k, v in pairs)


def _flip(signature: str) -> str:
    return ("0" if signature[0] != "0" else "1") + signature[1:]


TAMPERS: dict[str, Callable[[str, str], str]] = {
    "changed key": lambda url, v: url.replace("/up/clip.mp4?", "/up/clip2.mp4?"),
    "changed expires": lambda url, v: _replace_param(
        url, "Expires" if v == "v1" else "x-oss-expires",
        str(int(dict(_pairs(url))["Expires" if v == "v1" else "x-oss-expires"]) + 3600)),
    "changed signature": lambda url, v: _replace_param(
        url, "Signature" if v == "v1" else "x-oss-signature", _flip(_signature(url))),
    "changed callback": lambda url, v: _replace_param(
        url, "callback", base64.b64encode(json.dumps(
            {"callbackUrl": "http://127.0.0.1:9/evil", "callbackBody": "x=${object}"}
        ).encode()).decode().replace("=", "%3D").replace("+", "%2B").replace("/", "%2F")),
    "changed callback-var": lambda url, v: _replace_param(
        url, "callback-var", base64.b64encode(b'{"x:uid":"666"}').decode().replace("=", "%3D")),
    "callback dropped": lambda url, v: url.replace(
        f"?callback={dict(_pairs(url))['callback']}&callback-var="
        f"{dict(_pairs(url))['callback-var']}&", "?"),
}


@pytest.mark.parametrize("version", ["v1", "v4"])
@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_tampered_urls_are_refused(oss_emulator: Any, oss_bucket: str, http: httpx.Client,
                                   callback_receiver: Any, version: str, tamper: str) -> None:
    with _client(oss_emulator, version) as client:
        url = client.get_bucket(oss_bucket).sign_url(
            "PUT", "up/clip.mp4", 600, headers={"Content-Type": "video/mp4"},
            callback=Callback(callback_receiver.url, body="uid=${x:uid}",
                              variables={"x:uid": "42"}))
    bad = TAMPERS[tamper](url, version)
    assert bad != url
    r = http.put(bad, content=b"x", headers={"Content-Type": "video/mp4"})
    assert (r.status_code, error_code(r)) == (403, "SignatureDoesNotMatch"), r.text
    assert oss_emulator.list_keys(oss_bucket) == []
    assert callback_receiver.received == []
    # the untouched URL still works: the refusal was the tampering's
    assert http.put(url, content=b"x", headers={"Content-Type": "video/mp4"}).status_code == 200


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_a_signed_header_not_sent_or_changed_is_refused(
    oss_emulator: Any, oss_bucket: str, http: httpx.Client, version: str
) -> None:
    headers = {"Content-Type": "video/mp4", "x-oss-meta-uid": "42"}
    if version == "v4":
        headers["Cache-Control"] = "no-cache"  # an additional signed header
    with _client(oss_emulator, version) as client:
        url = client.get_bucket(oss_bucket).sign_url("PUT", "k", 600, headers=headers)
    for name in headers:
        sent = {k: v for k, v in headers.items() if k != name}
        r = http.put(url, content=b"x", headers=sent)
        assert (r.status_code, error_code(r)) == (403, "SignatureDoesNotMatch"), name
        r = http.put(url, content=b"x", headers={**sent, name: "other"})
        assert (r.status_code, error_code(r)) == (403, "SignatureDoesNotMatch"), name
    # nor may the device add an x-oss-* header (say, a callback of its own)
    own = base64.b64encode(b'{"callbackUrl":"http://127.0.0.1:9/","callbackBody":"a"}')
    r = http.put(url, content=b"x", headers={**headers, "x-oss-callback": own.decode()})
    assert (r.status_code, error_code(r)) == (403, "SignatureDoesNotMatch")
    assert oss_emulator.list_keys(oss_bucket) == []
    assert http.put(url, content=b"x", headers=headers).status_code == 200


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_wrong_method_is_refused(oss_emulator: Any, oss_bucket: str, http: httpx.Client,
                                 version: str) -> None:
    with _client(oss_emulator, version) as client:
        bucket = client.get_bucket(oss_bucket)
        get_url = bucket.sign_url("GET", "k", 600)
        put_url = bucket.sign_url("PUT", "k", 600)
    r = http.put(get_url, content=b"x")
    assert (r.status_code, error_code(r)) == (403, "SignatureDoesNotMatch")
    assert oss_emulator.list_keys(oss_bucket) == []
    assert http.put(put_url, content=b"x").status_code == 200
    r = http.get(put_url)
    assert (r.status_code, error_code(r)) == (403, "SignatureDoesNotMatch")
    r = http.delete(get_url)
    assert (r.status_code, error_code(r)) == (403, "SignatureDoesNotMatch")
    assert oss_emulator.list_keys(oss_bucket) == ["k"]


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_expired_url_is_refused(oss_emulator: Any, oss_bucket: str, http: httpx.Client,
                                monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    monkeypatch.setattr(Session, "now", lambda self: an_hour_ago)
    with _client(oss_emulator, version) as client:
        url = client.get_bucket(oss_bucket).sign_url("PUT", "k", 1800)  # expired 30 min ago
    r = http.put(url, content=b"x")
    assert (r.status_code, error_code(r)) == (403, "AccessDenied")
    assert error_field(r, "Message") == "Request has expired."
    assert oss_emulator.list_keys(oss_bucket) == []


@pytest.mark.parametrize("expires", ["0", "604801", "691200"])
def test_v4_validity_outside_one_second_to_seven_days_is_refused(
    oss_emulator: Any, oss_bucket: str, http: httpx.Client, expires: str
) -> None:
    with _client(oss_emulator, "v4") as client:
        url = client.get_bucket(oss_bucket).sign_url("PUT", "k", 600)
    assert "&x-oss-expires=600&" in url
    r = http.put(url.replace("&x-oss-expires=600&", f"&x-oss-expires={expires}&"), content=b"x")
    assert (r.status_code, error_code(r)) == (403, "AccessDenied")  # before any signature check
    assert "604800" in error_field(r, "Message")  # type: ignore[operator]
    assert oss_emulator.list_keys(oss_bucket) == []
