"""OSS request signing: V1 (HMAC-SHA1) and V4 (OSS4-HMAC-SHA256), header form.

Pure functions over a request description, so that the client (which signs) and the
emulator (which verifies) share one implementation, and tests can check every step
against the vectors in PROTOCOL.md and against the official SDKs.

A request is described by: the HTTP method, the bucket (or ``None``), the object key (or
``None``), the *decoded* query parameters as ``(name, value)`` pairs (``""`` for a bare
``?uploads``), and the headers.  Header names are matched case-insensitively.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Literal
from urllib.parse import quote

from oss_callback.protocol._credentials import Credentials

__all__ = [
    "V1_SUBRESOURCES",
    "V4_ALGORITHM",
    "SignatureVersion",
    "format_v1_date",
    "format_v4_date",
    "sign_v1",
    "sign_v4",
    "v1_canonical_resource",
    "v1_signature",
    "v1_string_to_sign",
    "v4_canonical_request",
    "v4_scope",
    "v4_signature",
    "v4_string_to_sign",
]

#: How a client signs: ``"v4"`` (OSS4-HMAC-SHA256, the default; needs the region) or
#: ``"v1"`` (HMAC-SHA1).
SignatureVersion = Literal["v1", "v4"]

V4_ALGORITHM = "OSS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

#: Query parameters that V1 signs (CanonicalizedResource): oss2's set (a superset of
#: alibabacloud-oss-v2's) plus v2's ``cloudboxes``; other parameters are not signed in V1.
V1_SUBRESOURCES = frozenset(
    [
        "accessPoint", "accessPointPolicy", "acl", "append", "asyncFetch",
        "bucketArchiveDirectRead", "bucketInfo", "callback", "callback-var", "cloudboxes",
        "cname", "comp", "continuation-token", "cors", "delete", "encryption", "endTime",
        "group", "httpsConfig", "inventory", "inventoryId", "lifecycle", "link", "live",
        "location", "logging", "metaQuery", "objectInfo", "objectMeta", "partNumber", "policy",
        "position", "publicAccessBlock", "qos", "qosInfo", "qosRequester",
        "redundancyTransition", "referer", "regionList", "replication", "replicationLocation",
        "replicationProgress", "requestPayment", "requesterQosInfo", "resourceGroup",
        "resourcePool", "resourcePoolBuckets", "resourcePoolInfo", "response-cache-control",
        "response-content-disposition", "response-content-encoding",
        "response-content-language", "response-content-type", "response-expires", "restore",
        "security-token", "sequential", "startTime", "stat", "status", "style", "styleName",
        "symlink", "tagging", "transferAcceleration", "uploadId", "uploads", "versionId",
        "versioning", "versions", "vod", "website", "worm", "wormExtend", "wormId",
        "x-oss-ac-forward-allow", "x-oss-ac-source-ip", "x-oss-ac-subnet-mask",
        "x-oss-ac-vpc-id", "x-oss-access-point-name", "x-oss-async-process", "x-oss-process",
        "x-oss-redundancy-transition-taskid", "x-oss-request-payer",
        "x-oss-target-redundancy-type", "x-oss-traffic-limit",
        "x-oss-write-get-object-response",
    ]
)

Query = Sequence[tuple[str, str]]


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def format_v1_date(when: datetime) -> str:
    """RFC 1123 GMT, e.g. ``Wed, 28 Dec 2022 10:27:41 GMT``."""
    return format_datetime(when.astimezone(timezone.utc), usegmt=True)


def format_v4_date(when: datetime) -> str:
    """ISO 8601 basic UTC, e.g. ``20231216T162057Z``."""
    return when.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


@functools.lru_cache(maxsize=4)
def _dates(epoch_second: int) -> tuple[str, str]:
    """``(RFC 1123, ISO basic)`` for one second: formatted once, not per request."""
    when = datetime.fromtimestamp(epoch_second, timezone.utc)
    return format_v1_date(when), format_v4_date(when)


def _request_dates(now: datetime) -> tuple[str, str]:
    if now.microsecond:
        now = now.replace(microsecond=0)
    return _dates(int(now.timestamp()))


# --------------------------------------------------------------------------- V1


def v1_canonical_resource(bucket: str | None, key: str | None, query: Query) -> str:
    """``/bucket/key?sub&res=v``: key not encoded, sub-resources sorted, values decoded."""
    resource = "/" if not bucket else f"/{bucket}/{key or ''}"
    subs = sorted((k, v) for k, v in query if k in V1_SUBRESOURCES)
    if subs:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in subs)
    return resource


def v1_string_to_sign(
    method: str,
    bucket: str | None,
    key: str | None,
    query: Query,
    headers: Mapping[str, str],
) -> str:
    """The V1 StringToSign; the date is ``x-oss-date`` if present, else ``Date``."""
    h = _lower_headers(headers)
    date = h.get("x-oss-date") or h.get("date", "")
    oss_headers = "".join(
        f"{k}:{v}\n" for k, v in sorted(h.items()) if k.startswith("x-oss-")
    )
    return (
        f"{method.upper()}\n{h.get('content-md5', '')}\n{h.get('content-type', '')}\n{date}\n"
        f"{oss_headers}{v1_canonical_resource(bucket, key, query)}"
    )


def v1_signature(secret: str, string_to_sign: str) -> str:
    """``base64(hmac-sha1(secret, string_to_sign))``."""
    digest = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def sign_v1(
    method: str,
    bucket: str | None,
    key: str | None,
    query: Query,
    headers: MutableMapping[str, str],
    credentials: Credentials,
    now: datetime,
) -> str:
    """Add ``Date`` (and the STS token) to ``headers``, then ``Authorization``.

    Returns the StringToSign (useful for debugging a ``SignatureDoesNotMatch``).
    """
    _drop(headers, "authorization")
    _set(headers, "date", _request_dates(now)[0])
    if credentials.security_token:
        _set(headers, "x-oss-security-token", credentials.security_token)
    sts = v1_string_to_sign(method, bucket, key, query, headers)
    signature = v1_signature(credentials.access_key_secret, sts)
    headers["authorization"] = f"OSS {credentials.access_key_id}:{signature}"
    return sts


# --------------------------------------------------------------------------- V4


def _uri_encode(value: str, safe: str = "") -> str:
    # unreserved A-Za-z0-9-_.~ stay (quote keeps them); everything else is %XX, uppercase.
    return quote(value, safe=safe)


def _canonical_uri(bucket: str | None, key: str | None) -> str:
    if not bucket:
        return "/"
    return _uri_encode(f"/{bucket}/{key or ''}", safe="/")


def _canonical_query(query: Query) -> str:
    encoded = sorted((_uri_encode(k), _uri_encode(v)) for k, v in query)
    return "&".join(f"{k}={v}" if v else k for k, v in encoded)


def _v4_signed_headers(
    headers: Mapping[str, str], additional_headers: Iterable[str]
) -> tuple[list[tuple[str, str]], list[str]]:
    h = _lower_headers(headers)
    additional = sorted(
        {
            a.lower()
            for a in additional_headers
            if a.lower() in h
            and not a.lower().startswith("x-oss-")
            and a.lower() not in ("content-type", "content-md5")
        }
    )
    signed = sorted(
        (k, v)
        for k, v in h.items()
        if k.startswith("x-oss-") or k in ("content-type", "content-md5") or k in additional
    )
    return signed, additional


def v4_canonical_request(
    method: str,
    bucket: str | None,
    key: str | None,
    query: Query,
    headers: Mapping[str, str],
    additional_headers: Iterable[str] = (),
) -> str:
    """The V4 CanonicalRequest (PROTOCOL.md §3.2 step 2)."""
    signed, additional = _v4_signed_headers(headers, additional_headers)
    canonical_headers = "".join(f"{k}:{v}\n" for k, v in signed)
    payload = _lower_headers(headers).get("x-oss-content-sha256", UNSIGNED_PAYLOAD)
    return "\n".join(
        [
            method.upper(),
            _canonical_uri(bucket, key),
            _canonical_query(query),
            canonical_headers,
            ";".join(additional),
            payload,
        ]
    )


def v4_scope(date: str, region: str, product: str = "oss") -> str:
    """``YYYYMMDD/region/product/aliyun_v4_request``; ``date`` may be the full x-oss-date."""
    return f"{date[:8]}/{region}/{product}/aliyun_v4_request"


def v4_string_to_sign(canonical_request: str, x_oss_date: str, scope: str) -> str:
    """``OSS4-HMAC-SHA256\\n<x-oss-date>\\n<scope>\\n<hex sha256(canonical request)>``."""
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    return f"{V4_ALGORITHM}\n{x_oss_date}\n{scope}\n{digest}"


def v4_signature(
    secret: str, date: str, region: str, string_to_sign: str, product: str = "oss"
) -> str:
    """Lowercase hex HMAC-SHA256 of ``string_to_sign`` under the derived signing key."""
    key = _signing_key(secret, date[:8], region, product)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=8)
def _signing_key(secret: str, day: str, region: str, product: str) -> bytes:
    # Four HMACs that only change once a day: derived once, not per request.
    key = hmac.new(f"aliyun_v4{secret}".encode(), day.encode(), hashlib.sha256).digest()
    for part in (region, product, "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign_v4(
    method: str,
    bucket: str | None,
    key: str | None,
    query: Query,
    headers: MutableMapping[str, str],
    credentials: Credentials,
    now: datetime,
    region: str,
    *,
    product: str = "oss",
    additional_headers: Iterable[str] = (),
) -> str:
    """Add ``x-oss-date``, ``x-oss-content-sha256`` (and the STS token), then ``Authorization``.

    Returns the StringToSign (useful for debugging a ``SignatureDoesNotMatch``).
    """
    _drop(headers, "authorization")
    rfc1123, x_oss_date = _request_dates(now)
    _set(headers, "x-oss-date", x_oss_date)
    _set(headers, "date", rfc1123)
    _set(headers, "x-oss-content-sha256", UNSIGNED_PAYLOAD)
    if credentials.security_token:
        _set(headers, "x-oss-security-token", credentials.security_token)
    additional = list(additional_headers)
    canonical = v4_canonical_request(method, bucket, key, query, headers, additional)
    scope = v4_scope(x_oss_date, region, product)
    sts = v4_string_to_sign(canonical, x_oss_date, scope)
    signature = v4_signature(credentials.access_key_secret, x_oss_date, region, sts, product)
    _, used_additional = _v4_signed_headers(headers, additional)
    auth = f"{V4_ALGORITHM} Credential={credentials.access_key_id}/{scope}"
    if used_additional:
        auth += f",AdditionalHeaders={';'.join(used_additional)}"
    headers["authorization"] = f"{auth},Signature={signature}"
    return sts


def _drop(headers: MutableMapping[str, str], name: str) -> None:
    for k in [k for k in headers if k.lower() == name]:
        del headers[k]


def _set(headers: MutableMapping[str, str], name: str, value: str) -> None:
    _drop(headers, name)
    headers[name] = value
