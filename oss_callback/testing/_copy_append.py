"""The emulator's CopyObject, UploadPartCopy and AppendObject: objects made from stored bytes.

As on OSS (API reference: CopyObject, UploadPartCopy, AppendObject):

* ``x-oss-copy-source: /bucket/key`` (the key URL-encoded; ``?versionId=`` only ``null``
  here: the emulator keeps no versions), conditions ``x-oss-copy-source-if-match``,
  ``-if-none-match`` (304), ``-if-unmodified-since`` (412), ``-if-modified-since`` (304).
* CopyObject copies objects up to 1 GiB (``EntityTooLarge`` beyond: use UploadPartCopy);
  ``x-oss-metadata-directive`` ``COPY`` (default) keeps the source's metadata, ``REPLACE``
  takes the request's; a copy onto itself only updates the metadata (no bytes copied) and
  always takes the request's, whatever the directive. The copy keeps the source's ETag and
  CRC-64 (an appendable source becomes a normal object).
* UploadPartCopy copies ``x-oss-copy-source-range: bytes=first-last`` (or the whole
  source) into a part of a multipart upload: the part's ETag is the MD5 of those bytes.
* AppendObject (``POST ?append&position=N``): ``position`` must be the object's length
  (0 for a new one; 409 ``PositionNotEqualToLength`` with ``x-oss-next-append-position``),
  only appendable objects grow (409 ``ObjectNotAppendable``); the answer carries
  ``x-oss-next-append-position`` and the whole object's CRC-64 (the previous one combined
  with the appended bytes'); metadata counts on the first append only; appending 0 bytes
  changes nothing. At most 5 GiB in all.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote_to_bytes

from oss_callback.protocol._crc64 import crc64, crc64_combine
from oss_callback.testing._errors import OSSErrorResponse
from oss_callback.testing._formats import XML_CONTENT_TYPE, invalid_argument, iso
from oss_callback.testing._multipart import part_number, upload_or_404
from oss_callback.testing._request import Request, Response, bucket_key
from oss_callback.testing._routing import check_key
from oss_callback.testing._state import EmulatorState
from oss_callback.testing._store import Store
from oss_callback.testing._stored import StoredObject
from oss_callback.testing._uploads import (
    MAX_PUT_SIZE,
    check_overwrite,
    check_size,
    etag_digest,
    expected_md5,
    receive_body,
    upload_metadata,
)

__all__ = ["HANDLERS", "MAX_COPY_SIZE"]

#: CopyObject's limit; larger objects are copied with UploadPartCopy.
MAX_COPY_SIZE = 1024**3
MAX_APPEND_SIZE = 5 * 1024**3
_CHUNK = 1 << 20
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d+)\s*-\s*(\d+)\s*")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")


def _bad_source(value: str) -> OSSErrorResponse:
    return OSSErrorResponse(
        400,
        "InvalidArgument",
        "Copy Source must mention the source bucket and key: /sourcebucket/sourcekey.",
        [("ArgumentName", "x-oss-copy-source"), ("ArgumentValue", value)],
    )


def _source(state: EmulatorState, req: Request) -> tuple[StoredObject, bool]:
    """The object ``x-oss-copy-source`` names, and whether its conditions answer 304 Not
    Modified (412 is raised)."""
    raw = req.headers.get("x-oss-copy-source", "")
    path, _, query = raw.partition("?")
    bucket, _, encoded = path.removeprefix("/").partition("/")
    try:
        key = unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_source(raw) from None
    if not _BUCKET.fullmatch(bucket) or not key:
        raise _bad_source(raw)
    check_key(key)
    version = parse_qs(query).get("versionId")
    if version and version[0] != "null":
        raise OSSErrorResponse(
            404, "NoSuchVersion", "The specified version does not exist.",
            [("VersionId", version[0])],
        )
    if not state.store.bucket_exists(bucket):
        raise OSSErrorResponse(
            404, "NoSuchBucket", "The specified bucket does not exist.", [("BucketName", bucket)]
        )
    obj = state.store.get(bucket, key)
    if obj is None:
        raise OSSErrorResponse(
            404, "NoSuchKey", "The specified key does not exist.", [("Key", key)]
        )
    return obj, _check_source_conditions(req.headers, obj)


def _when(value: str) -> float | None:
    """An HTTP date or an ISO 8601 time (both are seen in OSS docs), as Unix time."""
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        pass
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _check_source_conditions(headers: Mapping[str, str], obj: StoredObject) -> bool:
    etags = (obj.etag, f'"{obj.etag}"')
    prefix = "x-oss-copy-source-"
    failed: str | None = None
    not_modified = False
    if prefix + "if-match" in headers and headers[prefix + "if-match"].strip() not in etags:
        failed = "If-Match"
    if prefix + "if-none-match" in headers and headers[prefix + "if-none-match"].strip() in etags:
        not_modified = True
    when = _when(headers.get(prefix + "if-unmodified-since", ""))
    if when is not None and int(obj.last_modified) > when:
        failed = failed or "If-Unmodified-Since"
    when = _when(headers.get(prefix + "if-modified-since", ""))
    if when is not None and int(obj.last_modified) <= when:
        not_modified = True
    if failed is not None:
        raise OSSErrorResponse(
            412,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold.",
            [("Condition", f"x-oss-copy-source-{failed.lower()}")],
        )
    return not_modified


def _copy_range(
    store: Store, obj: StoredObject, start: int, length: int, want_md5: bool,
    tail: Path | None = None,
) -> tuple[Path, bytes | None, int]:
    """``length`` bytes of ``obj`` from ``start`` (then the file ``tail``, if given) into a
    new temp file: ``(path, md5 or None, crc of obj's range)``, in a worker thread.

    Raises:
        FileNotFoundError: ``obj`` was overwritten or deleted meanwhile.
    """
    path = store.temp_path(length)
    md5 = hashlib.md5() if want_md5 else None  # noqa: S324 - OSS's ETag is an MD5
    crc = 0
    try:
        with open(path, "wb") as out:
            for chunk in store.read(obj, start, length):
                out.write(chunk)
                crc = crc64(chunk, crc)
                if md5 is not None:
                    md5.update(chunk)
            if tail is not None:
                with open(tail, "rb") as f:
                    while chunk := f.read(_CHUNK):
                        out.write(chunk)
                        if md5 is not None:
                            md5.update(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, None if md5 is None else md5.digest(), crc


async def _in_thread(fn: Callable[[], tuple[Path, bytes | None, int]],
                     obj: StoredObject) -> tuple[Path, bytes | None, int]:
    try:
        return await asyncio.get_running_loop().run_in_executor(None, fn)
    except FileNotFoundError:  # the source was overwritten or deleted meanwhile
        raise OSSErrorResponse(
            404, "NoSuchKey", "The specified key does not exist.", [("Key", obj.key)]
        ) from None


def _copy_result(root: str, etag: str, modified: float) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>\n'
        f"  <ETag>&quot;{etag}&quot;</ETag>\n"
        f"  <LastModified>{iso(modified)}</LastModified>\n"
        f"</{root}>\n"
    ).encode()


async def copy_object(state: EmulatorState, req: Request) -> Response:
    """CopyObject: ``PUT /key`` with ``x-oss-copy-source``."""
    bucket, key = bucket_key(req)
    src, not_modified = _source(state, req)
    if not_modified:
        return Response(status=304, headers=[("ETag", f'"{src.etag}"')])
    directive = req.headers.get("x-oss-metadata-directive", "COPY").strip().upper() or "COPY"
    if directive not in ("COPY", "REPLACE"):
        raise OSSErrorResponse(
            400, "InvalidArgument", "Invalid metadata directive.",
            [("ArgumentName", "x-oss-metadata-directive"), ("ArgumentValue", directive)],
        )
    same = (src.bucket, src.key) == (bucket, key)
    if not same and src.size > MAX_COPY_SIZE:
        raise OSSErrorResponse(
            400, "EntityTooLarge",
            "The source object is larger than CopyObject allows; use UploadPartCopy.",
            [("ProposedSize", str(src.size)), ("MaxSizeAllowed", str(MAX_COPY_SIZE))],
        )
    check_overwrite(state, req, bucket, key)
    if same or directive == "REPLACE":
        content_type, metadata, stored = upload_metadata(key, req.headers)
    else:
        content_type, metadata, stored = src.content_type, dict(src.metadata), dict(src.headers)
    if same:
        try:  # only the metadata changes: the bytes (and their files) stay as they are
            obj = state.store.update_metadata(
                src, content_type=content_type, metadata=metadata, headers=stored,
                last_modified=time.time(),
            )
        except FileNotFoundError:
            raise OSSErrorResponse(
                404, "NoSuchKey", "The specified key does not exist.", [("Key", key)]
            ) from None
    else:
        copy = functools.partial(_copy_range, state.store, src, 0, src.size, False)
        temp, _, crc = await _in_thread(copy, src)
        obj = state.store.commit_object(
            bucket=bucket, key=key, temp=temp, size=src.size, etag=src.etag, crc=crc,
            content_md5=src.content_md5, content_type=content_type, metadata=metadata,
            headers=stored,
            object_type="Normal" if src.object_type == "Appendable" else src.object_type,
        )
    headers = [XML_CONTENT_TYPE, ("ETag", f'"{obj.etag}"'),
               ("x-oss-hash-crc64ecma", str(obj.crc64))]
    body = _copy_result("CopyObjectResult", obj.etag, obj.last_modified)
    return Response(status=200, headers=headers, body=body)


async def upload_part_copy(state: EmulatorState, req: Request) -> Response:
    """UploadPartCopy: ``PUT /key?partNumber=N&uploadId=ID`` with ``x-oss-copy-source``."""
    number = part_number(req)
    upload = upload_or_404(state, req)
    src, not_modified = _source(state, req)
    if not_modified:
        return Response(status=304, headers=[("ETag", f'"{src.etag}"')])
    start, length = 0, src.size
    raw_range = req.headers.get("x-oss-copy-source-range")
    if raw_range is not None:
        match = _RANGE.fullmatch(raw_range)
        if match is None or int(match[2]) < int(match[1]):
            raise invalid_argument(
                "The x-oss-copy-source-range must be of the form bytes=first-last.",
                "x-oss-copy-source-range", raw_range,
            )
        first, last = int(match[1]), int(match[2])
        if last >= src.size:
            raise OSSErrorResponse(
                416, "InvalidRange", "The requested range cannot be satisfied",
                [("RangeRequested", raw_range.strip()), ("ActualObjectSize", str(src.size))],
            )
        start, length = first, last - first + 1
    copy = functools.partial(_copy_range, state.store, src, start, length,
                             state.etag_mode == "md5")
    temp, md5, crc = await _in_thread(copy, src)
    try:
        part = state.store.commit_part(
            upload, number, temp, length, etag_digest(md5, crc, length), crc
        )
    except FileNotFoundError:
        raise OSSErrorResponse(
            404, "NoSuchUpload", "The specified upload does not exist.",
            [("UploadId", upload.upload_id)],
        ) from None
    body = _copy_result("CopyPartResult", part.etag, part.last_modified)
    return Response(status=200, headers=[XML_CONTENT_TYPE, ("ETag", f'"{part.etag}"')],
                    body=body)


def _position_error(length: int) -> OSSErrorResponse:
    return OSSErrorResponse(
        409, "PositionNotEqualToLength",
        "Position is not equal to file length",
        headers=[("x-oss-next-append-position", str(length))],
    )


def _check_appendable(current: StoredObject | None, position: int) -> None:
    if current is not None and current.object_type != "Appendable":
        raise OSSErrorResponse(
            409, "ObjectNotAppendable", "The object is not appendable",
            [("Key", current.key)],
        )
    length = 0 if current is None else current.size
    if position != length:
        raise _position_error(length)


async def append_object(state: EmulatorState, req: Request) -> Response:
    """AppendObject: ``POST /key?append&position=N``."""
    bucket, key = bucket_key(req)
    raw = req.q.get("position", "")
    if not (raw.isascii() and raw.isdigit()):
        raise invalid_argument("Position must be a non-negative integer.", "position", raw)
    position = int(raw)
    current = state.store.get(bucket, key)
    _check_appendable(current, position)
    md5_given = expected_md5(req.headers)
    declared = check_size(req.headers, MAX_PUT_SIZE)
    if declared is not None and position + declared > MAX_APPEND_SIZE:
        raise OSSErrorResponse(
            400, "EntityTooLarge", "An appendable object can be at most 5 GB.",
            [("ProposedSize", str(position + declared)),
             ("MaxSizeAllowed", str(MAX_APPEND_SIZE))],
        )
    temp, size, md5, crc = await receive_body(state, req, md5_given, declared)
    if size == 0 and current is not None:
        temp.unlink(missing_ok=True)  # an empty append changes nothing
        obj = current
    else:
        if current is None or current.size == 0:
            whole, whole_md5 = temp, md5
            meta = upload_metadata(key, req.headers)
        else:
            # the old bytes, then the appended ones, into a new file (a GET reading the
            # old one goes on undisturbed, as on OSS)
            join = functools.partial(_copy_range, state.store, current, 0, current.size,
                                     md5 is not None, tail=temp)
            try:
                whole, whole_md5, _ = await asyncio.get_running_loop().run_in_executor(
                    None, join)
            except FileNotFoundError:  # replaced meanwhile: the position no longer holds
                latest = state.store.get(bucket, key)
                _check_appendable(latest, position)
                raise _position_error(0 if latest is None else latest.size) from None
            finally:
                temp.unlink(missing_ok=True)
            meta = (current.content_type, dict(current.metadata), dict(current.headers))
        total = position + size
        whole_crc = crc64_combine(0 if current is None else current.crc64, crc, size)
        latest = state.store.get(bucket, key)
        if latest is not current:  # another append (or a put) got there first
            whole.unlink(missing_ok=True)
            _check_appendable(latest, position)
            raise _position_error(0 if latest is None else latest.size)
        obj = state.store.commit_object(
            bucket=bucket, key=key, temp=whole, size=total,
            etag=etag_digest(whole_md5, whole_crc, total).hex().upper(), crc=whole_crc,
            content_md5=None, content_type=meta[0], metadata=meta[1], headers=meta[2],
            object_type="Appendable",
        )
    headers = [("ETag", f'"{obj.etag}"'), ("x-oss-next-append-position", str(obj.size)),
               ("x-oss-hash-crc64ecma", str(obj.crc64))]
    return Response(status=200, headers=headers)


HANDLERS = {
    "CopyObject": copy_object,
    "UploadPartCopy": upload_part_copy,
    "AppendObject": append_object,
}
