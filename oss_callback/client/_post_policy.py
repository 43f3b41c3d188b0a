"""Signed POST policies: let a browser upload straight to OSS (PostObject), with a callback.

Your server calls :meth:`AsyncBucket.sign_post_policy` and hands the result to the browser,
which POSTs ``fields`` and then the file (as the last form field, named ``file``) to ``url``
as ``multipart/form-data``. The policy pins the bucket, the key (or a key prefix), the
callback and its variables, and optionally a size range and Content-Type, so the browser
can change none of them; it expires after ``expires`` seconds. No request is made.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import attrs

from oss_callback.protocol._callback import Callback
from oss_callback.protocol._signing import V4_ALGORITHM, v1_signature, v4_signature

if TYPE_CHECKING:
    from oss_callback.client._http import Session

__all__ = ["PostPolicy", "build_post_policy"]

#: Longest validity a policy may be given (7 days, as for presigned URLs).
MAX_EXPIRES = 7 * 24 * 3600
_HIDDEN = frozenset({"x-oss-security-token"})


def _fields_repr(fields: Mapping[str, str]) -> str:
    return repr({k: ("<redacted>" if k in _HIDDEN else v) for k, v in fields.items()})


@attrs.frozen
class PostPolicy:
    """A signed browser upload: POST ``fields``, then the file, to ``url``.

    Attributes:
        url: where the form goes (the bucket's URL).
        fields: the form fields, in order; the file must come after them, as the field
            named ``file``. An STS token among them is hidden from ``repr``.
        expires_at: when OSS stops accepting the policy (UTC).
        key: the object key, or the key prefix (then the browser's file name follows it:
            the ``key`` field ends with ``${filename}``).
    """

    url: str
    fields: Mapping[str, str] = attrs.field(repr=_fields_repr)
    expires_at: datetime
    key: str


def build_post_policy(
    session: Session,
    bucket: str,
    *,
    key: str | None,
    key_prefix: str | None,
    expires: float,
    callback: Callback | None,
    min_size: int,
    max_size: int | None,
    content_type: str | None,
    success_action_status: int | None,
) -> PostPolicy:
    """Build and sign a POST policy (see :meth:`AsyncBucket.sign_post_policy`)."""
    if (key is None) == (key_prefix is None):
        raise ValueError("give exactly one of key= (an exact key) and key_prefix=")
    if not 0 < expires <= MAX_EXPIRES:
        raise ValueError(f"expires must be in (0, {MAX_EXPIRES}] seconds, got {expires!r}")
    if min_size < 0 or (max_size is not None and max_size < min_size):
        raise ValueError(f"need 0 <= min_size <= max_size, got {min_size!r}, {max_size!r}")
    if success_action_status not in (None, 200, 201, 204):
        raise ValueError("success_action_status must be 200, 201 or 204")
    now = session.now()
    expires_at = now + timedelta(seconds=expires)
    fields: dict[str, str] = {}
    conditions: list[Any] = [{"bucket": bucket}]
    if key is not None:
        fields["key"] = key
        conditions.append(["eq", "$key", key])
    else:
        assert key_prefix is not None
        fields["key"] = key_prefix + "${filename}"
        conditions.append(["starts-with", "$key", key_prefix])
    if max_size is not None:
        conditions.append(["content-length-range", min_size, max_size])
    elif min_size:
        conditions.append(["content-length-range", min_size, 5 * 1024**3])
    if content_type is not None:
        fields["Content-Type"] = content_type
        conditions.append(["eq", "$content-type", content_type])
    if success_action_status is not None:
        fields["success_action_status"] = str(success_action_status)
        conditions.append({"success_action_status": str(success_action_status)})
    if callback is not None:
        fields["callback"] = callback.encoded_callback
        conditions.append({"callback": callback.encoded_callback})
        for name, value in callback.variables.items():
            fields[name] = value
            conditions.append(["eq", "$" + name, value])
    # A provider's cached credentials if fresh (CredentialsError otherwise: this is sync).
    credentials = session.current_credentials()
    token = credentials.security_token
    if session.signature_version == "v1":
        auth = {"OSSAccessKeyId": credentials.access_key_id}
    else:
        assert session.region is not None
        day = now.strftime("%Y%m%d")
        auth = {
            "x-oss-signature-version": V4_ALGORITHM,
            "x-oss-credential": (
                f"{credentials.access_key_id}/{day}/{session.region}/oss/aliyun_v4_request"
            ),
            "x-oss-date": now.strftime("%Y%m%dT%H%M%SZ"),
        }
        conditions += [{name: value} for name, value in auth.items()]
    if token:
        auth["x-oss-security-token"] = token
        conditions.append({"x-oss-security-token": token})
    document = {
        "expiration": expires_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "conditions": conditions,
    }
    policy = base64.b64encode(
        json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    ).decode()
    if session.signature_version == "v1":
        signature = {"Signature": v1_signature(credentials.access_key_secret, policy)}
    else:
        assert session.region is not None
        day = now.strftime("%Y%m%d")
        sig = v4_signature(credentials.access_key_secret, day, session.region, policy)
        signature = {"x-oss-signature": sig}
    return PostPolicy(
        url=session.endpoint.url(bucket),
        fields={**fields, **auth, "policy": policy, **signature},
        expires_at=expires_at,
        key=key if key is not None else key_prefix or "",
    )
