"""The exception tree. Every error this package raises on purpose derives from OSSError::

    OSSError                      the one root
    ├── ServiceError              OSS answered with an error (status, code, message, request id, ec)
    │   └── CallbackError         HTTP 203 CallbackFailed: the object IS stored; .result has it
    ├── RequestError              the request never got an answer (connect/read/write, timeout)
    └── ClientError               this side refused or detected a problem
        ├── InconsistentError     CRC-64 of what OSS stored != CRC-64 of what was sent
        ├── CheckpointError       an unusable checkpoint file (corrupt, foreign, newer version)
        ├── FileChangedError      the source file changed between runs or during the upload
        ├── ResponseError         the server's answer is not what OSS sends (e.g. HTML, bad XML)
        ├── CallbackUnknownError  stored, but a lost answer hid whether the callback succeeded
        └── ObjectTooLargeError   get_object refused an object over its max_size (memory)

Argument errors are plain ``ValueError``/``TypeError`` raised before any request is made.
HTTP status and OSS error codes are mapped to classes in one place:
:func:`~oss_callback.protocol._error_answers.make_service_error`. No secret reaches an
error: every text taken from an answer is cleaned by a
:class:`~oss_callback.protocol._redact.Redactor` before a message is built from it.

Every exception with fields of its own pickles with them (``__reduce__`` -> a module-level
``_rebuild_*`` here, which pickles name: keep them beside their classes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from oss_callback.protocol._models import PutObjectResult

__all__ = [
    "CallbackError",
    "CallbackUnknownError",
    "CheckpointError",
    "ClientError",
    "FileChangedError",
    "InconsistentError",
    "OSSError",
    "ObjectTooLargeError",
    "RequestError",
    "ResponseError",
    "ServiceError",
]


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
        hint: what to do about it, when the SDK can tell (e.g. the endpoint a redirect
            names), or ``None``; ``str(error)`` ends with it.
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
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.ec = ec
        self.host_id = host_id
        self.details: dict[str, str] = dict(details or {})
        self.hint = hint
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
        hint = self.hint or _HINTS.get(self.code)
        if hint:
            text += f" - {' '.join(hint.split())}"
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
             self.host_id, self.details, self.hint),
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
    hint: str | None = None,
) -> ServiceError:
    return cls(status, code, message, request_id, ec=ec, host_id=host_id, details=details,
               hint=hint)


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
        hint: str | None = None,
    ) -> None:
        self.result = result
        super().__init__(
            status, code, message, request_id, ec=ec, host_id=host_id, details=details,
            hint=hint,
        )

    def _summary(self) -> str:
        return f"object {self.result.key!r} was stored, but its upload callback failed: " + (
            super()._summary()
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_callback_error,
            (self.status, self.code, self.message, self.request_id, self.result, self.ec,
             self.host_id, self.details, self.hint),
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
    hint: str | None = None,
) -> CallbackError:
    return CallbackError(
        status, code, message, request_id, result=result, ec=ec, host_id=host_id,
        details=details, hint=hint,
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


class CallbackUnknownError(ClientError):
    """The object is stored, but whether its upload callback succeeded is unknown.

    ``resumable_upload`` with a callback raises it when a CompleteMultipartUpload succeeded
    but its answer was lost: a previous run was killed or cut off during it (found on the
    rerun), or a retried Complete found its first attempt had gone through. OSS ran the
    callback then (or tried: a failed callback still stores the object, HTTP 203), and only
    the lost answer said how it went. The callback is not fired again (the object is not
    uploaded again either). ``result`` describes the stored
    object (``recovered=True``, ``callback_status=None``). Handle it like
    :class:`CallbackError`: the upload is done, make sure the application learns of it::

        try:
            result = await bucket.resumable_upload(key, path, callback=cb)
        except (CallbackError, CallbackUnknownError) as e:
            result = e.result   # stored; tell the application yourself (idempotently)
    """

    def __init__(self, message: str, *, result: PutObjectResult) -> None:
        self.result = result
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_callback_unknown_error, (str(self), self.result))


def _rebuild_callback_unknown_error(message: str, result: PutObjectResult) -> CallbackUnknownError:
    return CallbackUnknownError(message, result=result)


class ObjectTooLargeError(ClientError):
    """``get_object`` refused an object bigger than its ``max_size`` (it reads into memory).

    Raised as soon as the answer's ``Content-Length`` says so (nothing of the body is read),
    or, without one, once more than ``max_size`` bytes have arrived (the rest is not read).
    Stream big objects to disk with ``get_object_to_file(key, path)`` instead, or pass a
    larger ``max_size=`` (``None``: no limit).

    Attributes:
        key: the object key.
        size: the size the server announced, or (without ``Content-Length``) the bytes
            received when reading stopped: the object is at least that big.
        max_size: the limit that was exceeded.
    """

    def __init__(self, message: str, *, key: str, size: int, max_size: int) -> None:
        self.key = key
        self.size = size
        self.max_size = max_size
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_too_large, (str(self), self.key, self.size, self.max_size))


def _rebuild_too_large(message: str, key: str, size: int, max_size: int) -> ObjectTooLargeError:
    return ObjectTooLargeError(message, key=key, size=size, max_size=max_size)
