"""What the emulator saw: requests received and callbacks sent (for test assertions)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime

import attrs

__all__ = ["CallbackRecord", "RequestRecord", "StsCredentials"]


@attrs.frozen(kw_only=True)
class RequestRecord:
    """One request the emulator answered (or dropped).

    Attributes:
        method: The HTTP method.
        path: The raw request path, still percent-encoded.
        bucket: The bucket the request addressed (``None`` for service-level requests).
        key: The decoded object key (``None`` for bucket-level requests).
        query: The decoded query parameters, in order (``""`` for a bare ``?uploads``).
        headers: The request headers, lower-case names, without ``authorization``.
        operation: The OSS operation name, e.g. ``"PutObject"`` or ``"UploadPart"``.
        status: The status answered, or ``-1`` when a fault dropped the connection.
        error_code: The OSS error code answered, if any (e.g. ``"NoSuchKey"``).
        body_size: Request-body bytes received.
        request_id: The ``x-oss-request-id`` answered.
        fault: True when an injected fault shaped the answer.
    """

    method: str
    path: str
    bucket: str | None
    key: str | None
    query: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]
    operation: str
    status: int
    error_code: str | None
    body_size: int
    request_id: str
    fault: bool = False


@attrs.frozen(kw_only=True)
class CallbackRecord:
    """One upload-callback POST the emulator attempted.

    Attributes:
        url: The URL posted to (one of the ``;``-separated callback URLs).
        headers: The headers sent (``authorization`` is the RSA signature, not a secret).
        body: The body sent, after variable substitution.
        status: The callback server's HTTP status, or ``None`` when there was no answer.
        response_body: The callback server's body, or ``None`` when there was no answer.
        error: Why this attempt failed (the ``CallbackFailed`` message), ``None`` on success.
        request_id: The ``x-oss-request-id`` of the upload that triggered the callback.
    """

    url: str
    headers: Mapping[str, str]
    body: bytes
    status: int | None
    response_body: bytes | None
    error: str | None
    request_id: str

    @property
    def ok(self) -> bool:
        """True when this attempt counted as a successful callback."""
        return self.error is None


@attrs.frozen(kw_only=True)
class StsCredentials:
    """A temporary (STS-style) access key issued by :meth:`OSSEmulator.issue_sts_token`.

    Unpacks as ``(access_key_id, access_key_secret, security_token)``; the secret and the
    token never appear in the ``repr``. ``expiration`` (UTC) is when the emulator stops
    accepting them (``403 SecurityTokenExpired``); ``None``: never.
    """

    access_key_id: str
    access_key_secret: str = attrs.field(repr=False)
    security_token: str = attrs.field(repr=False)
    expiration: datetime | None = None

    def __iter__(self) -> Iterator[str]:
        return iter((self.access_key_id, self.access_key_secret, self.security_token))
