"""The exception tree. Every error this package raises on purpose derives from OSSError::

    OSSError                      the one root
    ├── ServiceError              OSS answered with an error (status, code, message, request id, ec)
    │   └── CallbackError         HTTP 203 CallbackFailed: the object IS stored; .result has it
    ├── RequestError              the request never got an answer (connect/read/write, timeout)
    └── ClientError               this side refused or detected a problem
        ├── InconsistentError     CRC-64 of what OSS stored != CRC-64 of what was sent
        ├── CheckpointError       an unusable checkpoint file (corrupt, foreign, newer version)
        ├── FileChangedError      the source file changed between runs or during the upload
        └── ResponseError         the server's answer is not what OSS sends (e.g. HTML, bad XML)

Argument errors are plain ``ValueError``/``TypeError`` raised before any request is made.
HTTP status and OSS error codes are mapped to classes in one place: :func:`make_service_error`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

if TYPE_CHECKING:
    from ._models import PutObjectResult

__all__ = [
    "CallbackError",
    "CheckpointError",
    "ClientError",
    "FileChangedError",
    "InconsistentError",
    "OSSError",
    "RequestError",
    "ResponseError",
    "ServiceError",
    "make_service_error",
    "parse_error_xml",
]

#: Error bodies bigger than this are not parsed (a misbehaving server must not eat memory).
MAX_ERROR_BODY = 64 * 1024


class OSSError(Exception):
    """The root of every error raised by oss_callback."""


class ServiceError(OSSError):
    """OSS answered with an error.

    Attributes:
        status: the HTTP status code.
        code: the OSS error code (``NoSuchKey``, ``SignatureDoesNotMatch``, ...), or ``""``.
        message: the human-readable message OSS sent.
        request_id: ``x-oss-request-id`` (quote it to Alibaba Cloud support).
        ec: the detailed error code (``EC``/``x-oss-ec``), or ``None``.
        host_id: the ``HostId`` OSS sent, or ``None``.
        details: every child element of ``<Error>``, by tag (e.g. ``StringToSign``).
    """

    def __init__(
        self,
        status: int,
        code: str = "",
        message: str = "",
        request_id: str | None = None,
        *,
        ec: str | None = None,
        host_id: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.ec = ec
        self.host_id = host_id
        self.details: dict[str, str] = dict(details or {})
        super().__init__(self._summary())

    def _summary(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        text = " ".join(parts)
        if self.message:
            text += f": {' '.join(self.message.split())}"
        extras = []
        if self.ec:
            extras.append(f"ec={self.ec}")
        if self.request_id:
            extras.append(f"request_id={self.request_id}")
        if extras:
            text += f" ({', '.join(extras)})"
        hint = _HINTS.get(self.code)
        if hint:
            text += f" - {hint}"
        return text

    def __str__(self) -> str:
        return self._summary()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r}, ec={self.ec!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_service_error,
            (type(self), self.status, self.code, self.message, self.request_id, self.ec,
             self.host_id, self.details),
        )


def _rebuild_service_error(
    cls: type[ServiceError],
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    ec: str | None,
    host_id: str | None,
    details: dict[str, str],
) -> ServiceError:
    return cls(status, code, message, request_id, ec=ec, host_id=host_id, details=details)


_HINTS = {
    "SignatureDoesNotMatch": "check the access key secret, the region and the system clock",
    "InvalidAccessKeyId": "check the access key id (OSS_ACCESS_KEY_ID)",
    "RequestTimeTooSkewed": "the local clock is off by more than 15 minutes; sync it",
    "NoSuchBucket": "check the bucket name and the endpoint's region",
    "SecurityTokenExpired": "the STS token expired; get a new one",
}


class CallbackError(ServiceError):
    """The object was stored, but the upload callback failed (HTTP 203 ``CallbackFailed``).

    The upload itself succeeded: ``result`` is the stored object's :class:`PutObjectResult`
    (etag, crc64, request id, version id).  ``code``/``message`` say why the callback failed,
    as OSS reported it (e.g. the callback server timed out or did not answer JSON).
    Catch it to go on without the callback::

        try:
            result = await bucket.put_object(key, data, callback=cb)
        except CallbackError as e:
            result = e.result   # stored; notify the application some other way
    """

    def __init__(
        self,
        status: int,
        code: str = "",
        message: str = "",
        request_id: str | None = None,
        *,
        result: PutObjectResult,
        ec: str | None = None,
        host_id: str | None = None,
        details: Mapping[str, str] | None = None,
    ) -> None:
        self.result = result
        super().__init__(
            status, code, message, request_id, ec=ec, host_id=host_id, details=details
        )

    def _summary(self) -> str:
        return f"object {self.result.key!r} was stored, but its upload callback failed: " + (
            super()._summary()
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_callback_error,
            (self.status, self.code, self.message, self.request_id, self.result, self.ec,
             self.host_id, self.details),
        )


def _rebuild_callback_error(
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    result: PutObjectResult,
    ec: str | None,
    host_id: str | None,
    details: dict[str, str],
) -> CallbackError:
    return CallbackError(
        status, code, message, request_id, result=result, ec=ec, host_id=host_id, details=details
    )


class RequestError(OSSError):
    """The request got no answer: connection refused/reset, DNS failure, or a timeout."""


class ClientError(OSSError):
    """This side refused or detected a problem (integrity, checkpoint, changed file...)."""


class InconsistentError(ClientError):
    """The CRC-64 OSS computed differs from the CRC-64 of the bytes that were sent."""

    def __init__(self, message: str, *, client_crc: int, server_crc: int,
                 request_id: str | None = None) -> None:
        self.client_crc = client_crc
        self.server_crc = server_crc
        self.request_id = request_id
        super().__init__(message)


    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_inconsistent_error,
            (str(self), self.client_crc, self.server_crc, self.request_id),
        )


def _rebuild_inconsistent_error(
    message: str, client_crc: int, server_crc: int, request_id: str | None
) -> InconsistentError:
    return InconsistentError(
        message, client_crc=client_crc, server_crc=server_crc, request_id=request_id
    )


class CheckpointError(ClientError):
    """A checkpoint file can't be used (corrupt, foreign, or from a newer version)."""


class FileChangedError(ClientError):
    """The source file changed between runs or while it was being uploaded."""


class ResponseError(ClientError):
    """The server answered with something OSS never sends (HTML, malformed XML, ...)."""


# --------------------------------------------------------------------------- parsing


def parse_error_xml(body: bytes) -> dict[str, str]:
    """Return every child of ``<Error>`` as ``{tag: text}``; ``{}`` if it isn't error XML."""
    if not body or len(body) > MAX_ERROR_BODY or b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        return {}  # OSS never sends a DTD: refuse entity expansion outright
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - stdlib expat: no external entities
    except (ElementTree.ParseError, ValueError):
        return {}
    if _local(root.tag) != "Error":
        return {}
    return {_local(child.tag): (child.text or "").strip() for child in root}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def decode_x_oss_err(value: str) -> dict[str, str]:
    """Decode the base64 error XML OSS puts in ``x-oss-err`` on bodiless (HEAD) errors."""
    try:
        raw = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        return {}
    return parse_error_xml(raw)


def make_service_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    result: PutObjectResult | None = None,
) -> ServiceError:
    """Map an OSS error response to the right :class:`ServiceError` subclass.

    ``headers`` must be case-insensitive (``httpx.Headers``) or lower-case keyed.
    A 203 with a ``result`` becomes :class:`CallbackError`.
    """
    fields = parse_error_xml(body)
    if not fields and headers.get("x-oss-err"):
        fields = decode_x_oss_err(headers["x-oss-err"])
    code = fields.get("Code", "")
    message = fields.get("Message", "")
    if not fields:
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = snippet if snippet and status != 203 else message
        if not code and status == 203:
            code = "CallbackFailed"
    request_id = fields.get("RequestId") or headers.get("x-oss-request-id")
    ec = fields.get("EC") or headers.get("x-oss-ec")
    host_id = fields.get("HostId")
    if status == 203 and result is not None:
        return CallbackError(
            status, code or "CallbackFailed", message, request_id,
            result=result, ec=ec, host_id=host_id, details=fields,
        )
    return ServiceError(
        status, code, message, request_id, ec=ec, host_id=host_id, details=fields
    )
