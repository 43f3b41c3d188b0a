"""Presigned URLs: a request signed into its query string, so anyone holding the URL can
make it (until it expires) with a plain HTTP client and no credentials.

The commonest use is a device uploading straight to OSS: your server signs a ``PUT`` URL
that carries the upload callback (``callback``/``callback-var`` query parameters, the same
Base64 JSON as the ``x-oss-callback`` headers), the device PUTs the file to it, and OSS
stores it, calls your callback server and hands its answer back to the device.

Pure functions: the bucket methods pass the time, credentials and endpoint in.

V1 (PROTOCOL.md §3.1): ``OSSAccessKeyId``, ``Expires`` (a Unix time) and, for STS,
``security-token`` are added; the StringToSign is the header form's with ``Expires`` in
the Date slot; only sub-resources among the parameters are signed (OSS's rule), so other
parameters can be changed by whoever holds the URL. V4 (§3.2): ``x-oss-signature-version``,
``x-oss-date``, ``x-oss-expires`` (seconds, at most 7 days), ``x-oss-credential`` and, for
STS, ``x-oss-security-token`` (and ``x-oss-additional-headers`` when headers beyond
``x-oss-*``/Content-Type/Content-MD5 are signed) are added; every parameter is signed.

The URL's parameters come in alibabacloud-oss-v2's order (the caller's, then the
signature's); oss2 orders them differently, and OSS does not care.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timezone

from oss_callback.protocol._callback import Callback
from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._endpoint import Endpoint, validate_key
from oss_callback.protocol._signing import (
    V4_ALGORITHM,
    SignatureVersion,
    format_v4_date,
    v1_signature,
    v1_string_to_sign,
    v4_canonical_request,
    v4_scope,
    v4_signature,
    v4_string_to_sign,
)

__all__ = ["MAX_V4_EXPIRES", "presign_url"]

#: The longest validity OSS accepts for a V4 presigned URL: 7 days (``x-oss-expires``).
MAX_V4_EXPIRES = 7 * 24 * 3600
METHODS = frozenset({"GET", "PUT", "HEAD", "POST", "DELETE"})
#: Query parameters the signature itself sets: a caller's would break or fake it.
_RESERVED_PARAMS = frozenset(
    {
        "ossaccesskeyid", "expires", "signature", "security-token", "x-oss-signature",
        "x-oss-signature-version", "x-oss-date", "x-oss-expires", "x-oss-credential",
        "x-oss-security-token", "x-oss-additional-headers", "x-oss-access-key-id",
    }
)
#: Headers a presigned request cannot fix: its time and authorization live in the URL.
_RESERVED_HEADERS = frozenset({"authorization", "date", "x-oss-date", "x-oss-security-token"})
#: Headers V4 always signs; any other header given is signed as an additional header.
_V4_DEFAULT_SIGNED = ("content-type", "content-md5")


def _check_expires(expires: float, signature_version: str) -> int:
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        raise TypeError(f"expires must be a number of seconds, got {type(expires).__name__}")
    if not math.isfinite(expires) or expires < 1:
        raise ValueError(f"expires must be at least 1 second, got {expires!r}")
    if signature_version == "v4" and expires > MAX_V4_EXPIRES:
        raise ValueError(
            f"expires is {expires!r} s: a V4 presigned URL is valid for at most 7 days "
            f"({MAX_V4_EXPIRES} s)"
        )
    return int(expires)


def _check_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    checked: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("headers must map str names to str values")
        lower = name.lower()
        if not lower or any(c.isspace() or c == ":" for c in lower) or not lower.isascii():
            raise ValueError(f"invalid header name {name!r}")
        if any(c in value for c in "\r\n\x00"):
            raise ValueError(f"header {name!r} must not contain CR, LF or NUL")
        if not value:
            raise ValueError(f"header {name!r} has an empty value: a signed header needs one")
        if lower in _RESERVED_HEADERS:
            raise ValueError(
                f"header {name!r} can't be presigned: the URL carries the time and the "
                "credentials"
            )
        if lower in checked:
            raise ValueError(f"header {name!r} is given twice (names are case-insensitive)")
        checked[lower] = value
    return checked


def _query(
    method: str,
    params: Mapping[str, str] | None,
    callback: Callback | None,
    headers: Mapping[str, str],
) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name, value in (params or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError("params must map str names to str values ('' for a bare name)")
        if not name:
            raise ValueError("a query parameter name must not be empty")
        if name.lower() in _RESERVED_PARAMS:
            raise ValueError(f"query parameter {name!r} is set by the signature itself")
        pairs.append((name, value))
    if callback is not None:
        if not isinstance(callback, Callback):
            raise TypeError(f"callback must be a Callback, got {type(callback).__name__}")
        if method not in ("PUT", "POST"):
            raise ValueError(
                f"a callback runs after an upload: sign a PUT (PutObject) or a POST "
                f"(CompleteMultipartUpload) URL, not {method}"
            )
        if any(name in ("callback", "callback-var") for name, _ in pairs):
            raise ValueError("pass the callback as callback=..., not as params")
        pairs.append(("callback", callback.encoded_callback))
        variables = callback.encoded_variables
        if variables:
            pairs.append(("callback-var", variables))
    in_url = any(name in ("callback", "callback-var") for name, _ in pairs)
    if in_url and ("x-oss-callback" in headers or "x-oss-callback-var" in headers):
        # OSS refuses a request with both forms (400 InvalidArgument)
        raise ValueError("a callback goes either in the URL or in headers, not both")
    return pairs


def presign_url(
    method: str,
    bucket: str,
    key: str,
    expires: float,
    *,
    credentials: Credentials,
    now: datetime,
    endpoint: Endpoint,
    signature_version: SignatureVersion,
    region: str | None,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    callback: Callback | None = None,
) -> str:
    """Sign ``method`` on ``bucket/key`` into a URL valid for ``expires`` seconds from ``now``.

    See :meth:`oss_callback.AsyncBucket.sign_url` for the arguments and rules.

    Raises:
        ValueError: an unknown method, a bad key, ``expires`` out of range, a header or
            parameter the signature sets itself, a callback on a method that uploads
            nothing, or V4 without a region.
        TypeError: non-str headers or parameters, a non-numeric ``expires``.
    """
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    method = method.upper()
    validate_key(key)
    if signature_version not in ("v1", "v4"):
        raise ValueError(f"signature_version must be 'v4' or 'v1', got {signature_version!r}")
    seconds = _check_expires(expires, signature_version)
    signed_headers = _check_headers(headers)
    pairs = _query(method, params, callback, signed_headers)
    if now.microsecond:
        now = now.replace(microsecond=0)
    token = credentials.security_token
    if signature_version == "v1":
        expires_at = str(int(now.timestamp()) + seconds)
        pairs += [("OSSAccessKeyId", credentials.access_key_id), ("Expires", expires_at)]
        if token:
            pairs.append(("security-token", token))
        string_to_sign = v1_string_to_sign(
            method, bucket, key, pairs, {**signed_headers, "date": expires_at}
        )
        signature = ("Signature", v1_signature(credentials.access_key_secret, string_to_sign))
    else:
        if not region:
            raise ValueError("V4 signing needs a region: pass region= to the client")
        x_oss_date = format_v4_date(now.astimezone(timezone.utc))
        scope = v4_scope(x_oss_date, region)
        additional = sorted(n for n in signed_headers
                            if not n.startswith("x-oss-") and n not in _V4_DEFAULT_SIGNED)
        pairs += [
            ("x-oss-signature-version", V4_ALGORITHM),
            ("x-oss-date", x_oss_date),
            ("x-oss-expires", str(seconds)),
            ("x-oss-credential", f"{credentials.access_key_id}/{scope}"),
        ]
        if token:
            pairs.append(("x-oss-security-token", token))
        if additional:
            pairs.append(("x-oss-additional-headers", ";".join(additional)))
        canonical = v4_canonical_request(method, bucket, key, pairs, signed_headers, additional)
        string_to_sign = v4_string_to_sign(canonical, x_oss_date, scope)
        signature = (
            "x-oss-signature",
            v4_signature(credentials.access_key_secret, x_oss_date, region, string_to_sign),
        )
    return endpoint.url(bucket, key, [*pairs, signature])
