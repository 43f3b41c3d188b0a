"""The emulator's PostObject: a browser form upload (``POST /`` on the bucket,
``multipart/form-data``): the fields and their signed policy first (``_post``,
``_auth.authenticate_post``), then the file, streamed to disk; the answer is chosen by
``success_action_status`` or a ``callback`` field."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote
from xml.sax.saxutils import escape

from oss_callback.testing._auth import authenticate_post
from oss_callback.testing._callbacks import parse_callback
from oss_callback.testing._errors import OSSErrorResponse
from oss_callback.testing._formats import invalid_argument, quote_etag
from oss_callback.testing._post import MAX_FIELD_BYTES, FormReader, boundary_of, check_policy
from oss_callback.testing._request import Request, Response
from oss_callback.testing._routing import check_key
from oss_callback.testing._state import EmulatorState
from oss_callback.testing._uploads import (
    MAX_PUT_SIZE,
    STORED_HEADERS,
    check_size,
    commit_normal,
    finish_upload,
    sink,
    upload_metadata,
)

__all__ = ["HANDLERS", "POST_FORM_OVERHEAD"]

#: What a PostObject form may add to its file: the fields, boundaries and part headers.
POST_FORM_OVERHEAD = MAX_FIELD_BYTES + 64 * 1024


async def post_object(state: EmulatorState, req: Request) -> Response:
    """A browser form upload: fields, a signed policy, then the file (streamed)."""
    bucket = req.bucket
    assert bucket is not None
    # The file may be up to 5 GB, as for PutObject; the fields come on top.
    declared = check_size(req.headers, MAX_PUT_SIZE + POST_FORM_OVERHEAD)
    form = FormReader(req.body_chunks(), boundary_of(req.headers.get("content-type", "")))
    try:
        fields = await form.fields()
        authenticate_post(fields, state.credentials, region=state.region)
        length_range = check_policy(fields["policy"], fields, bucket)
        key = fields.get("key", "")
        if not key:
            raise invalid_argument("The key form field is missing or empty.", "key", "")
        key = key.replace("${filename}", form.filename or "")
        check_key(key)
        variables = {k: v for k, v in fields.items() if k.startswith("x:")}
        config = parse_callback(
            fields.get("callback"),
            base64.b64encode(json.dumps(variables).encode()).decode()
            if variables and "callback" in fields
            else None,
            None,
            None,
        )
    except OSSErrorResponse:
        await req.drain()
        raise
    given = {k: v for k, v in fields.items() if k in STORED_HEADERS or k.startswith("x-oss-meta-")}
    if "content-type" in fields or form.file_content_type:
        given["content-type"] = fields.get("content-type") or form.file_content_type or ""
    content_type, metadata, stored = upload_metadata(key, given)
    path, size, md5, crc = await sink(state, form.file_chunks(), declared, state.etag_mode == "md5")
    if size > MAX_PUT_SIZE:
        path.unlink(missing_ok=True)
        raise OSSErrorResponse(
            400,
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size.",
            [("ProposedSize", str(size)), ("MaxSizeAllowed", str(MAX_PUT_SIZE))],
        )
    if length_range is not None and not length_range[0] <= size <= length_range[1]:
        path.unlink(missing_ok=True)
        small = size < length_range[0]
        low, high = length_range
        bound = ("MinSizeAllowed", low) if small else ("MaxSizeAllowed", high)
        raise OSSErrorResponse(
            400,
            "EntityTooSmall" if small else "EntityTooLarge",
            f"Your proposed upload is {'smaller' if small else 'larger'} than the policy's "
            "content-length-range allows.",
            [("ProposedSize", str(size)), (bound[0], str(bound[1]))],
        )
    obj, headers = commit_normal(
        state, bucket, key, path, size, md5, crc, (content_type, metadata, stored)
    )
    if config is not None:
        return await finish_upload(state, req, obj, config, headers, b"", None)
    status = fields.get("success_action_status", "")
    if status == "200":
        return Response(status=200, headers=headers)
    if status == "201":
        location = f"{state.endpoint}/{bucket}/{quote(key)}"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse>'
            f"<Bucket>{escape(bucket)}</Bucket><Location>{escape(location)}</Location>"
            f"<Key>{escape(key)}</Key><ETag>{escape(quote_etag(obj.etag))}</ETag>"
            "</PostResponse>"
        ).encode()
        headers.append(("Content-Type", "application/xml"))
        return Response(status=201, headers=headers, body=body)
    return Response(status=204, headers=headers)


HANDLERS = {"PostObject": post_object}
