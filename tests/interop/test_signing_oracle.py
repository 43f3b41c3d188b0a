"""Request signing compared with the official SDKs, offline.

For each generated request we sign with ``oss_callback.protocol._signing`` and with

* ``oss2`` (``Auth``/``StsAuth``/``ProviderAuth`` for V1, ``AuthV4``/``ProviderAuthV4`` for V4),
* ``alibabacloud_oss_v2`` (``signer.v1.SignerV1`` / ``signer.v4.SignerV4`` with a
  ``SigningContext``),

with the same frozen clock, and require the same ``Authorization``, StringToSign and
signing headers.  Nothing touches the network: the SDKs' request objects are built by hand
and their signers called directly.

Clocks: ``alibabacloud_oss_v2`` takes ``SigningContext.signing_time``.  ``oss2`` reads the
time itself: V1 via ``oss2.utils.http_date()`` and V4 via ``datetime.utcnow()`` in
``oss2.auth``; both are monkeypatched.

Known, legitimate differences between the SDKs (the comparisons below work around them and
say so where they do):

* oss2 V4 writes ``Credential=..., Signature=..., AdditionalHeaders=...`` (", " separators,
  that order); alibabacloud_oss_v2 (and we) write ``Credential=...[,AdditionalHeaders=...],
  Signature=...``.  Against oss2 the fields are compared, against v2 the whole string.
* alibabacloud_oss_v2 V1 sends the STS token in a header literally named ``security-token``,
  which is not an ``x-oss-`` header and is therefore *not signed*; oss2 and the docs use
  ``x-oss-security-token`` (signed).  For v2 we put ``x-oss-security-token`` in the request
  (as our client sends it) and compare signatures.
* oss2 V4 header auth does not check that an additional header is present in the request and
  sorts the additional-header list by its first character only; only present names, already
  sorted, are given to oss2.  oss2 V4 also does not set ``Date``, so ``date`` is never an
  additional header in oss2 comparisons.
* alibabacloud_oss_v2 V4 ignores an additional header whose value is empty; oss2 (and we)
  sign it.  Empty header values are not generated.
* alibabacloud_oss_v2's V1 sub-resource list is much shorter than oss2's; a parameter that
  only oss2 treats as a sub-resource (e.g. ``x-oss-process``) is passed to v2 through
  ``SigningContext.sub_resource``, which is how v2's operations declare such parameters.
  ``oss_callback`` signs a few more names than either SDK (see
  ``test_v1_subresource_set_covers_both_sdks``).
* alibabacloud_oss_v2's V4 signer signs the query exactly as it appears in the URL (it does
  not re-encode); its client builds it with ``urlencode(..., quote_via=quote)``, which encodes
  everything but ``A-Za-z0-9-_.~``.  The URL given to v2 here is encoded the same way
  (``quote(safe='')``), which is also what ``oss_callback`` sends.
"""

from __future__ import annotations

import base64
import email.utils
import random
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from urllib.parse import quote

import alibabacloud_oss_v2.signer.v1 as v2_signer_v1
import alibabacloud_oss_v2.signer.v4 as v2_signer_v4
import oss2
import oss2.auth
import oss2.credentials
import oss2.http
import oss2.utils
import pytest
from alibabacloud_oss_v2.types import Credentials as V2Credentials
from alibabacloud_oss_v2.types import HttpRequest as V2HttpRequest
from alibabacloud_oss_v2.types import Signer as V2Signer
from alibabacloud_oss_v2.types import SigningContext

from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._signing import (
    V1_SUBRESOURCES,
    sign_v1,
    sign_v4,
    v1_string_to_sign,
    v4_canonical_request,
)

pytestmark = pytest.mark.oracle

OSS2_SUBRESOURCES = frozenset(oss2.auth.ProviderAuth._subresource_key_set)
V2_SUBRESOURCES = frozenset(v2_signer_v1.SignerV1._subresource_key_set)

REGIONS = ["cn-hangzhou", "cn-shanghai", "us-west-1", "ap-southeast-1", "eu-central-1"]
CASES_PER_CHUNK = 60
CHUNKS = 6  # 360 generated requests per SDK per signature version


# --------------------------------------------------------------------------- clocks


class _FrozenClock:
    """Patches the places where oss2 reads the time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = datetime(2024, 1, 1, tzinfo=timezone.utc)
        clock = self

        class FrozenDatetime(datetime):
            @classmethod
            def utcnow(cls) -> datetime:  # type: ignore[override]
                return clock.now.astimezone(timezone.utc).replace(tzinfo=None)

            @classmethod
            def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
                return clock.now.astimezone(tz) if tz else clock.now.replace(tzinfo=None)

        monkeypatch.setattr(oss2.auth, "datetime", FrozenDatetime)
        monkeypatch.setattr(
            oss2.utils,
            "http_date",
            lambda timeval=None: email.utils.formatdate(
                clock.now.timestamp() if timeval is None else timeval, usegmt=True
            ),
        )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _FrozenClock:
    return _FrozenClock(monkeypatch)


# --------------------------------------------------------------------------- generation

_KEY_PIECES = [
    "a", "b", "Z", "0", "9", "file", "photo.jpg", "dir", " ", "  ", "+", "%", "%20", "%2F",
    "?", "#", "&", "=", "~", "!", "*", "'", "(", ")", ";", ":", "@", "$", ",", "[", "]",
    "杭州", "😀", "é", "ß", "-", "_", ".", "..", "\t", "|", "^", "`", "{", "}", "<", ">",
    '"', "\\",
]
_VALUE_PIECES = [
    *_KEY_PIECES, "/", "//", "value", "1", "text/plain", "a=b", "a&b", "+1", "%2B",
]
_HEADER_VALUE_CHARS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " -_.~!*'();:@&=+$,/?#[]%\"<>{}|^`"
)
_PLAIN_PARAMS = [
    "max-keys", "prefix", "marker", "delimiter", "encoding-type", "non-resource", "x-custom",
    "param1", "+param1", "|param1", "a b", "杭州", "Acl", "UPLOADS", "versionid", "x-oss-foo",
]
_MIME = ["text/plain", "application/octet-stream", "image/jpeg", "text/html; charset=utf-8",
         "application/json"]
_OTHER_HEADERS = ["Cache-Control", "Content-Disposition", "Range", "If-Match", "Expires",
                  "Content-Language", "Content-Encoding", "abc", "ZAbc", "XYZ"]


def _random_text(rng: random.Random, pieces: list[str], lo: int, hi: int) -> str:
    return "".join(rng.choice(pieces) for _ in range(rng.randint(lo, hi)))


def _random_key(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        # runs of slashes and a trailing slash
        segments = [_random_text(rng, _KEY_PIECES, 1, 3) for _ in range(rng.randint(1, 4))]
        sep = "/" * rng.randint(1, 3)
        key = sep.join(segments)
        return key + "/" * rng.randint(0, 2)
    segments = [_random_text(rng, _KEY_PIECES, 1, 5) for _ in range(rng.randint(1, 4))]
    key = "/".join(segments)
    if rng.random() < 0.1:
        key += "/"
    return key.lstrip("/") or "k"


def _b64(rng: random.Random, n: int) -> str:
    return base64.b64encode(rng.randbytes(n)).decode()


def _subresource_value(rng: random.Random, name: str) -> str:
    if name in ("uploads", "acl", "append", "symlink", "tagging", "delete", "versions",
                "versioning", "stat", "objectMeta", "resourceGroup", "location"):
        return "" if rng.random() < 0.8 else _random_text(rng, _VALUE_PIECES, 1, 3)
    if name == "uploadId":
        return rng.randbytes(16).hex().upper()
    if name in ("partNumber", "position"):
        return str(rng.randint(0, 10000))
    if name in ("callback", "callback-var"):
        return _b64(rng, rng.randint(10, 80))
    return _random_text(rng, _VALUE_PIECES, 0, 4)


def _random_query(rng: random.Random, subresources: list[str]) -> list[tuple[str, str]]:
    pairs: dict[str, str] = {}
    pattern = rng.random()
    if pattern < 0.15:
        pairs["uploads"] = ""
    elif pattern < 0.35:
        pairs["uploadId"] = rng.randbytes(16).hex().upper()
        pairs["partNumber"] = str(rng.randint(1, 10000))
    elif pattern < 0.45:
        pairs["uploadId"] = rng.randbytes(16).hex().upper()
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        name = rng.choice(subresources)
        pairs[name] = _subresource_value(rng, name)
    for _ in range(rng.choice([0, 0, 1, 2])):
        name = rng.choice(_PLAIN_PARAMS)
        pairs[name] = "" if rng.random() < 0.3 else _random_text(rng, _VALUE_PIECES, 1, 4)
    items = list(pairs.items())
    rng.shuffle(items)
    return items


def _header_value(rng: random.Random) -> str:
    value = "".join(rng.choice(_HEADER_VALUE_CHARS) for _ in range(rng.randint(1, 24)))
    return value.strip() or "v"


def _random_case(rng: random.Random, name: str) -> str:
    r = rng.random()
    if r < 0.4:
        return name
    if r < 0.6:
        return name.lower()
    if r < 0.7:
        return name.upper()
    return "-".join(p.capitalize() for p in name.split("-"))


def _random_headers(rng: random.Random, *, v1: bool) -> dict[str, str]:
    headers: dict[str, str] = {}
    if rng.random() < 0.6:
        headers[_random_case(rng, "Content-Type")] = rng.choice(_MIME)
    if rng.random() < 0.4:
        headers[_random_case(rng, "Content-MD5")] = _b64(rng, 16)
    for _ in range(rng.randint(0, 3)):
        name = "x-oss-meta-" + "".join(
            rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_") for _ in range(rng.randint(1, 8))
        )
        headers[_random_case(rng, name)] = _header_value(rng)
    if rng.random() < 0.2:
        headers[_random_case(rng, "x-oss-callback")] = _b64(rng, rng.randint(40, 300))
        if rng.random() < 0.5:
            headers[_random_case(rng, "x-oss-callback-var")] = _b64(rng, rng.randint(10, 60))
    for name, values in (
        ("x-oss-object-acl", ["private", "public-read"]),
        ("x-oss-storage-class", ["Standard", "IA", "Archive"]),
        ("x-oss-forbid-overwrite", ["true", "false"]),
        ("x-oss-copy-source", ["/bucket/src%20key", "/b/o"]),
    ):
        if rng.random() < 0.15:
            headers[_random_case(rng, name)] = rng.choice(values)
    for _ in range(rng.randint(0, 3)):
        headers[_random_case(rng, rng.choice(_OTHER_HEADERS))] = _header_value(rng)
    if rng.random() < 0.3:
        headers["Content-Length"] = str(rng.randint(0, 10**9))
    if v1 and rng.random() < 0.15:
        # An explicit x-oss-date takes the place of Date in the V1 StringToSign.
        when = datetime.fromtimestamp(rng.randint(1_400_000_000, 2_000_000_000), timezone.utc)
        headers[_random_case(rng, "x-oss-date")] = email.utils.format_datetime(when, usegmt=True)
    if not v1 and rng.random() < 0.1:
        # A stale x-oss-date (e.g. from a previous attempt): must be replaced.
        headers[_random_case(rng, "x-oss-date")] = "20000101T000000Z"
    if rng.random() < 0.05:
        headers["Authorization"] = "OSS stale:signature="
    # Distinct names case-insensitively (an HTTP request can't carry both spellings).
    dedup: dict[str, tuple[str, str]] = {}
    for k, v in headers.items():
        dedup[k.lower()] = (k, v)
    return dict(dedup.values())


def _random_now(rng: random.Random) -> datetime:
    ts = rng.randint(1_400_000_000, 2_100_000_000)
    tz = timezone(timedelta(minutes=rng.choice([0, 0, 480, -300, 330, 765, -720])))
    micro = rng.choice([0, 0, 1, 499_999, 500_000, 999_999])  # never rounds up a second
    return datetime.fromtimestamp(ts, tz).replace(microsecond=micro)


def _random_creds(rng: random.Random) -> Credentials:
    ak = "LTAI" + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(16))
    sk = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
                 for _ in range(30))
    token = None
    if rng.random() < 0.35:
        token = "CAIS" + _b64(rng, rng.randint(20, 200))
    return Credentials(access_key_id=ak, access_key_secret=sk, security_token=token)


class Case:
    def __init__(self, rng: random.Random, subresources: list[str], *, v1: bool) -> None:
        self.method = rng.choice(["GET", "PUT", "POST", "DELETE", "HEAD"])
        r = rng.random()
        if r < 0.05:
            self.bucket, self.key = None, None  # service level (ListBuckets)
        elif r < 0.2:
            self.bucket, self.key = rng.choice(["examplebucket", "b-1", "abc"]), None
        else:
            self.bucket = rng.choice(["examplebucket", "b-1", "my-bucket-123"])
            self.key = _random_key(rng)
        self.query = _random_query(rng, subresources)
        self.headers = _random_headers(rng, v1=v1)
        self.creds = _random_creds(rng)
        self.now = _random_now(rng)
        self.region = rng.choice(REGIONS)
        self.additional: list[str] = []

    def __repr__(self) -> str:
        return (
            f"Case(method={self.method!r}, bucket={self.bucket!r}, key={self.key!r}, "
            f"query={self.query!r}, headers={self.headers!r}, now={self.now!r}, "
            f"region={self.region!r}, additional={self.additional!r}, "
            f"token={self.creds.security_token!r})"
        )


def _cases(seed: int, subresources: frozenset[str], *, v1: bool,
           additional: bool = False) -> list[Case]:
    rng = random.Random(seed)
    pool = sorted(subresources)
    out = []
    for _ in range(CASES_PER_CHUNK):
        case = Case(rng, pool, v1=v1)
        if additional and rng.random() < 0.5:
            present = [k for k in case.headers if k.lower() not in
                       ("content-type", "content-md5", "authorization")
                       and not k.lower().startswith("x-oss-")]
            case.additional = rng.sample(present, k=rng.randint(0, len(present)))
        out.append(case)
    return out


# --------------------------------------------------------------------------- SDK adapters


def _query_string(query: list[tuple[str, str]]) -> str:
    """How the request goes on the wire: every byte outside A-Za-z0-9-_.~ percent-encoded."""
    return "&".join(
        f"{quote(k, safe='')}={quote(v, safe='')}" if v else quote(k, safe="") for k, v in query
    )


def _v2_url(case: Case) -> str:
    host = f"{case.bucket}.oss-{case.region}.aliyuncs.com" if case.bucket else "oss.aliyuncs.com"
    url = f"https://{host}/{quote(case.key or '', safe='/')}"
    qs = _query_string(case.query)
    return f"{url}?{qs}" if qs else url


def _oss2_v1(case: Case) -> tuple[str, dict[str, str]]:
    if case.creds.security_token:
        auth = oss2.StsAuth(
            case.creds.access_key_id, case.creds.access_key_secret, case.creds.security_token
        )
    else:
        auth = oss2.Auth(case.creds.access_key_id, case.creds.access_key_secret)
    req = oss2.http.Request(
        case.method, _v2_url(case), params=dict(case.query), headers=dict(case.headers)
    )
    auth._sign_request(req, case.bucket or "", case.key or "")
    return req.headers["authorization"], req.headers


def _oss2_v4(case: Case) -> tuple[str, dict[str, str]]:
    if not case.additional and case.creds.security_token:
        auth = oss2.StsAuth(
            case.creds.access_key_id, case.creds.access_key_secret, case.creds.security_token,
            auth_version=oss2.AUTH_VERSION_4,
        )
    elif not case.additional:
        auth = oss2.AuthV4(case.creds.access_key_id, case.creds.access_key_secret)
    else:
        # StsAuth/AuthV4 don't forward additional headers; ProviderAuthV4 does.
        auth = oss2.ProviderAuthV4(
            oss2.credentials.StaticCredentialsProvider(
                case.creds.access_key_id, case.creds.access_key_secret, case.creds.security_token
            )
        )
    req = oss2.http.Request(
        case.method, _v2_url(case), params=dict(case.query), headers=dict(case.headers),
        region=case.region, product="oss",
    )
    if case.additional:
        additional = sorted({a.lower() for a in case.additional})
        auth._sign_request(req, case.bucket or "", case.key or "", in_additional_headers=additional)
    else:
        auth._sign_request(req, case.bucket or "", case.key or "")
    return req.headers["authorization"], req.headers


def _v2_sign(case: Case, signer: V2Signer, *, v1: bool) -> SigningContext:
    headers = dict(case.headers)
    token = case.creds.security_token
    if v1 and token:
        # v2's V1 signer puts the token in an unsigned "security-token" header; oss2, the docs
        # and oss_callback send x-oss-security-token, which is an x-oss- header and signed.
        headers["x-oss-security-token"] = token
    request = V2HttpRequest(case.method, _v2_url(case), headers=headers)
    ctx = SigningContext(
        product="oss",
        region=case.region,
        bucket=case.bucket,
        key=case.key,
        request=request,
        credentials=V2Credentials(case.creds.access_key_id, case.creds.access_key_secret, token),
        signing_time=case.now,
        additional_headers=set(case.additional) if case.additional else None,
    )
    if v1:
        # v2 operations declare the sub-resources missing from its global list this way.
        ctx.sub_resource = [k for k, _ in case.query if k in OSS2_SUBRESOURCES]
    signer.sign(ctx)
    return ctx


def _ours_v1(case: Case) -> tuple[str, dict[str, str]]:
    headers = dict(case.headers)
    sts = sign_v1(case.method, case.bucket, case.key, case.query, headers, case.creds, case.now)
    return sts, headers


def _ours_v4(case: Case) -> tuple[str, dict[str, str]]:
    headers = dict(case.headers)
    sts = sign_v4(
        case.method, case.bucket, case.key, case.query, headers, case.creds, case.now,
        case.region, additional_headers=case.additional,
    )
    return sts, headers


def _lower(headers: Mapping[str, str | None]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if v is not None}


_OSS2_V4_AUTH = re.compile(
    r"^OSS4-HMAC-SHA256 Credential=(?P<cred>[^,]+), Signature=(?P<sig>[0-9a-f]{64})"
    r"(?:, AdditionalHeaders=(?P<add>[^,]+))?$"
)
_OUR_V4_AUTH = re.compile(
    r"^OSS4-HMAC-SHA256 Credential=(?P<cred>[^,]+)(?:,AdditionalHeaders=(?P<add>[^,]+))?"
    r",Signature=(?P<sig>[0-9a-f]{64})$"
)


# --------------------------------------------------------------------------- V1


def test_v1_subresource_set_covers_both_sdks() -> None:
    # Everything either SDK signs, we sign.  (We sign a few more: udf*, img and, from v2,
    # cloudboxes; oss2 2.19 does not know those.)
    assert OSS2_SUBRESOURCES <= V1_SUBRESOURCES
    assert V2_SUBRESOURCES <= V1_SUBRESOURCES


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_v1_matches_oss2(clock: _FrozenClock, chunk: int) -> None:
    for case in _cases(1000 + chunk, OSS2_SUBRESOURCES & V1_SUBRESOURCES, v1=True):
        clock.now = case.now
        expected_auth, oss2_headers = _oss2_v1(case)
        sts, headers = _ours_v1(case)
        assert headers["authorization"] == expected_auth, case
        ours, theirs = _lower(headers), _lower(oss2_headers)
        assert ours["date"] == theirs["date"], case
        assert ours.get("x-oss-security-token") == theirs.get("x-oss-security-token"), case
        assert sts == v1_string_to_sign(case.method, case.bucket, case.key, case.query, theirs)


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_v1_matches_alibabacloud_oss_v2(chunk: int) -> None:
    for case in _cases(2000 + chunk, V1_SUBRESOURCES & OSS2_SUBRESOURCES, v1=True):
        ctx = _v2_sign(case, v2_signer_v1.SignerV1(), v1=True)
        sts, headers = _ours_v1(case)
        assert sts == ctx.string_to_sign, case
        # Same "OSS ak:signature"; v2 differs only by the extra unsigned security-token header.
        assert headers["authorization"] == ctx.request.headers["Authorization"], case
        assert _lower(headers)["date"] == ctx.request.headers["Date"], case


# --------------------------------------------------------------------------- V4


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_v4_matches_oss2(clock: _FrozenClock, chunk: int) -> None:
    for case in _cases(3000 + chunk, V1_SUBRESOURCES, v1=False, additional=True):
        clock.now = case.now
        expected_auth, oss2_headers = _oss2_v4(case)
        sts, headers = _ours_v4(case)
        # oss2: "Credential=..., Signature=..., AdditionalHeaders=..."; ours/v2:
        # "Credential=...,AdditionalHeaders=...,Signature=...".  Compare the fields.
        theirs_m = _OSS2_V4_AUTH.match(expected_auth)
        ours_m = _OUR_V4_AUTH.match(headers["authorization"])
        assert theirs_m, expected_auth
        assert ours_m, headers["authorization"]
        assert ours_m["sig"] == theirs_m["sig"], case
        assert ours_m["cred"] == theirs_m["cred"], case
        assert ours_m["add"] == theirs_m["add"], case
        ours, theirs = _lower(headers), _lower(oss2_headers)
        for name in ("x-oss-date", "x-oss-content-sha256", "x-oss-security-token"):
            assert ours.get(name) == theirs.get(name), (name, case)
        assert sts.split("\n")[1] == theirs["x-oss-date"]


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_v4_matches_alibabacloud_oss_v2(chunk: int) -> None:
    rng = random.Random(-chunk)
    for case in _cases(4000 + chunk, V1_SUBRESOURCES, v1=False, additional=True):
        if case.additional and rng.random() < 0.5:
            # v2 (like us) ignores absent and always-signed names; oss2 does not (see top).
            case.additional = [*case.additional, "x-oss-meta-absent", "Not-There", "content-type"]
        if rng.random() < 0.2:
            # v2 sets Date itself (as we do), so it can be an additional signed header here.
            case.additional = [*case.additional, rng.choice(["Date", "date"])]
        ctx = _v2_sign(case, v2_signer_v4.SignerV4(), v1=False)
        sts, headers = _ours_v4(case)
        assert sts == ctx.string_to_sign, case
        assert headers["authorization"] == ctx.request.headers["Authorization"], case
        theirs = _lower(ctx.request.headers)
        ours = _lower(headers)
        for name in ("x-oss-date", "date", "x-oss-content-sha256", "x-oss-security-token"):
            assert ours.get(name) == theirs.get(name), (name, case)


# --------------------------------------------------------------------------- edge cases

_CREDS = Credentials(access_key_id="ak", access_key_secret="sk")
_STS = Credentials(access_key_id="STS.ak", access_key_secret="sk", security_token="tok/en+=")

EDGE_CASES = [
    # (method, bucket, key, query, headers, creds)
    ("PUT", "bucket", "a b+c%d?e#f", [], {"Content-Type": "text/plain"}, _CREDS),
    ("PUT", "bucket", "杭州/😀/é.txt", [], {"x-oss-meta-City": "hangzhou"}, _CREDS),
    ("GET", "bucket", "a//b///c", [("versionId", "CAEQ+/=")], {}, _CREDS),
    ("GET", "bucket", "dir/", [("acl", "")], {}, _CREDS),
    ("PUT", "bucket", "trailing//", [], {}, _CREDS),
    ("POST", "bucket", "multi part.bin", [("uploads", "")], {"Content-Type": "video/mp4"}, _STS),
    (
        "PUT", "bucket", "multi part.bin",
        [("partNumber", "10000"), ("uploadId", "0004B9894A22E5B1888A1E29F823ABCD")],
        {"Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==", "Content-Length": "0"}, _STS,
    ),
    (
        "POST", "bucket", "multi part.bin", [("uploadId", "0004B9894A22E5B1888A1E29F823ABCD")],
        {
            "x-oss-callback": "eyJjYWxsYmFja1VybCI6Imh0dHA6Ly9hLmIvYyJ9",
            "x-oss-callback-var": "eyJ4Om15X3ZhciI6ImZvci1jYWxsYmFjay10ZXN0In0=",
            "Content-Type": "application/xml",
        },
        _CREDS,
    ),
    (
        "PUT", "bucket", "k",
        [("callback", "eyJjYWxsYmFja1VybCI6Imh0dHA6Ly9hLmIvYyJ9"),
         ("callback-var", "eyJ4OmEiOiIxIn0=")],
        {}, _CREDS,
    ),
    ("GET", "bucket", None, [("prefix", "a/b c"), ("max-keys", "100"), ("delimiter", "/")],
     {}, _CREDS),
    ("GET", None, None, [("prefix", "x"), ("marker", "")], {}, _CREDS),
    ("GET", "bucket", "k", [("response-content-type", "text/html; charset=utf-8"),
                            ("response-content-disposition", 'attachment; filename="a b.txt"')],
     {}, _STS),
    ("GET", "bucket", "%", [("x", "%"), ("%", "")], {"Range": "bytes=0-9"}, _CREDS),
    ("DELETE", "bucket", "?", [("versionId", "null")], {}, _CREDS),
    ("HEAD", "bucket", "#", [], {"If-Match": '"ETAG"'}, _CREDS),
    ("PUT", "bucket", "~.-_", [("acl", "")], {"x-oss-object-acl": "public-read"}, _CREDS),
]


def _edge_case(item: tuple[Any, ...]) -> Case:
    method, bucket, key, query, headers, creds = item
    case = Case.__new__(Case)
    case.method, case.bucket, case.key, case.query = method, bucket, key, query
    case.headers, case.creds = dict(headers), creds
    case.now = datetime(2023, 12, 16, 16, 20, 57, tzinfo=timezone.utc)
    case.region = "cn-hangzhou"
    case.additional = [h for h in headers if h in ("Range", "If-Match")]
    return case


@pytest.mark.parametrize("item", EDGE_CASES, ids=lambda item: f"{item[0]}-{item[2]!r}")
def test_edge_cases_all_sdks(clock: _FrozenClock, item: tuple[Any, ...]) -> None:
    case = _edge_case(item)
    clock.now = case.now

    oss2_auth, _ = _oss2_v1(case)
    v2_ctx = _v2_sign(case, v2_signer_v1.SignerV1(), v1=True)
    sts, headers = _ours_v1(case)
    assert headers["authorization"] == oss2_auth == v2_ctx.request.headers["Authorization"]
    assert sts == v2_ctx.string_to_sign

    oss2_auth4, _ = _oss2_v4(case)
    v2_ctx4 = _v2_sign(case, v2_signer_v4.SignerV4(), v1=False)
    sts4, headers4 = _ours_v4(case)
    assert headers4["authorization"] == v2_ctx4.request.headers["Authorization"]
    assert sts4 == v2_ctx4.string_to_sign
    assert _OUR_V4_AUTH.match(headers4["authorization"])["sig"] == (  # type: ignore[index]
        _OSS2_V4_AUTH.match(oss2_auth4)["sig"]  # type: ignore[index]
    )


def test_v1_key_is_not_encoded_and_v4_key_is(clock: _FrozenClock) -> None:
    # The key "a b+c" appears raw in V1's CanonicalizedResource and %-encoded in V4's URI.
    case = _edge_case(EDGE_CASES[0])
    clock.now = case.now
    sts, _ = _ours_v1(case)
    assert sts.endswith("\n/bucket/a b+c%d?e#f")
    canonical = v4_canonical_request(case.method, case.bucket, case.key, [], {})
    assert canonical.split("\n")[1] == "/bucket/a%20b%2Bc%25d%3Fe%23f"
    # ...which is what both SDKs sign.
    assert _oss2_v1(case)[0] == _ours_v1(case)[1]["authorization"]


def test_oss2_only_subresources_signed_like_oss2(clock: _FrozenClock) -> None:
    # Parameters that oss2 treats as sub-resources but v2's global list does not.
    only_oss2 = sorted(OSS2_SUBRESOURCES - V2_SUBRESOURCES)
    assert "x-oss-process" in only_oss2
    rng = random.Random(7)
    for name in only_oss2:
        case = _edge_case(("GET", "bucket", "img.jpg", [(name, "image/resize,w_100"),
                                                         ("plain", "1")], {}, _CREDS))
        clock.now = case.now
        assert _ours_v1(case)[1]["authorization"] == _oss2_v1(case)[0], name
        case.query.append(("uploadId", rng.randbytes(4).hex()))
        assert _ours_v1(case)[1]["authorization"] == _oss2_v1(case)[0], name


def test_v4_empty_additional_header_signed_like_oss2(clock: _FrozenClock) -> None:
    # An additional header with an empty value: oss2 signs it (as we do); v2 drops it from
    # AdditionalHeaders.  Which one OSS expects is not documented; we follow oss2.
    case = _edge_case(("GET", "bucket", "k", [], {"If-None-Match": "", "Range": "bytes=1-2"},
                       _CREDS))
    case.additional = ["If-None-Match", "Range"]
    clock.now = case.now
    _, headers = _ours_v4(case)
    ours = _OUR_V4_AUTH.match(headers["authorization"])
    theirs = _OSS2_V4_AUTH.match(_oss2_v4(case)[0])
    assert ours["add"] == theirs["add"] == "if-none-match;range"  # type: ignore[index]
    assert ours["sig"] == theirs["sig"]  # type: ignore[index]
    v2 = _v2_sign(case, v2_signer_v4.SignerV4(), v1=False).request.headers["Authorization"]
    assert "AdditionalHeaders=range," in v2


@pytest.mark.parametrize("v1", [True, False], ids=["v1", "v4"])
def test_repeated_query_names_match_v2(v1: bool) -> None:
    # oss2 keeps params in a dict and can't express this; v2 signs every pair, sorted.
    case = _edge_case(("GET", "bucket", "k", [("uploadId", "2"), ("x", "b"), ("uploadId", "1"),
                                              ("x", "a"), ("x", "")], {}, _STS))
    signer = v2_signer_v1.SignerV1() if v1 else v2_signer_v4.SignerV4()
    ctx = _v2_sign(case, signer, v1=v1)
    sts, headers = _ours_v1(case) if v1 else _ours_v4(case)
    assert sts == ctx.string_to_sign
    assert headers["authorization"] == ctx.request.headers["Authorization"]
