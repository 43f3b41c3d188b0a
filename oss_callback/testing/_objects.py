"""The emulator's object operations: PutObject, GetObject (ranges, conditions, response
header overrides), HeadObject, DeleteObject and DeleteMultipleObjects."""

from __future__ import annotations

import hashlib
import itertools
import re
from email.utils import parsedate_to_datetime

from oss_callback.testing._errors import OSSErrorResponse
from oss_callback.testing._formats import (
    MAX_XML_BODY,
    encoder,
    http_date,
    malformed,
    parse_xml,
    quote_etag,
    xml_ok,
    xml_text,
)
from oss_callback.testing._request import Request, Response, bucket_key
from oss_callback.testing._state import EmulatorState
from oss_callback.testing._stored import StoredObject
from oss_callback.testing._uploads import (
    MAX_PUT_SIZE,
    callback_config,
    check_overwrite,
    check_size,
    commit_normal,
    expected_md5,
    finish_upload,
    receive_body,
    upload_metadata,
)

__all__ = ["HANDLERS", "object_or_404", "parse_range"]

_RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a satisfiable single range; ``None`` to ignore it.

    Raises:
        OSSErrorResponse: 416 ``InvalidRange`` when the start is past the end.
    """
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if match is None:
        return None  # malformed / multi-range: OSS ignores it and sends the whole object
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            return None
        return max(0, size - suffix), size - 1
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        return None
    if start >= size:
        raise OSSErrorResponse(
            416,
            "InvalidRange",
            "The requested range cannot be satisfied",
            [("RangeRequested", value.strip()), ("ActualObjectSize", str(size))],
            [("Content-Range", f"bytes */{size}")],
        )
    return start, min(end, size - 1)


def object_or_404(state: EmulatorState, req: Request) -> StoredObject:
    """The object the request names (404 ``NoSuchKey`` if there is none)."""
    bucket, key = bucket_key(req)
    obj = state.store.get(bucket, key)
    if obj is None:
        raise OSSErrorResponse(
            404, "NoSuchKey", "The specified key does not exist.", [("Key", key)]
        )
    return obj


async def put_object(state: EmulatorState, req: Request) -> Response:
    """PutObject: ``PUT /key`` with the body (and maybe a callback)."""
    bucket, key = bucket_key(req)
    config = callback_config(req)  # validated before anything is stored
    md5_given = expected_md5(req.headers)
    declared = check_size(req.headers, MAX_PUT_SIZE)
    check_overwrite(state, req, bucket, key)
    content_type, metadata, stored = upload_metadata(key, req.headers)
    temp, size, md5, crc = await receive_body(state, req, md5_given, declared)
    obj, headers = commit_normal(
        state, bucket, key, temp, size, md5, crc, (content_type, metadata, stored)
    )
    if obj.content_md5 is not None:
        headers.append(("Content-MD5", obj.content_md5))
    return await finish_upload(state, req, obj, config, headers, b"", None)


def _object_headers(obj: StoredObject) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", obj.content_type),
        ("ETag", quote_etag(obj.etag)),
        ("Last-Modified", http_date(obj.last_modified)),
        ("Accept-Ranges", "bytes"),
        ("x-oss-object-type", obj.object_type),
        ("x-oss-storage-class", "Standard"),
        ("x-oss-hash-crc64ecma", str(obj.crc64)),
    ]
    if obj.content_md5:
        headers.append(("Content-MD5", obj.content_md5))
    if obj.object_type == "Appendable":
        headers.append(("x-oss-next-append-position", str(obj.size)))
    headers.extend(obj.headers.items())
    headers.extend(obj.metadata.items())
    return headers


def _check_conditions(req: Request, obj: StoredObject) -> Response | None:
    etag = quote_etag(obj.etag)
    h = req.headers
    if "if-match" in h and h["if-match"].strip() not in (etag, obj.etag, "*"):
        raise OSSErrorResponse(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold.",
            [("Condition", "If-Match")],
        )
    if "if-none-match" in h and h["if-none-match"].strip() in (etag, obj.etag, "*"):
        return Response(status=304, headers=[("ETag", etag)])
    for name, newer in (("if-unmodified-since", False), ("if-modified-since", True)):
        if name not in h:
            continue
        try:
            when = parsedate_to_datetime(h[name]).timestamp()
        except (TypeError, ValueError):
            continue
        modified = int(obj.last_modified) > when
        if newer and not modified:
            return Response(status=304, headers=[("ETag", etag)])
        if not newer and modified:
            raise OSSErrorResponse(
                412,
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold.",
                [("Condition", "If-Unmodified-Since")],
            )
    return None


async def get_object(state: EmulatorState, req: Request) -> Response:
    """GetObject: the bytes (a ``Range`` of them), streamed from the files they are in."""
    obj = object_or_404(state, req)
    not_modified = _check_conditions(req, obj)
    if not_modified is not None:
        return not_modified
    headers = _object_headers(obj)
    overrides = {
        header: req.q[param] for param, header in _RESPONSE_OVERRIDES.items() if param in req.q
    }
    if overrides:
        headers = [(k, v) for k, v in headers if k.lower() not in overrides]
        headers.extend(overrides.items())
    status, start, length = 200, 0, obj.size
    if "range" in req.headers:
        span = parse_range(req.headers["range"], obj.size)
        if span is not None:
            status, start, length = 206, span[0], span[1] - span[0] + 1
            headers.append(("Content-Range", f"bytes {span[0]}-{span[1]}/{obj.size}"))
    try:
        stream = state.store.read(obj, start, length)
        first = next(stream, b"")
    except FileNotFoundError:  # overwritten/deleted between lookup and open
        raise OSSErrorResponse(
            404, "NoSuchKey", "The specified key does not exist.", [("Key", obj.key)]
        ) from None
    return Response(
        status=status,
        headers=headers,
        length=length,
        stream=itertools.chain((first,), stream),
    )


async def head_object(state: EmulatorState, req: Request) -> Response:
    """HeadObject: GetObject's headers (and conditions), no body."""
    obj = object_or_404(state, req)
    not_modified = _check_conditions(req, obj)
    if not_modified is not None:
        return not_modified
    return Response(status=200, headers=_object_headers(obj), length=obj.size, stream=iter(()))


async def delete_object(state: EmulatorState, req: Request) -> Response:
    """DeleteObject: 204 whether or not there was an object."""
    bucket, key = bucket_key(req)
    state.store.delete(bucket, key)
    return Response(status=204)


async def delete_multiple_objects(state: EmulatorState, req: Request) -> Response:
    """DeleteMultipleObjects: ``POST /?delete`` with a ``<Delete>`` document (and its MD5)."""
    assert req.bucket is not None
    enc, enc_xml = encoder(req.q)
    md5_given = expected_md5(req.headers)
    body = await req.read_body(MAX_XML_BODY)
    if md5_given is not None and hashlib.md5(body).digest() != md5_given:  # noqa: S324
        raise OSSErrorResponse(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")
    root = parse_xml(body, "Delete")
    if md5_given is None:  # OSS requires it for this request (EC 0016-00000606)
        raise OSSErrorResponse(
            400, "InvalidRequest", "Missing required header for this request: Content-MD5."
        )
    quiet = (root.findtext("Quiet") or "").strip().lower() == "true"
    keys = [node.findtext("Key") for node in root.findall("Object")]
    if not keys or len(keys) > 1000 or any(not k for k in keys):
        raise malformed()
    deleted = ""
    for key in keys:
        assert key is not None
        state.store.delete(req.bucket, key)
        if not quiet:
            deleted += f"  <Deleted><Key>{xml_text(enc(key))}</Key></Deleted>\n"
    return xml_ok("DeleteResult", enc_xml + deleted)


HANDLERS = {
    "PutObject": put_object,
    "GetObject": get_object,
    "HeadObject": head_object,
    "DeleteObject": delete_object,
    "DeleteMultipleObjects": delete_multiple_objects,
}
