"""What every upload shares (PutObject, PostObject, UploadPart, AppendObject, Complete):
the stored metadata, ``Content-MD5`` and size checks, streaming the body to disk, the ETag,
and the upload callback that decides the answer."""

from __future__ import annotations

import base64
import binascii
import mimetypes
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from oss_callback.testing._body_sink import BodySink
from oss_callback.testing._callback_send import send_callback
from oss_callback.testing._callbacks import (
    CallbackConfig,
    parse_callback,
    render_body,
    system_variables,
)
from oss_callback.testing._errors import OSSErrorResponse
from oss_callback.testing._formats import invalid_argument, quote_etag
from oss_callback.testing._records import CallbackRecord
from oss_callback.testing._request import Request, Response, error_response
from oss_callback.testing._routing import PUBLIC_KEY_PATH
from oss_callback.testing._state import EmulatorState
from oss_callback.testing._stored import StoredObject

__all__ = [
    "MAX_PUT_SIZE",
    "STORED_HEADERS",
    "callback_config",
    "check_overwrite",
    "check_size",
    "commit_normal",
    "etag_digest",
    "expected_md5",
    "finish_upload",
    "receive_body",
    "sink",
    "upload_metadata",
]

MAX_PUT_SIZE = 5 * 1024**3
#: The request headers an object keeps and sends back on GET.
STORED_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
)


def upload_metadata(
    key: str, headers: Mapping[str, str]
) -> tuple[str, dict[str, str], dict[str, str]]:
    """``(content type, x-oss-meta-* headers, other stored headers)`` of an upload."""
    # Like OSS: without a Content-Type, guess one from the key's extension.
    content_type = (
        headers.get("content-type")
        or mimetypes.guess_type(key.rpartition("/")[2], strict=False)[0]
        or "application/octet-stream"
    )
    metadata = {k: v for k, v in headers.items() if k.startswith("x-oss-meta-")}
    stored = {k: headers[k] for k in STORED_HEADERS if k in headers}
    return content_type, metadata, stored


def expected_md5(headers: Mapping[str, str]) -> bytes | None:
    """The digest a ``Content-MD5`` header announces (400 ``InvalidDigest`` if malformed)."""
    value = headers.get("content-md5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise OSSErrorResponse(
            400,
            "InvalidDigest",
            "The Content-MD5 you specified was invalid.",
            [("Content-MD5", value)],
        )
    return digest


def check_size(headers: Mapping[str, str], limit: int) -> int | None:
    """The announced ``Content-Length`` (``None`` if chunked); 400 past ``limit``."""
    value = headers.get("content-length")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()):
        raise invalid_argument("Invalid Content-Length.", "Content-Length", value)
    if int(value) > limit:
        raise OSSErrorResponse(
            400,
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size.",
            [("ProposedSize", value), ("MaxSizeAllowed", str(limit))],
        )
    return int(value)


def check_overwrite(state: EmulatorState, req: Request, bucket: str, key: str) -> None:
    """``x-oss-forbid-overwrite: true`` and the object exists: 409 FileAlreadyExists."""
    forbid = req.headers.get("x-oss-forbid-overwrite", "").lower() == "true"
    if forbid and state.store.get(bucket, key) is not None:
        raise OSSErrorResponse(
            409,
            "FileAlreadyExists",
            "The object you specified already exists and can not be overwritten.",
            [("Key", key)],
        )


async def receive_body(
    state: EmulatorState, req: Request, expected_md5: bytes | None, declared: int | None
) -> tuple[Path, int, bytes | None, int]:
    """Stream the body to a temp file; returns (path, size, md5, crc).

    The MD5 is computed (and a ``Content-MD5`` verified) in the default ETag mode and
    whenever the client sent ``Content-MD5``; otherwise (``etag="fast"``) it is ``None``.
    """
    want_md5 = state.etag_mode == "md5" or expected_md5 is not None
    path, size, md5, crc = await sink(state, req.body_chunks(), declared, want_md5)
    if declared is not None and size != declared:
        path.unlink(missing_ok=True)
        raise OSSErrorResponse(
            400, "IncompleteBody", "You did not provide the number of bytes specified."
        )
    if expected_md5 is not None and md5 != expected_md5:
        path.unlink(missing_ok=True)
        raise OSSErrorResponse(
            400,
            "InvalidDigest",
            "The Content-MD5 you specified was invalid.",
            [("Content-MD5", base64.b64encode(expected_md5).decode())],
        )
    return path, size, md5, crc


async def sink(
    state: EmulatorState, chunks: AsyncIterator[bytes], size_hint: int | None, want_md5: bool
) -> tuple[Path, int, bytes | None, int]:
    """Stream ``chunks`` to a temp file: ``(path, size, md5 or None, crc)``; on any
    failure the file is deleted."""
    body = BodySink(state.store.temp_path(size_hint), md5=want_md5)
    try:
        async for chunk in chunks:
            await body.write(chunk)
        size, md5, crc = await body.finish()
    except BaseException:
        await body.abort()
        raise
    return body.path, size, md5, crc


def etag_digest(md5: bytes | None, crc: int, size: int) -> bytes:
    """The 16 bytes behind an ETag: the MD5, or (``etag="fast"``, no MD5 computed)
    the CRC-64 and the size, big-endian: cheap, and as unique as the CRC-64."""
    if md5 is not None:
        return md5
    return crc.to_bytes(8, "big") + size.to_bytes(8, "big")


def commit_normal(
    state: EmulatorState,
    bucket: str,
    key: str,
    temp: Path,
    size: int,
    md5: bytes | None,
    crc: int,
    meta: tuple[str, dict[str, str], dict[str, str]],
) -> tuple[StoredObject, list[tuple[str, str]]]:
    """Store a received body as a Normal object; returns it and its ETag/CRC headers."""
    content_type, metadata, stored = meta
    obj = state.store.commit_object(
        bucket=bucket,
        key=key,
        temp=temp,
        size=size,
        etag=etag_digest(md5, crc, size).hex().upper(),
        crc=crc,
        content_md5=base64.b64encode(md5).decode() if md5 is not None else None,
        content_type=content_type,
        metadata=metadata,
        headers=stored,
        object_type="Normal",
    )
    return obj, [("ETag", quote_etag(obj.etag)), ("x-oss-hash-crc64ecma", str(crc))]


def callback_config(req: Request) -> CallbackConfig | None:
    """The upload's callback (header or query), validated; ``None`` without one."""
    return parse_callback(
        req.headers.get("x-oss-callback"),
        req.headers.get("x-oss-callback-var"),
        req.q.get("callback"),
        req.q.get("callback-var"),
    )


async def finish_upload(
    state: EmulatorState,
    req: Request,
    obj: StoredObject,
    config: CallbackConfig | None,
    headers: list[tuple[str, str]],
    body: bytes,
    content_type: str | None,
) -> Response:
    """The answer to a stored upload: without a callback, ``body``; with one, the callback
    server's JSON, or 203 ``CallbackFailed`` (the object stays stored either way)."""
    if config is None:
        if content_type:
            headers.append(("Content-Type", content_type))
        return Response(status=200, headers=headers, body=body)
    system = system_variables(
        bucket=obj.bucket,
        key=obj.key,
        etag=obj.etag,
        size=obj.size,
        mime_type=obj.content_type,
        crc64=obj.crc64,
        content_md5=obj.content_md5 or "",
        operation=req.operation,
        request_id=req.request_id,
        client_ip=req.client_ip,
    )
    callback_body = render_body(config, system)
    outcomes = await send_callback(
        state.callback_client(),
        config,
        callback_body,
        state.endpoint + PUBLIC_KEY_PATH,
        state.callback_timeout,
    )
    state.record_callbacks(
        CallbackRecord(
            url=o.url,
            headers=o.headers,
            body=o.body,
            status=o.status,
            response_body=o.response_body,
            error=o.error,
            request_id=req.request_id,
        )
        for o in outcomes
    )
    last = outcomes[-1]
    if last.error is None:
        headers.append(("Content-Type", "application/json"))
        return Response(status=200, headers=headers, body=last.response_body or b"")
    failed = OSSErrorResponse(203, "CallbackFailed", last.error)
    error = error_response(req, failed)
    error.headers.extend(headers)
    return error
