"""Which bucket, key and OSS operation a request names: path-style or virtual-hosted
addressing, the operation from method + subresources, and the name checks OSS makes."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from urllib.parse import unquote_to_bytes, urlsplit

from oss_callback.testing._errors import OSSErrorResponse
from oss_callback.testing._request import Request

__all__ = ["BUCKET_NAME", "PUBLIC_KEY_PATH", "check_key", "check_names", "operation_of", "route"]

#: Where the emulator serves the public key its callbacks are signed with.
PUBLIC_KEY_PATH = "/_emulator/callback_pub_key.pem"
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
#: OSS's own endpoint names: oss-cn-hangzhou(-internal).aliyuncs.com, oss-accelerate...
_OSS_SERVICE_HOST = re.compile(r"oss-[a-z0-9-]+\.aliyuncs\.com")
MAX_KEY_BYTES = 1023
_UNSUPPORTED_OBJECT_SUBRESOURCES = frozenset(
    ["acl", "tagging", "symlink", "restore", "x-oss-process", "comp"]
)
_UNSUPPORTED_BUCKET_SUBRESOURCES = frozenset(
    [
        *("acl", "location", "bucketInfo", "stat", "cors", "logging", "website", "referer"),
        *("lifecycle", "versioning", "versions", "encryption", "policy", "tagging", "worm"),
        *("replication", "inventory"),
    ]
)


def operation_of(
    method: str,
    bucket: str | None,
    key: str | None,
    q: Mapping[str, str],
    headers: Mapping[str, str],
) -> str:
    """The OSS operation a request asks for (``"Unsupported"`` for what the emulator lacks)."""
    if bucket is None:
        return "ListBuckets" if method == "GET" else "Unsupported"
    if key is None:
        if any(name in q for name in _UNSUPPORTED_BUCKET_SUBRESOURCES):
            return "Unsupported"
        if method == "PUT":
            return "PutBucket"
        if method == "GET":
            if "uploads" in q:
                return "ListMultipartUploads"
            return "ListObjectsV2" if q.get("list-type") == "2" else "ListObjects"
        if method == "HEAD":
            return "HeadBucket"
        if method == "DELETE":
            return "DeleteBucket"
        if method == "POST" and "delete" in q:
            return "DeleteMultipleObjects"
        if method == "POST" and not q:
            return "PostObject"  # a form upload (checked to be multipart/form-data)
        if "uploads" in q or "uploadId" in q or "partNumber" in q:
            return "EmptyObjectName"  # an object operation without an object name
        return "Unsupported"
    if any(name in q for name in _UNSUPPORTED_OBJECT_SUBRESOURCES):
        return "Unsupported"
    if method == "PUT":
        if "x-oss-copy-source" in headers:  # handled in _copy_append
            return "UploadPartCopy" if "uploadId" in q and "partNumber" in q else "CopyObject"
        if "uploadId" in q and "partNumber" in q:
            return "UploadPart"
        return "PutObject"
    if method == "GET":
        return "ListParts" if "uploadId" in q else "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
    if method == "POST":
        if "append" in q:
            return "AppendObject"  # handled in _copy_append
        if "uploads" in q:
            return "InitiateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
    return "Unsupported"


def route(req: Request, *, endpoint: str, bucket_exists: Callable[[str], bool]) -> None:
    """Set ``req``'s bucket, key and operation from its path and ``Host``.

    Raises:
        OSSErrorResponse: 400 ``InvalidObjectName`` for a path that is not UTF-8.
    """
    try:
        path = unquote_to_bytes(req.raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise OSSErrorResponse(
            400, "InvalidObjectName", "The object name is not valid UTF-8."
        ) from None
    virtual = _virtual_host_bucket(req.host, endpoint, bucket_exists)
    if virtual is not None:
        req.bucket = virtual
        req.key = path[1:] or None
    elif path == PUBLIC_KEY_PATH and req.method in ("GET", "HEAD"):
        req.operation = "GetCallbackPublicKey"
        return
    else:
        bucket, _, key = path[1:].partition("/")
        req.bucket = bucket or None
        req.key = key or None if bucket else None
    req.operation = operation_of(req.method, req.bucket, req.key, req.q, req.headers)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _virtual_host_bucket(
    host: str, endpoint: str, bucket_exists: Callable[[str], bool]
) -> str | None:
    """The bucket a virtual-hosted ``Host`` names, ``None`` for path-style addressing.

    ``<bucket>.<endpoint host>`` is virtual-hosted whether or not the bucket exists (a
    missing one is then ``404 NoSuchBucket``, as on OSS, not a signature mismatch), where
    the endpoint hosts are ``localhost``, the emulator's own host name and OSS's service
    names (``oss-<region>[-internal].aliyuncs.com``, ``oss-accelerate.aliyuncs.com``).
    Those hosts themselves, IP addresses and single labels are path-style. Any other
    name (a CNAME, a proxy's, ``host.docker.internal``) can't be told from an endpoint
    name: it is virtual-hosted only if its first label is an existing bucket.
    """
    hostname = (host.rsplit(":", 1)[0] if not host.endswith("]") else host).lower()
    if "." not in hostname or _is_ip(hostname) or _is_endpoint_host(hostname, endpoint):
        return None
    label, _, rest = hostname.partition(".")
    if _is_endpoint_host(rest, endpoint) or bucket_exists(label):
        return label
    return None


def _is_endpoint_host(hostname: str, endpoint: str) -> bool:
    own = urlsplit(endpoint).hostname if endpoint else None
    return hostname in ("localhost", own) or _OSS_SERVICE_HOST.fullmatch(hostname) is not None


def check_key(key: str) -> None:
    """400 ``InvalidObjectName`` for a key OSS refuses (too long, or a leading slash)."""
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise OSSErrorResponse(
            400,
            "InvalidObjectName",
            "The length of the object name is too long.",
            [("ObjectName", key[:64])],
        )
    if key[0] in "/\\":
        raise OSSErrorResponse(
            400,
            "InvalidObjectName",
            "The object name must not start with '/' or '\\'.",
            [("ObjectName", key)],
        )


def check_names(req: Request) -> None:
    """400 ``InvalidBucketName`` / ``InvalidObjectName`` for the names a request gives."""
    if req.bucket is not None and not BUCKET_NAME.fullmatch(req.bucket):
        raise OSSErrorResponse(
            400,
            "InvalidBucketName",
            "The specified bucket is not valid.",
            [("BucketName", req.bucket)],
        )
    if req.key is not None:
        check_key(req.key)
