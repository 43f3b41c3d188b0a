"""The emulator's multipart uploads: Initiate, UploadPart, Complete (a part list or
``x-oss-complete-all``), ListParts and Abort. (UploadPartCopy is in ``_copy_append``.)"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
from urllib.parse import quote

from oss_callback.testing._errors import OSSErrorResponse
from oss_callback.testing._formats import (
    MAX_XML_BODY,
    XML_CONTENT_TYPE,
    el,
    encoder,
    int_param,
    invalid_argument,
    iso,
    malformed,
    parse_xml,
    quote_etag,
    xml_doc,
    xml_ok,
)
from oss_callback.testing._request import Request, Response, bucket_key
from oss_callback.testing._state import EmulatorState
from oss_callback.testing._stored import PartInfo, Upload, combined_part_checksums
from oss_callback.testing._uploads import (
    MAX_PUT_SIZE,
    callback_config,
    check_overwrite,
    check_size,
    etag_digest,
    expected_md5,
    finish_upload,
    receive_body,
    upload_metadata,
)

__all__ = ["HANDLERS", "MAX_PART_NUMBER", "MIN_PART_SIZE", "part_number", "upload_or_404"]

MIN_PART_SIZE = 100 * 1024
MAX_PART_NUMBER = 10000


def part_number(req: Request) -> int:
    """The ``partNumber`` of an UploadPart(Copy): 1 to 10000 (400 ``InvalidArgument``)."""
    raw_number = req.q.get("partNumber", "")
    if not (raw_number.isascii() and raw_number.isdigit()) or not (
        1 <= int(raw_number) <= MAX_PART_NUMBER
    ):
        raise invalid_argument(
            "Part number must be an integer between 1 and 10000, inclusive.",
            "partNumber",
            raw_number,
        )
    return int(raw_number)


def upload_or_404(state: EmulatorState, req: Request) -> Upload:
    """The upload ``uploadId`` names, of this bucket and key (404 ``NoSuchUpload``)."""
    bucket, key = bucket_key(req)
    upload_id = req.q.get("uploadId", "")
    upload = state.store.uploads.get(upload_id)
    if upload is None or upload.bucket != bucket or upload.key != key or upload.completing:
        raise OSSErrorResponse(
            404,
            "NoSuchUpload",
            "The specified upload does not exist. The upload ID may "
            "be invalid, or the upload may have been aborted or completed.",
            [("UploadId", upload_id)],
        )
    return upload


async def initiate_multipart_upload(state: EmulatorState, req: Request) -> Response:
    """InitiateMultipartUpload: ``POST /key?uploads``; the metadata is kept for Complete."""
    bucket, key = bucket_key(req)
    enc, enc_xml = encoder(req.q)
    content_type, metadata, stored = upload_metadata(key, req.headers)
    upload = state.store.create_upload(
        bucket=bucket, key=key, content_type=content_type, metadata=metadata, headers=stored
    )
    body = xml_doc(
        "InitiateMultipartUploadResult",
        el("Bucket", bucket) + el("Key", enc(key)) + el("UploadId", upload.upload_id) + enc_xml,
    )
    return Response(status=200, headers=[XML_CONTENT_TYPE], body=body)


async def upload_part(state: EmulatorState, req: Request) -> Response:
    """UploadPart: ``PUT /key?partNumber=N&uploadId=ID`` (replaces an earlier part N)."""
    number = part_number(req)
    upload = upload_or_404(state, req)
    md5_given = expected_md5(req.headers)
    declared = check_size(req.headers, MAX_PUT_SIZE)
    temp, size, md5, crc = await receive_body(state, req, md5_given, declared)
    digest = etag_digest(md5, crc, size)
    try:
        part = state.store.commit_part(upload, number, temp, size, digest, crc)
    except FileNotFoundError:
        raise OSSErrorResponse(
            404,
            "NoSuchUpload",
            "The specified upload does not exist.",
            [("UploadId", upload.upload_id)],
        ) from None
    headers = [("ETag", quote_etag(part.etag)), ("x-oss-hash-crc64ecma", str(crc))]
    if md5 is not None:
        headers.append(("Content-MD5", base64.b64encode(md5).decode()))
    return Response(status=200, headers=headers)


def _parse_complete(body: bytes) -> list[tuple[int, str]]:
    root = parse_xml(body, "CompleteMultipartUpload")
    parts: list[tuple[int, str]] = []
    for element in root:
        if element.tag.rpartition("}")[2] != "Part":
            continue
        number = element.findtext("PartNumber")
        etag = element.findtext("ETag")
        number = (number or "").strip()
        if not number or etag is None or not (number.isascii() and number.isdigit()):
            raise malformed()
        parts.append((int(number.strip()), etag.strip().strip('"').upper()))
    if not parts:
        raise malformed()
    return parts


def _chosen_parts(upload: Upload, req: Request, body: bytes) -> list[PartInfo]:
    """The parts Complete names (in order, each at least 100 KiB but the last)."""
    chosen: list[PartInfo] = []
    if req.headers.get("x-oss-complete-all", "").lower() == "yes":
        if body.strip():
            raise invalid_argument(
                "Should not specify both complete-all header and body.",
                "x-oss-complete-all",
                "yes",
            )
        chosen = [upload.parts[n] for n in sorted(upload.parts)]
        if not chosen:
            raise OSSErrorResponse(400, "InvalidPart", "The upload has no parts.")
    else:
        previous = 0
        for number, etag in _parse_complete(body):
            if not 1 <= number <= MAX_PART_NUMBER or number <= previous:
                raise OSSErrorResponse(
                    400,
                    "InvalidPartOrder",
                    "The list of parts was not in ascending order. "
                    "The parts list must be specified in order by part number.",
                    [("PartNumber", str(number))],
                )
            previous = number
            part = upload.parts.get(number)
            if part is None or part.etag != etag:
                raise OSSErrorResponse(
                    400,
                    "InvalidPart",
                    "One or more of the specified parts could not be "
                    "found or the specified entity tag might not have matched the part's "
                    "entity tag.",
                    [("PartNumber", str(number)), ("ETag", etag)],
                )
            chosen.append(part)
    for part in chosen[:-1]:
        if part.size < MIN_PART_SIZE:
            raise OSSErrorResponse(
                400,
                "EntityTooSmall",
                "Your proposed upload smaller than the minimum allowed object size.",
                [
                    ("ProposedSize", str(part.size)),
                    ("MinSizeAllowed", str(MIN_PART_SIZE)),
                    ("PartNumber", str(part.number)),
                    ("ETag", part.etag),
                ],
            )
    return chosen


async def complete_multipart_upload(state: EmulatorState, req: Request) -> Response:
    """CompleteMultipartUpload: ``POST /key?uploadId=ID`` (and maybe a callback)."""
    bucket, key = bucket_key(req)
    upload = upload_or_404(state, req)
    config = callback_config(req)  # validated before completing
    enc, enc_xml = encoder(req.q)
    md5_given = expected_md5(req.headers)
    body = await req.read_body(MAX_XML_BODY)
    if md5_given is not None and hashlib.md5(body).digest() != md5_given:  # noqa: S324
        raise OSSErrorResponse(400, "InvalidDigest", "The Content-MD5 you specified was invalid.")
    chosen = _chosen_parts(upload, req, body)
    check_overwrite(state, req, bucket, key)
    if upload.completing:
        raise OSSErrorResponse(404, "NoSuchUpload", "The specified upload does not exist.")
    upload.completing = True
    etag, crc, _ = combined_part_checksums(chosen)
    try:
        # The part files become the object's segments (renamed, never copied); the
        # ETag and CRC-64 come from the parts' digests (crc64_combine), not the bytes.
        obj = await asyncio.get_running_loop().run_in_executor(
            None,
            functools.partial(state.store.commit_multipart, upload, chosen, etag=etag, crc=crc),
        )
    except FileNotFoundError:
        upload.completing = False
        raise OSSErrorResponse(
            404, "NoSuchUpload", "The specified upload does not exist."
        ) from None
    except BaseException:
        upload.completing = False
        raise
    state.store.drop_upload(upload.upload_id)
    xml = xml_doc(
        "CompleteMultipartUploadResult",
        enc_xml
        + el("Location", f"{state.endpoint}/{bucket}/{quote(key)}")
        + el("Bucket", bucket)
        + el("Key", enc(key))
        + el("ETag", quote_etag(etag)),
    )
    headers = [("ETag", quote_etag(etag)), ("x-oss-hash-crc64ecma", str(crc))]
    return await finish_upload(state, req, obj, config, headers, xml, "application/xml")


async def list_parts(state: EmulatorState, req: Request) -> Response:
    """ListParts: ``GET /key?uploadId=ID`` (``max-parts``, ``part-number-marker``)."""
    bucket, key = bucket_key(req)
    upload = upload_or_404(state, req)
    enc, enc_xml = encoder(req.q)
    limit = int_param(req.q, "max-parts", 1000, 1, 1000)
    marker = int_param(req.q, "part-number-marker", 0, 0, MAX_PART_NUMBER)
    numbers = [n for n in sorted(upload.parts) if n > marker]
    page, truncated = numbers[:limit], len(numbers) > limit
    parts_xml = "".join(
        "  <Part>\n"
        f"    <PartNumber>{p.number}</PartNumber>\n"
        f"    <LastModified>{iso(p.last_modified)}</LastModified>\n"
        f"    <ETag>&quot;{p.etag}&quot;</ETag>\n"
        f"    <HashCrc64ecma>{p.crc64}</HashCrc64ecma>\n"
        f"    <Size>{p.size}</Size>\n"
        "  </Part>\n"
        for p in (upload.parts[n] for n in page)
    )
    children = (
        el("Bucket", bucket)
        + el("Key", enc(key))
        + el("UploadId", upload.upload_id)
        + el("PartNumberMarker", marker)
        + el("NextPartNumberMarker", page[-1] if page else marker)
        + el("MaxParts", limit)
        + el("IsTruncated", str(truncated).lower())
        + enc_xml
        + parts_xml
    )
    return xml_ok("ListPartsResult", children)


async def abort_multipart_upload(state: EmulatorState, req: Request) -> Response:
    """AbortMultipartUpload: the upload and its parts are gone."""
    upload = upload_or_404(state, req)
    state.store.drop_upload(upload.upload_id)
    return Response(status=204)


HANDLERS = {
    "InitiateMultipartUpload": initiate_multipart_upload,
    "UploadPart": upload_part,
    "CompleteMultipartUpload": complete_multipart_upload,
    "ListParts": list_parts,
    "AbortMultipartUpload": abort_multipart_upload,
}
