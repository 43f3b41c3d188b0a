"""The emulator's listings: ListObjects (markers), ListObjectsV2 (continuation tokens) and
ListMultipartUploads, with prefixes, delimiters and ``encoding-type=url``."""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Callable

from oss_callback.testing._formats import (
    OWNER_ID,
    common_prefixes,
    el,
    encoder,
    int_param,
    invalid_argument,
    iso,
    xml_ok,
    xml_text,
)
from oss_callback.testing._request import Request, Response
from oss_callback.testing._state import EmulatorState
from oss_callback.testing._stored import StoredObject

__all__ = ["HANDLERS"]


def _token_encode(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode()).decode()


def _token_decode(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise invalid_argument(
            "The continuation token provided is incorrect.", "continuation-token", token
        ) from None


def _walk(
    state: EmulatorState, bucket: str, prefix: str, delimiter: str, marker: str, limit: int
) -> tuple[list[StoredObject], list[str], bool, str]:
    """List keys after ``marker``: (objects, common prefixes, truncated, last entry)."""
    keys = state.store.sorted_keys(bucket)
    objects = state.store.objects.get(bucket, {})
    i = bisect.bisect_left(keys, prefix)
    if marker:
        i = max(i, bisect.bisect_right(keys, marker))
    skip_under = marker if delimiter and marker.endswith(delimiter) else None
    found: list[StoredObject] = []
    prefixes: list[str] = []
    last = ""
    truncated = False
    while i < len(keys):
        key = keys[i]
        if not key.startswith(prefix):
            break
        if skip_under is not None and key.startswith(skip_under):
            i += 1
            continue
        common = None
        if delimiter:
            at = key.find(delimiter, len(prefix))
            if at >= 0:
                common = key[: at + len(delimiter)]
        if len(found) + len(prefixes) >= limit:
            truncated = True
            break
        if common is not None:
            prefixes.append(common)
            last = common
            while i < len(keys) and keys[i].startswith(common):
                i += 1
            continue
        obj = objects.get(key)
        if obj is not None:
            found.append(obj)
            last = key
        i += 1
    return found, prefixes, truncated, last


def _contents(objs: list[StoredObject], enc: Callable[[str], str], owner: bool) -> str:
    owner_xml = (
        f"    <Owner><ID>{OWNER_ID}</ID><DisplayName>{OWNER_ID}</DisplayName></Owner>\n"
        if owner
        else ""
    )
    return "".join(
        "  <Contents>\n"
        f"    <Key>{xml_text(enc(o.key))}</Key>\n"
        f"    <LastModified>{iso(o.last_modified)}</LastModified>\n"
        f"    <ETag>&quot;{o.etag}&quot;</ETag>\n"
        f"    <Type>{o.object_type}</Type>\n"
        f"    <Size>{o.size}</Size>\n"
        "    <StorageClass>Standard</StorageClass>\n"
        f"{owner_xml}"
        "  </Contents>\n"
        for o in objs
    )


async def list_objects(state: EmulatorState, req: Request) -> Response:
    """ListObjects (V1): ``marker`` / ``NextMarker``."""
    assert req.bucket is not None
    q = req.q
    enc, enc_xml = encoder(q)
    prefix, delimiter, marker = q.get("prefix", ""), q.get("delimiter", ""), q.get("marker", "")
    limit = int_param(q, "max-keys", 100, 0, 1000)
    objs, prefixes, truncated, last = _walk(state, req.bucket, prefix, delimiter, marker, limit)
    children = (
        el("Name", req.bucket)
        + el("Prefix", enc(prefix))
        + el("Marker", enc(marker))
        + el("MaxKeys", limit)
        + el("Delimiter", enc(delimiter))
        + enc_xml
        + el("IsTruncated", str(truncated).lower())
        + (el("NextMarker", enc(last)) if truncated else "")
        + _contents(objs, enc, owner=True)
        + common_prefixes(prefixes, enc)
    )
    return xml_ok("ListBucketResult", children)


async def list_objects_v2(state: EmulatorState, req: Request) -> Response:
    """ListObjectsV2 (``list-type=2``): ``start-after``, continuation tokens, ``KeyCount``."""
    assert req.bucket is not None
    q = req.q
    enc, enc_xml = encoder(q)
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    start_after = q.get("start-after", "")
    token = q.get("continuation-token")
    marker = _token_decode(token) if token else start_after
    if token and start_after > marker:
        marker = start_after
    limit = int_param(q, "max-keys", 100, 0, 1000)
    objs, prefixes, truncated, last = _walk(state, req.bucket, prefix, delimiter, marker, limit)
    children = (
        el("Name", req.bucket)
        + el("Prefix", enc(prefix))
        + (el("StartAfter", enc(start_after)) if "start-after" in q else "")
        + (el("ContinuationToken", token) if token else "")
        + el("MaxKeys", limit)
        + el("Delimiter", enc(delimiter))
        + enc_xml
        + el("IsTruncated", str(truncated).lower())
        + (el("NextContinuationToken", _token_encode(last)) if truncated else "")
        + el("KeyCount", len(objs) + len(prefixes))
        + _contents(objs, enc, owner=q.get("fetch-owner") == "true")
        + common_prefixes(prefixes, enc)
    )
    return xml_ok("ListBucketResult", children)


async def list_multipart_uploads(state: EmulatorState, req: Request) -> Response:
    """ListMultipartUploads: ``GET /?uploads`` (``key-marker``, ``upload-id-marker``)."""
    assert req.bucket is not None
    q = req.q
    enc, enc_xml = encoder(q)
    prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
    key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
    limit = int_param(q, "max-uploads", 1000, 1, 1000)
    uploads = sorted(
        (
            u
            for u in list(state.store.uploads.values())
            if u.bucket == req.bucket and u.key.startswith(prefix)
        ),
        key=lambda u: (u.key, u.initiated, u.upload_id),
    )
    entries: list[str] = []
    seen_prefixes: set[str] = set()
    truncated = False
    next_key = next_id = ""
    for u in uploads:
        if key_marker and (
            u.key < key_marker
            or (u.key == key_marker and (not id_marker or u.upload_id <= id_marker))
        ):
            continue
        common = None
        if delimiter:
            at = u.key.find(delimiter, len(prefix))
            if at >= 0:
                common = u.key[: at + len(delimiter)]
        if common is not None and common in seen_prefixes:
            continue
        if len(entries) >= limit:
            truncated = True
            break
        if common is not None:
            seen_prefixes.add(common)
            entries.append(
                f"  <CommonPrefixes><Prefix>{xml_text(enc(common))}</Prefix></CommonPrefixes>\n"
            )
            next_key, next_id = common, ""
            continue
        entries.append(
            f"  <Upload>\n    <Key>{xml_text(enc(u.key))}</Key>\n"
            f"    <UploadId>{u.upload_id}</UploadId>\n"
            f"    <StorageClass>Standard</StorageClass>\n"
            f"    <Initiated>{iso(u.initiated)}</Initiated>\n  </Upload>\n"
        )
        next_key, next_id = u.key, u.upload_id
    children = (
        el("Bucket", req.bucket)
        + el("KeyMarker", enc(key_marker))
        + el("UploadIdMarker", id_marker)
        + el("NextKeyMarker", enc(next_key))
        + el("NextUploadIdMarker", next_id)
        + el("Delimiter", enc(delimiter))
        + el("Prefix", enc(prefix))
        + el("MaxUploads", limit)
        + enc_xml
        + el("IsTruncated", str(truncated).lower())
        + "".join(entries)
    )
    return xml_ok("ListMultipartUploadsResult", children)


HANDLERS = {
    "ListObjects": list_objects,
    "ListObjectsV2": list_objects_v2,
    "ListMultipartUploads": list_multipart_uploads,
}
