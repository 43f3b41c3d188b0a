"""OSS's answers read into results (:class:`PutObjectResult`, :class:`HeadObjectResult`,
times), and the checks that an answer comes from OSS at all (an ETag, a request id): what
the families of bucket operations share when they read an answer.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import httpx

from oss_callback.client._http import parse_crc
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._error_answers import callback_failure_hint, make_service_error
from oss_callback.protocol._errors import OSSError, ResponseError
from oss_callback.protocol._models import HeadObjectResult, PutObjectResult
from oss_callback.protocol._redact import Redact
from oss_callback.protocol._xml import strip_etag

__all__ = [
    "head_result",
    "on_203",
    "parse_time",
    "put_result",
    "require_etag",
    "require_oss",
]


def on_203(key: str, callback: Callback, *, upload_id: str | None = None,
           size: int | None = None) -> Any:
    def build(response: httpx.Response, data: bytes, redact: Redact) -> OSSError:
        result = put_result(key, response, None, callback_status=203, upload_id=upload_id,
                            size=size, redact=redact)
        return make_service_error(
            203, response.headers, data, result=result, redact=redact,
            callback_hint=lambda message: callback_failure_hint(
                callback.url, callback.sends_sni, message),
        )

    return build


def require_etag(response: httpx.Response, what: str, redact: Redact) -> None:
    if not response.headers.get("etag"):
        content_type = redact(response.headers.get("content-type", "no content type"))
        raise ResponseError(
            f"the {what} answer has no ETag (HTTP {response.status_code}, "
            f"{content_type[:100]}): is the endpoint really OSS?"
        )


def require_oss(response: httpx.Response, what: str) -> None:
    if not response.headers.get("etag") and not response.headers.get("x-oss-request-id"):
        raise ResponseError(
            f"the {what} answer has neither ETag nor x-oss-request-id: is the endpoint "
            "really OSS?"
        )


def put_result(
    key: str,
    response: httpx.Response,
    callback_body: bytes | None,
    *,
    callback_status: int | None,
    upload_id: str | None = None,
    size: int | None = None,
    etag: str | None = None,
    redact: Redact | None = None,
) -> PutObjectResult:
    h = response.headers

    def text(name: str) -> str | None:
        value = h.get(name)
        return redact(value) if value and redact is not None else value

    return PutObjectResult(
        key=key,
        etag=etag or strip_etag(text("etag")),
        crc64=parse_crc(h.get("x-oss-hash-crc64ecma")),
        request_id=text("x-oss-request-id"),
        version_id=text("x-oss-version-id"),
        callback_status=callback_status,
        callback_body=callback_body,
        upload_id=upload_id,
        size=size,
    )


def head_result(key: str, headers: httpx.Headers, size: int | None = None) -> HeadObjectResult:
    return HeadObjectResult(
        key=key,
        size=size if size is not None else int(headers.get("content-length", "0")),
        etag=strip_etag(headers.get("etag")),
        crc64=parse_crc(headers.get("x-oss-hash-crc64ecma")),
        content_type=headers.get("content-type"),
        last_modified=headers.get("last-modified"),
        version_id=headers.get("x-oss-version-id"),
        request_id=headers.get("x-oss-request-id"),
        object_type=headers.get("x-oss-object-type"),
        metadata={k[len("x-oss-meta-"):]: v for k, v in headers.items()
                  if k.lower().startswith("x-oss-meta-")},
        headers=dict(headers.items()),
    )


def parse_time(value: str, what: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ResponseError(f"the {what} response has a bad time {value[:40]!r}") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)
