"""OSS error answers: the exception handlers raise, and its XML rendering."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from xml.sax.saxutils import escape

__all__ = ["EC_CODES", "OSSErrorResponse", "error_xml", "x_oss_err"]

#: ``x-oss-ec`` values. Those marked "docs" come from OSS documentation/SDK tests; the
#: others are plausible values chosen by the emulator (OSS does not publish a full table).
EC_CODES: dict[str, str] = {
    "InvalidAccessKeyId": "0002-00000902",  # docs (alibabacloud-oss-v2 test_client.py)
    "SecurityTokenExpired": "0002-00000007",  # docs (help.aliyun.com/.../0002-00000007)
    "SignatureDoesNotMatch": "0002-00000040",
    "RequestTimeTooSkewed": "0002-00000504",
    "AccessDenied": "0003-00000001",
    "InvalidArgument": "0016-00000001",
    "NoSuchBucket": "0015-00000101",
    "BucketNotEmpty": "0015-00000301",
    "InvalidBucketName": "0015-00000001",
    "NoSuchKey": "0026-00000001",
    "InvalidObjectName": "0016-00000005",
    "InvalidDigest": "0016-00000602",
    "EntityTooLarge": "0016-00000601",
    "NoSuchUpload": "0042-00000002",
    "InvalidPart": "0042-00000303",
    "InvalidPartOrder": "0042-00000301",
    "EntityTooSmall": "0042-00000302",
    "MalformedXML": "0042-00000201",
    "InvalidRange": "0026-00000008",
    "FileAlreadyExists": "0026-00000010",
    "CallbackFailed": "0007-00000203",
    "NotImplemented": "0001-00000001",
    "InternalError": "0001-00000002",
    "ServiceUnavailable": "0001-00000003",
    "MethodNotAllowed": "0001-00000004",
}


class OSSErrorResponse(Exception):
    """Raised by request handlers to answer an OSS error.

    Args:
        status: HTTP status.
        code: OSS error code, e.g. ``NoSuchKey``.
        message: Human-readable message.
        extra: Additional ``<Error>`` children, in order, e.g. ``[("Key", "a/b")]``.
        headers: Additional response headers.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        extra: Sequence[tuple[str, str]] = (),
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = list(extra)
        self.headers = list(headers)

    @property
    def ec(self) -> str:
        """The ``x-oss-ec`` value for this error."""
        return EC_CODES.get(self.code, "0001-00000000")


def _text(value: str) -> str:
    # XML 1.0 cannot carry most control characters even escaped; OSS would not either.
    cleaned = "".join(c if c >= " " or c in "\t\n\r" else f"\\x{ord(c):02x}" for c in value)
    return escape(cleaned)


def error_xml(error: OSSErrorResponse, request_id: str, host_id: str) -> bytes:
    """The ``<Error>`` document, in OSS's element order."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n',
        f"  <Code>{_text(error.code)}</Code>\n",
        f"  <Message>{_text(error.message)}</Message>\n",
        f"  <RequestId>{request_id}</RequestId>\n",
        f"  <HostId>{_text(host_id)}</HostId>\n",
    ]
    parts.extend(f"  <{name}>{_text(value)}</{name}>\n" for name, value in error.extra)
    parts.append(f"  <EC>{error.ec}</EC>\n")
    parts.append(
        f"  <RecommendDoc>https://api.aliyun.com/troubleshoot?q={error.ec}</RecommendDoc>\n"
    )
    parts.append("</Error>\n")
    return "".join(parts).encode()


def x_oss_err(body: bytes) -> str:
    """The ``x-oss-err`` header value of a HEAD error: the error XML, base64."""
    return base64.b64encode(body).decode()
