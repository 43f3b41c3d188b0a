"""Request authentication as OSS does it: V1 and V4, header and presigned-URL forms, STS.

Signatures are recomputed with :mod:`oss_callback.protocol._signing` from the request exactly as it
was received (method, bucket, key, decoded query pairs in order, every header).
"""

from __future__ import annotations

import hmac
import threading
import time
from calendar import timegm
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import attrs

from oss_callback.protocol._signing import (
    V4_ALGORITHM,
    v1_signature,
    v1_string_to_sign,
    v4_canonical_request,
    v4_scope,
    v4_signature,
    v4_string_to_sign,
)
from oss_callback.testing._errors import OSSErrorResponse

__all__ = ["CredentialStore", "RequestView", "authenticate", "authenticate_post"]

MAX_SKEW_SECONDS = 15 * 60


@attrs.frozen(kw_only=True)
class _Key:
    secret: str = attrs.field(repr=False)
    token: str | None = attrs.field(repr=False)
    #: UNIX time the key (an STS token) stops working; ``None``: never.
    expires_at: float | None = None


class CredentialStore:
    """Access keys the emulator accepts (thread-safe); secrets never leave it in a repr."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, _Key] = {}

    def add(self, access_key_id: str, secret: str, token: str | None = None, *,
            expires_at: float | None = None) -> None:
        """Accept ``access_key_id`` with ``secret`` (and, for STS keys, ``token``), until
        ``expires_at`` (UNIX time; ``None``: for ever)."""
        if not access_key_id or not secret:
            raise ValueError("access_key_id and access_key_secret must be non-empty")
        with self._lock:
            self._keys[access_key_id] = _Key(secret=secret, token=token, expires_at=expires_at)

    def expire(self, access_key_id: str, at: float | None = None) -> None:
        """Make a key expire at ``at`` (UNIX time; ``None``: now).

        Raises:
            KeyError: the key is not accepted.
        """
        with self._lock:
            key = self._keys[access_key_id]
            self._keys[access_key_id] = attrs.evolve(
                key, expires_at=time.time() if at is None else at)

    def clear(self) -> None:
        """Accept no key at all."""
        with self._lock:
            self._keys.clear()

    def remove(self, access_key_id: str) -> None:
        """Stop accepting a key."""
        with self._lock:
            self._keys.pop(access_key_id, None)

    def get(self, access_key_id: str) -> _Key | None:
        """The key's secret and token, or ``None``."""
        with self._lock:
            return self._keys.get(access_key_id)

    def __repr__(self) -> str:
        with self._lock:
            return f"CredentialStore(access_key_ids={sorted(self._keys)!r})"


@attrs.frozen(kw_only=True)
class RequestView:
    """What authentication needs to know about a request."""

    method: str
    bucket: str | None
    key: str | None
    query: Sequence[tuple[str, str]]
    headers: Mapping[str, str]  # lower-case names


def _denied(message: str, code: str = "AccessDenied", *extra: tuple[str, str]) -> OSSErrorResponse:
    return OSSErrorResponse(403, code, message, extra)


def _spaced_hex(text: str) -> str:
    return " ".join(f"{b:02x}" for b in text.encode())


def _check_token(
    access_key_id: str, key: _Key, headers: Mapping[str, str], query: Mapping[str, str],
    now: float,
) -> None:
    _check_expiry(access_key_id, key, now)
    sent = (
        headers.get("x-oss-security-token")
        or headers.get("security-token")  # alibabacloud-oss-v2's V1 signer sends this name
        or query.get("security-token")
        or query.get("x-oss-security-token")
    )
    if key.token is None and sent is None:
        return
    if key.token is None or sent is None or not hmac.compare_digest(sent, key.token):
        raise _denied(
            "The security token you provided is invalid.",
            "InvalidAccessKeyId",
            ("OSSAccessKeyId", access_key_id),
        )


def _check_expiry(access_key_id: str, key: _Key, now: float) -> None:
    """An expired STS key: 403 ``SecurityTokenExpired``, "The security token you provided
    has expired." (EC 0002-00000007), as OSS answers. Sources: OSS docs "HTTP 403 status
    code" (AlibabaCloudDocs/oss ``intl.en-US/Developer Guide/Troubleshooting/HTTP 403 status
    code.md``, section SecurityTokenExpired), help.aliyun.com/en/oss/support/0002-00000007,
    and the Go SDK's error text quoted in rclone's OSS backend (``StatusCode=403,
    ErrorCode=SecurityTokenExpired``). Checked before the token and the signature."""
    if key.expires_at is not None and now >= key.expires_at:
        raise _denied(
            "The security token you provided has expired.",
            "SecurityTokenExpired",
            ("OSSAccessKeyId", access_key_id),
        )


def _lookup(store: CredentialStore, access_key_id: str) -> _Key:
    key = store.get(access_key_id)
    if key is None:
        raise _denied(
            "The OSS Access Key Id you provided does not exist in our records.",
            "InvalidAccessKeyId",
            ("OSSAccessKeyId", access_key_id),
        )
    return key


def _check_skew(request_time: float, now: float, max_skew: float, shown: str) -> None:
    if abs(request_time - now) > max_skew:
        server = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        raise _denied(
            "The difference between the request time and the current time is too large.",
            "RequestTimeTooSkewed",
            ("RequestTime", shown),
            ("ServerTime", server),
            ("MaxAllowedSkewMilliseconds", str(int(max_skew * 1000))),
        )


def _parse_v1_date(value: str | None) -> float:
    if not value:
        raise _denied("OSS authentication requires a valid Date.")
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise _denied("OSS authentication requires a valid Date.") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _parse_v4_date(value: str | None) -> float:
    if not value:
        raise _denied("V4 authentication requires a valid x-oss-date header.")
    try:
        return float(timegm(time.strptime(value, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        raise _denied(f"Invalid x-oss-date {value!r}: expected YYYYMMDD'T'HHMMSS'Z'.") from None


def _signature_mismatch(
    access_key_id: str, provided: str, string_to_sign: str, canonical: str | None = None
) -> OSSErrorResponse:
    extra = [
        ("OSSAccessKeyId", access_key_id),
        ("SignatureProvided", provided),
        ("StringToSign", string_to_sign),
        ("StringToSignBytes", _spaced_hex(string_to_sign)),
    ]
    if canonical is not None:
        extra.append(("CanonicalRequest", canonical))
    return OSSErrorResponse(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        extra,
    )


def _verify_v1(
    req: RequestView,
    store: CredentialStore,
    access_key_id: str,
    provided: str,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    now: float,
) -> str:
    key = _lookup(store, access_key_id)
    _check_token(access_key_id, key, req.headers, query, now)
    sts = v1_string_to_sign(req.method, req.bucket, req.key, req.query, headers)
    expected = v1_signature(key.secret, sts)
    if not hmac.compare_digest(expected.encode(), provided.encode()):
        raise _signature_mismatch(access_key_id, provided, sts)
    return access_key_id


def _check_scope(
    access_key_id: str,
    scope_region: str,
    product: str,
    date: str,
    x_oss_date: str,
    region: str,
    where: str,
) -> None:
    """A V4 credential scope must name this region, ``oss``, and the day of x-oss-date."""
    if scope_region != region or product != "oss":
        raise _denied(
            f"Invalid signing region in {where}: the scope says region {scope_region!r} "
            f"(product {product!r}) but this endpoint's region is {region!r}.",
            "SignatureDoesNotMatch",
            ("OSSAccessKeyId", access_key_id),
        )
    if date != x_oss_date[:8]:
        raise _denied(
            f"The date {date!r} in the {where} scope does not match x-oss-date {x_oss_date!r}.",
            "SignatureDoesNotMatch",
            ("OSSAccessKeyId", access_key_id),
        )


def _verify_v4(
    req: RequestView,
    store: CredentialStore,
    *,
    credential: str,
    provided: str,
    x_oss_date: str,
    additional: Sequence[str],
    query_pairs: Sequence[tuple[str, str]],
    query: Mapping[str, str],
    region: str,
    now: float,
) -> str:
    fields = credential.split("/")
    if len(fields) != 5 or fields[4] != "aliyun_v4_request":
        raise OSSErrorResponse(
            400,
            "InvalidArgument",
            "Credential should be <AccessKeyId>/<date>/<region>/oss/aliyun_v4_request.",
            [("ArgumentName", "Credential"), ("ArgumentValue", credential)],
        )
    access_key_id, date, scope_region, product, _ = fields
    key = _lookup(store, access_key_id)
    _check_token(access_key_id, key, req.headers, query, now)
    _check_scope(access_key_id, scope_region, product, date, x_oss_date, region, "Credential")
    canonical = v4_canonical_request(
        req.method, req.bucket, req.key, query_pairs, req.headers, additional
    )
    sts = v4_string_to_sign(canonical, x_oss_date, v4_scope(date, region, product))
    expected = v4_signature(key.secret, date, region, sts, product)
    if not hmac.compare_digest(expected.encode(), provided.lower().encode()):
        raise _signature_mismatch(access_key_id, provided, sts, canonical)
    return access_key_id


def _parse_v4_authorization(value: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for item in value[len(V4_ALGORITHM) :].split(","):
        name, sep, val = item.strip().partition("=")
        if sep:
            fields[name] = val.strip()
    if "Credential" not in fields or "Signature" not in fields:
        raise OSSErrorResponse(
            400,
            "InvalidArgument",
            "Authorization header is invalid: OSS4-HMAC-SHA256 needs Credential= and Signature=.",
            [("ArgumentName", "Authorization"), ("ArgumentValue", value)],
        )
    return fields


def authenticate(
    req: RequestView,
    store: CredentialStore,
    *,
    region: str,
    now: float | None = None,
    max_skew: float = MAX_SKEW_SECONDS,
) -> str:
    """Check the request's signature; return the access key id that signed it.

    Raises:
        OSSErrorResponse: 403 ``AccessDenied`` (anonymous, expired, no date),
            ``InvalidAccessKeyId`` (unknown key, wrong STS token), ``SecurityTokenExpired``
            (an STS key past its expiry), ``SignatureDoesNotMatch``
            (with ``StringToSign``/``CanonicalRequest``), ``RequestTimeTooSkewed``; 400
            ``InvalidArgument`` for an unparsable Authorization header.
    """
    now = time.time() if now is None else now
    headers = req.headers
    query: dict[str, str] = {}
    for name, value in req.query:
        query.setdefault(name, value)
    authorization = headers.get("authorization")

    if authorization is not None:
        if authorization.startswith("OSS "):
            access_key_id, sep, provided = authorization[4:].strip().rpartition(":")
            if not sep or not access_key_id:
                raise OSSErrorResponse(
                    400,
                    "InvalidArgument",
                    "Authorization header is invalid: expected 'OSS <AccessKeyId>:<Signature>'.",
                    [("ArgumentName", "Authorization"), ("ArgumentValue", authorization)],
                )
            shown = headers.get("x-oss-date") or headers.get("date") or ""
            request_time = _parse_v1_date(shown)
            _lookup(store, access_key_id)
            _check_skew(request_time, now, max_skew, shown)
            return _verify_v1(req, store, access_key_id, provided, headers, query, now)
        if authorization.startswith(V4_ALGORITHM):
            fields = _parse_v4_authorization(authorization)
            x_oss_date = headers.get("x-oss-date", "")
            request_time = _parse_v4_date(x_oss_date)
            _lookup(store, fields["Credential"].split("/", 1)[0])
            _check_skew(request_time, now, max_skew, x_oss_date)
            additional = [a for a in fields.get("AdditionalHeaders", "").split(";") if a]
            return _verify_v4(
                req,
                store,
                credential=fields["Credential"],
                provided=fields["Signature"],
                x_oss_date=x_oss_date,
                additional=additional,
                query_pairs=req.query,
                query=query,
                region=region,
                now=now,
            )
        raise OSSErrorResponse(
            400,
            "InvalidArgument",
            "Authorization header is invalid: expected 'OSS ...' or 'OSS4-HMAC-SHA256 ...'.",
            [("ArgumentName", "Authorization"), ("ArgumentValue", authorization)],
        )

    if "OSSAccessKeyId" in query and "Signature" in query:  # V1 presigned URL
        expires = query.get("Expires", "")
        if not (expires.isascii() and expires.isdigit()):
            raise _denied("Invalid Expires in the presigned URL.")
        if now > int(expires):
            raise _denied("Request has expired.", "AccessDenied", ("Expires", expires))
        signed_headers = {k: v for k, v in headers.items() if k not in ("date", "x-oss-date")}
        signed_headers["date"] = expires
        return _verify_v1(
            req, store, query["OSSAccessKeyId"], query["Signature"], signed_headers, query, now
        )

    if "x-oss-signature" in query:  # V4 presigned URL
        if query.get("x-oss-signature-version") != V4_ALGORITHM:
            raise _denied("Unsupported x-oss-signature-version.")
        x_oss_date = query.get("x-oss-date", "")
        signed_at = _parse_v4_date(x_oss_date)
        expires = query.get("x-oss-expires", "")
        if not (expires.isascii() and expires.isdigit()):
            raise _denied("Invalid x-oss-expires in the presigned URL.")
        if not 1 <= int(expires) <= 604800:  # OSS: EC 0002-00000232
            raise _denied(
                "x-oss-expires must be between 1 and 604800 seconds (7 days) in a V4 presigned URL."
            )
        if now > signed_at + int(expires):
            raise _denied("Request has expired.", "AccessDenied", ("Expires", expires))
        additional = [a for a in query.get("x-oss-additional-headers", "").split(";") if a]
        return _verify_v4(
            req,
            store,
            credential=query.get("x-oss-credential", ""),
            provided=query["x-oss-signature"],
            x_oss_date=x_oss_date,
            additional=additional,
            query_pairs=[(k, v) for k, v in req.query if k != "x-oss-signature"],
            query=query,
            region=region,
            now=now,
        )

    raise _denied("You have no right to access this object because of bucket acl.")


def authenticate_post(fields: Mapping[str, str], store: CredentialStore, *, region: str,
                      now: float | None = None) -> str:
    """Check a PostObject form's signature over its ``policy``; return the access key id.

    V1: ``OSSAccessKeyId`` and ``Signature`` = Base64(HMAC-SHA1(secret, policy)). V4:
    ``x-oss-signature-version`` = ``OSS4-HMAC-SHA256``, ``x-oss-credential``,
    ``x-oss-date`` and ``x-oss-signature`` = hex(HMAC-SHA256(V4 signing key, policy)).
    ``fields`` has lower-cased names. An STS key needs ``x-oss-security-token``.

    Raises:
        OSSErrorResponse: 403 ``AccessDenied`` (no policy: buckets are private),
            ``InvalidAccessKeyId``, ``SecurityTokenExpired``, ``SignatureDoesNotMatch``; 400
            ``InvalidArgument`` for a missing or malformed signature field.
    """
    now = time.time() if now is None else now
    policy = fields.get("policy")
    if not policy:
        raise _denied("You have no right to access this object because of bucket acl.")

    def required(name: str) -> str:
        value = fields.get(name.lower(), "")
        if not value:
            raise OSSErrorResponse(
                400,
                "InvalidArgument",
                f"The {name} form field is missing or empty.",
                [("ArgumentName", name)],
            )
        return value

    version = fields.get("x-oss-signature-version")
    if version is None:
        access_key_id = required("OSSAccessKeyId")
        provided = required("Signature")
        key = _lookup(store, access_key_id)
        _check_token(access_key_id, key, fields, {}, now)
        expected = v1_signature(key.secret, policy)
    else:
        if version != V4_ALGORITHM:
            raise OSSErrorResponse(
                400,
                "InvalidArgument",
                f"Unsupported x-oss-signature-version {version!r}: use {V4_ALGORITHM}.",
                [("ArgumentName", "x-oss-signature-version")],
            )
        credential = required("x-oss-credential")
        x_oss_date = required("x-oss-date")
        provided = required("x-oss-signature").lower()
        parts = credential.split("/")
        if len(parts) != 5 or parts[3] != "oss" or parts[4] != "aliyun_v4_request":
            raise OSSErrorResponse(
                400,
                "InvalidArgument",
                "x-oss-credential should be <AccessKeyId>/<date>/<region>/oss/aliyun_v4_request.",
                [("ArgumentName", "x-oss-credential"), ("ArgumentValue", credential)],
            )
        access_key_id, date, scope_region = parts[0], parts[1], parts[2]
        key = _lookup(store, access_key_id)
        _check_token(access_key_id, key, fields, {}, now)
        _check_scope(access_key_id, scope_region, "oss", date, x_oss_date, region,
                     "x-oss-credential")
        expected = v4_signature(key.secret, date, region, policy, "oss")
    if not hmac.compare_digest(expected.encode(), provided.encode()):
        raise _denied(
            "The request signature we calculated does not match the signature you provided.",
            "SignatureDoesNotMatch",
            ("OSSAccessKeyId", access_key_id),
            ("StringToSign", policy),
        )
    return access_key_id
