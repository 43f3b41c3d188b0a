"""The emulator's raw ASGI application: routing, OSS operations, errors, faults, records."""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import collections
import functools
import hashlib
import ipaddress
import itertools
import json
import logging
import mimetypes
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
)
from datetime import datetime, timezone
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus, unquote_to_bytes, urlsplit
from xml.sax.saxutils import escape

import attrs
import httpx

from oss_callback.testing._auth import CredentialStore, RequestView, authenticate, authenticate_post
from oss_callback.testing._callbacks import (
    CallbackConfig,
    callback_client,
    parse_callback,
    public_key_pem,
    render_body,
    send_callback,
    system_variables,
)
from oss_callback.testing._errors import OSSErrorResponse, error_xml, x_oss_err
from oss_callback.testing._faults import Fault, FaultInjector, RequestInfo
from oss_callback.testing._post import MAX_FIELD_BYTES, FormReader, boundary_of, check_policy
from oss_callback.testing._records import CallbackRecord, RequestRecord
from oss_callback.testing._store import (
    BodySink,
    PartInfo,
    Store,
    StoredObject,
    Upload,
    combined_part_checksums,
)

__all__ = ["ETAG_MODES", "PUBLIC_KEY_PATH", "EmulatorApp"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("oss_callback.testing")

PUBLIC_KEY_PATH = "/_emulator/callback_pub_key.pem"
#: How ETags are made: ``"md5"`` as OSS does (the default), or ``"fast"`` (see
#: :class:`OSSEmulator`): no MD5 unless the client sends ``Content-MD5``.
ETAG_MODES = ("md5", "fast")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
#: OSS's own endpoint names: oss-cn-hangzhou(-internal).aliyuncs.com, oss-accelerate...
_OSS_SERVICE_HOST = re.compile(r"oss-[a-z0-9-]+\.aliyuncs\.com")
MAX_KEY_BYTES = 1023
MAX_PUT_SIZE = 5 * 1024**3
#: What a PostObject form may add to its file: the fields, boundaries and part headers.
POST_FORM_OVERHEAD = MAX_FIELD_BYTES + 64 * 1024
MIN_PART_SIZE = 100 * 1024
MAX_PART_NUMBER = 10000
MAX_COMPLETE_BODY = 4 * 1024 * 1024
OWNER_ID = "1234567890123456"
NS = ""  # OSS's list results carry no namespace, and oss2's parser relies on that
_STORED_HEADERS = (
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
)
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
_RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}


class ClientDisconnected(Exception):
    """The client went away while we were reading its body."""


class DropConnection(Exception):
    """A fault asks to close the connection instead of answering (properly)."""


@attrs.define(kw_only=True)
class Request:
    """A parsed request."""

    method: str
    raw_path: str
    query: list[tuple[str, str]]
    q: dict[str, str]
    headers: dict[str, str]
    bucket: str | None
    key: str | None
    host: str
    client_ip: str
    request_id: str
    operation: str
    receive: Receive
    body_size: int = 0
    body_done: bool = False
    response_started: bool = False
    started: float = attrs.field(factory=time.monotonic)

    async def body_chunks(self) -> AsyncIterator[bytes]:
        """The request body, chunk by chunk, as it arrives."""
        while not self.body_done:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.body_done = True
                raise ClientDisconnected
            chunk: bytes = message.get("body", b"")
            self.body_size += len(chunk)
            if not message.get("more_body", False):
                self.body_done = True
            if chunk:
                yield chunk

    async def drain(self) -> None:
        """Read and discard what is left of the body (so the client sees our answer)."""
        try:
            async for _ in self.body_chunks():
                pass
        except ClientDisconnected:
            pass

    async def read_body(self, limit: int) -> bytes:
        """The whole (small) body; ``MalformedXML`` past ``limit`` bytes."""
        body = bytearray()
        async for chunk in self.body_chunks():
            body += chunk
            if len(body) > limit:
                raise OSSErrorResponse(400, "MalformedXML", "The XML you provided was too large.")
        return bytes(body)


@attrs.define(kw_only=True)
class Response:
    """A response to send."""

    status: int
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    body: bytes = b""
    stream: Iterator[bytes] | None = None
    length: int | None = None
    error_code: str | None = None


def _quote_etag(etag: str) -> str:
    return f'"{etag}"'


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def _x(value: str) -> str:
    """XML text content (control characters, which XML 1.0 cannot carry, shown as \\xNN)."""
    if any(c < " " and c not in "\t\n\r" for c in value):
        value = "".join(c if c >= " " or c in "\t\n\r" else f"\\x{ord(c):02x}" for c in value)
    return escape(value)


XML_CONTENT_TYPE = ("Content-Type", "application/xml")


def _xml_ok(root: str, children: str) -> Response:
    """A 200 answer with an OSS XML document."""
    return Response(status=200, headers=[XML_CONTENT_TYPE], body=_xml_doc(root, children))


def _common_prefixes(prefixes: Iterable[str], enc: Callable[[str], str]) -> str:
    return "".join(
        f"  <CommonPrefixes><Prefix>{_x(enc(p))}</Prefix></CommonPrefixes>\n" for p in prefixes
    )


def _xml_doc(root: str, children: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}{NS}>\n{children}</{root}>\n'.encode()


def _el(name: str, value: str | int) -> str:
    return f"  <{name}>{_x(str(value))}</{name}>\n"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _decode_header(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _encode_header(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def _parse_query(raw: bytes) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if not raw:
        return pairs
    for item in raw.decode("latin-1").split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        # '+' is a space in a query (requests/oss2 encode with quote_plus); a literal plus
        # arrives as %2B from every SDK.
        pairs.append((unquote_plus(name, errors="replace"), unquote_plus(value, errors="replace")))
    return pairs


def _invalid_argument(message: str, name: str, value: str) -> OSSErrorResponse:
    return OSSErrorResponse(
        400, "InvalidArgument", message, [("ArgumentName", name), ("ArgumentValue", value)]
    )


def _int_param(q: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise _invalid_argument(
            f"Argument {name} must be an integer between {low} and {high}.", name, raw
        )
    return int(raw)


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
        if "x-oss-copy-source" in headers:  # handled in _objects_extra
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
            return "AppendObject"  # handled in _objects_extra
        if "uploads" in q:
            return "InitiateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
    return "Unsupported"


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


def _malformed() -> OSSErrorResponse:
    return OSSErrorResponse(
        400,
        "MalformedXML",
        "The XML you provided was not well-formed or did not validate against our published "
        "schema.",
    )


def _parse_xml(body: bytes, root_tag: str) -> ET.Element:
    """Parse a (size-capped) request document; ``MalformedXML`` if it is not ``root_tag``."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise _malformed()
    try:
        root = ET.fromstring(body)  # noqa: S314 - no DTD/entities (refused above)
    except ET.ParseError:
        raise _malformed() from None
    if root.tag.rpartition("}")[2] != root_tag:
        raise _malformed()
    return root


def _token_encode(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode()).decode()


def _token_decode(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise _invalid_argument(
            "The continuation token provided is incorrect.", "continuation-token", token
        ) from None


class EmulatorApp:
    """The ASGI app. Shared state lives here; :class:`OSSEmulator` owns and drives it."""

    def __init__(
        self,
        store: Store,
        *,
        region: str,
        credentials: CredentialStore,
        faults: FaultInjector,
        callback_timeout: float = 5.0,
        max_records: int = 100_000,
        etag: str = "md5",
    ) -> None:
        if etag not in ETAG_MODES:
            raise ValueError(f"etag must be one of {ETAG_MODES}, not {etag!r}")
        self.store = store
        self.etag_mode = etag
        self.region = region
        self.credentials = credentials
        self.faults = faults
        self.callback_timeout = callback_timeout
        self.endpoint = ""
        self._records_lock = threading.Lock()
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=max_records)
        self.callbacks: collections.deque[CallbackRecord] = collections.deque(maxlen=max_records)
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex().upper()
        self._http: httpx.AsyncClient | None = None
        self._public_key_pem = public_key_pem()

    # ------------------------------------------------------------------ lifecycle

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = callback_client()
        return self._http

    async def aclose(self) -> None:
        """Close the callback HTTP client (call on the server's loop before it stops)."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def clear_records(self) -> None:
        """Forget the recorded requests and callbacks."""
        with self._records_lock:
            self.requests.clear()
            self.callbacks.clear()

    # ------------------------------------------------------------------ ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        request_id = f"{self._id_prefix}{next(self._ids):016X}"
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            lname = name.decode("latin-1").lower()
            text = _decode_header(value)
            headers[lname] = f"{headers[lname]},{text}" if lname in headers else text
        host = headers.get("host", "")
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        raw_path = raw_path.partition("?")[0]
        query = _parse_query(scope.get("query_string", b""))
        q: dict[str, str] = {}
        for name, value in query:
            q.setdefault(name, value)
        client = scope.get("client") or ("", 0)
        req = Request(
            method=scope["method"].upper(),
            raw_path=raw_path,
            query=query,
            q=q,
            headers=headers,
            bucket=None,
            key=None,
            host=host,
            client_ip=str(client[0]),
            request_id=request_id,
            operation="Unknown",
            receive=receive,
            # No body announced: nothing to read (uvicorn still sends one empty message).
            body_done=headers.get("content-length", "0") == "0"
            and "transfer-encoding" not in headers,
        )
        fired: list[Fault] = []
        try:
            try:
                self._route(req)
                response = await self._dispatch(req, fired)
            except OSSErrorResponse as exc:
                await req.drain()
                response = self._error(req, exc)
            await self._send(req, response, fired, send)
        except DropConnection:
            response = Response(status=-1, error_code="ConnectionDropped")
            await self._drop(send, started=req.response_started)
        except ClientDisconnected:
            response = Response(status=-1, error_code="ClientDisconnected")
        except Exception as exc:
            logger.exception("oss emulator: internal error (request %s)", request_id)
            response = self._error(
                req, OSSErrorResponse(500, "InternalError", f"Emulator error: {type(exc).__name__}")
            )
            if not req.response_started:
                await self._send(req, response, [], send)
        self._record(req, response, bool(fired))

    # ------------------------------------------------------------------ plumbing

    def _route(self, req: Request) -> None:
        try:
            path = unquote_to_bytes(req.raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise OSSErrorResponse(
                400, "InvalidObjectName", "The object name is not valid UTF-8."
            ) from None
        virtual = self._virtual_host_bucket(req.host)
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

    def _virtual_host_bucket(self, host: str) -> str | None:
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
        if "." not in hostname or _is_ip(hostname) or self._is_endpoint_host(hostname):
            return None
        label, _, rest = hostname.partition(".")
        if self._is_endpoint_host(rest) or self.store.bucket_exists(label):
            return label
        return None

    def _is_endpoint_host(self, hostname: str) -> bool:
        own = urlsplit(self.endpoint).hostname if self.endpoint else None
        return (
            hostname in ("localhost", own) or _OSS_SERVICE_HOST.fullmatch(hostname) is not None
        )

    async def _dispatch(self, req: Request, fired: list[Fault]) -> Response:
        if req.operation == "GetCallbackPublicKey":
            return Response(
                status=200,
                headers=[("Content-Type", "application/x-pem-file")],
                body=self._public_key_pem,
            )
        if req.operation != "PostObject":  # a form carries its own signature
            authenticate(
                RequestView(
                    method=req.method,
                    bucket=req.bucket,
                    key=req.key,
                    query=req.query,
                    headers=req.headers,
                ),
                self.credentials,
                region=self.region,
            )
        fired.extend(
            self.faults.match(
                RequestInfo(
                    method=req.method,
                    bucket=req.bucket,
                    key=req.key,
                    query=req.query,
                    operation=req.operation,
                )
            )
        )
        for fault in fired:
            if fault.delay:
                await asyncio.sleep(fault.delay)
        if any(fault.drop_connection for fault in fired):
            raise DropConnection
        for fault in fired:
            if fault.status is not None:
                await req.drain()
                code = fault.code or {500: "InternalError", 503: "ServiceUnavailable"}.get(
                    fault.status, "InjectedFault"
                )
                raise OSSErrorResponse(
                    fault.status, code, fault.message or "We encountered an internal error."
                )
        if req.bucket is not None and not _BUCKET_NAME.fullmatch(req.bucket):
            raise OSSErrorResponse(
                400,
                "InvalidBucketName",
                "The specified bucket is not valid.",
                [("BucketName", req.bucket)],
            )
        if req.key is not None:
            self._check_key(req.key)
        if req.operation == "PutBucket":
            return self._put_bucket(req)
        if req.bucket is not None and not self.store.bucket_exists(req.bucket):
            raise OSSErrorResponse(
                404,
                "NoSuchBucket",
                "The specified bucket does not exist.",
                [("BucketName", req.bucket)],
            )
        handler = getattr(self, f"_op_{req.operation}", None)
        if handler is None:
            from oss_callback.testing._objects_extra import (
                EXTRA_HANDLERS,  # copy, part copy, append
            )

            extra = EXTRA_HANDLERS.get(req.operation)
            if extra is not None:
                return await extra(self, req)
            raise OSSErrorResponse(
                501, "NotImplemented", "The OSS emulator does not implement this operation."
            )
        response: Response = await handler(req)
        return response

    @staticmethod
    def _check_key(key: str) -> None:
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

    def _error(self, req: Request, exc: OSSErrorResponse) -> Response:
        body = error_xml(exc, req.request_id, req.host)
        headers = [("Content-Type", "application/xml"), ("x-oss-ec", exc.ec), *exc.headers]
        if req.method == "HEAD":
            headers.append(("x-oss-err", x_oss_err(body)))
            body = b""
        return Response(status=exc.status, headers=headers, body=body, error_code=exc.code)

    async def _send(self, req: Request, response: Response, fired: list[Fault], send: Send) -> None:
        headers = response.headers
        if any(f.corrupt_crc for f in fired):
            headers = [
                (k, str(int(v) ^ 1) if k.lower() == "x-oss-hash-crc64ecma" else v)
                for k, v in headers
            ]
        length = response.length if response.stream is not None else len(response.body)
        raw_headers = [
            (b"x-oss-request-id", req.request_id.encode()),
            (b"date", _http_date(time.time()).encode()),
            (b"server", b"AliyunOSS"),
            (b"x-oss-server-time", str(int((time.monotonic() - req.started) * 1000)).encode()),
        ]
        if response.status not in (204, 304) and not any(
            k.lower() == "content-length" for k, _ in headers
        ):
            raw_headers.append((b"content-length", str(length).encode()))
        raw_headers.extend((k.lower().encode("latin-1"), _encode_header(v)) for k, v in headers)
        if not req.body_done:
            # We answer before reading the whole body (e.g. an error): don't reuse the
            # connection, the unread body would be parsed as the next request.
            raw_headers.append((b"connection", b"close"))
        req.response_started = True
        await send(
            {"type": "http.response.start", "status": response.status, "headers": raw_headers}
        )
        corrupt = any(f.corrupt_body for f in fired)
        cut = min(
            (f.drop_after_bytes for f in fired if f.drop_after_bytes is not None), default=None
        )
        if req.method == "HEAD":
            chunks: Iterable[bytes] = ()
        elif response.stream is None:
            chunks = (response.body,)
        else:
            chunks = response.stream
        first = True
        sent = 0
        for chunk in chunks:
            if first and corrupt and chunk:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
            first = False
            if cut is not None and sent + len(chunk) >= cut:
                await send(
                    {"type": "http.response.body", "body": chunk[: cut - sent], "more_body": True}
                )
                raise DropConnection
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _drop(send: Send, started: bool) -> None:
        """Close the connection: with no answer at all, or (``started``) mid-body."""
        cycle = getattr(send, "__self__", None)
        transport = getattr(cycle, "transport", None)
        if transport is not None:
            transport.abort()
            for _ in range(3):  # let connection_lost() mark the cycle disconnected
                await asyncio.sleep(0)
            return
        if started:
            raise ConnectionAbortedError("fault injection: connection dropped mid-body")
        # Unknown server: start a response that promises more than it sends, then fail.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"1048576")],
            }
        )
        raise ConnectionAbortedError("fault injection: connection dropped")

    def _record(self, req: Request, response: Response, faulted: bool) -> None:
        record = RequestRecord(
            method=req.method,
            path=req.raw_path,
            bucket=req.bucket,
            key=req.key,
            query=tuple(req.query),
            headers={k: v for k, v in req.headers.items() if k != "authorization"},
            operation=req.operation,
            status=response.status,
            error_code=response.error_code,
            body_size=req.body_size,
            request_id=req.request_id,
            fault=faulted,
        )
        with self._records_lock:
            self.requests.append(record)
        logger.debug(
            "oss emulator: %s %s %s -> %s (%s)",
            req.method,
            req.raw_path,
            req.operation,
            record.status,
            req.request_id,
        )

    def _bucket_key(self, req: Request) -> tuple[str, str]:
        assert req.bucket is not None and req.key is not None
        return req.bucket, req.key

    # ------------------------------------------------------------------ upload helpers

    @staticmethod
    def _upload_metadata(
        key: str, headers: Mapping[str, str]
    ) -> tuple[str, dict[str, str], dict[str, str]]:
        # Like OSS: without a Content-Type, guess one from the key's extension.
        content_type = (
            headers.get("content-type")
            or mimetypes.guess_type(key.rpartition("/")[2], strict=False)[0]
            or "application/octet-stream"
        )
        metadata = {k: v for k, v in headers.items() if k.startswith("x-oss-meta-")}
        stored = {k: headers[k] for k in _STORED_HEADERS if k in headers}
        return content_type, metadata, stored

    @staticmethod
    def _expected_md5(headers: Mapping[str, str]) -> bytes | None:
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

    @staticmethod
    def _check_size(headers: Mapping[str, str], limit: int) -> int | None:
        value = headers.get("content-length")
        if value is None:
            return None
        if not (value.isascii() and value.isdigit()):
            raise _invalid_argument("Invalid Content-Length.", "Content-Length", value)
        if int(value) > limit:
            raise OSSErrorResponse(
                400,
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size.",
                [("ProposedSize", value), ("MaxSizeAllowed", str(limit))],
            )
        return int(value)

    async def _receive_body(
        self, req: Request, expected_md5: bytes | None, declared: int | None
    ) -> tuple[Path, int, bytes | None, int]:
        """Stream the body to a temp file; returns (path, size, md5, crc).

        The MD5 is computed (and a ``Content-MD5`` verified) in the default ETag mode and
        whenever the client sent ``Content-MD5``; otherwise (``etag="fast"``) it is ``None``.
        """
        want_md5 = self.etag_mode == "md5" or expected_md5 is not None
        path, size, md5, crc = await self._sink(req.body_chunks(), declared, want_md5)
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

    async def _sink(
        self, chunks: AsyncIterator[bytes], size_hint: int | None, want_md5: bool
    ) -> tuple[Path, int, bytes | None, int]:
        """Stream ``chunks`` to a temp file: ``(path, size, md5 or None, crc)``; on any
        failure the file is deleted."""
        sink = BodySink(self.store.temp_path(size_hint), md5=want_md5)
        try:
            async for chunk in chunks:
                await sink.write(chunk)
            size, md5, crc = await sink.finish()
        except BaseException:
            await sink.abort()
            raise
        return sink.path, size, md5, crc

    @staticmethod
    def _etag_digest(md5: bytes | None, crc: int, size: int) -> bytes:
        """The 16 bytes behind an ETag: the MD5, or (``etag="fast"``, no MD5 computed)
        the CRC-64 and the size, big-endian: cheap, and as unique as the CRC-64."""
        if md5 is not None:
            return md5
        return crc.to_bytes(8, "big") + size.to_bytes(8, "big")

    def _callback_config(self, req: Request) -> CallbackConfig | None:
        return parse_callback(
            req.headers.get("x-oss-callback"),
            req.headers.get("x-oss-callback-var"),
            req.q.get("callback"),
            req.q.get("callback-var"),
        )

    async def _finish_upload(
        self,
        req: Request,
        obj: StoredObject,
        config: CallbackConfig | None,
        headers: list[tuple[str, str]],
        body: bytes,
        content_type: str | None,
    ) -> Response:
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
            self._client(),
            config,
            callback_body,
            self.endpoint + PUBLIC_KEY_PATH,
            self.callback_timeout,
        )
        with self._records_lock:
            self.callbacks.extend(
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
        error = self._error(req, failed)
        error.headers.extend(headers)
        return error

    # ------------------------------------------------------------------ service / bucket

    async def _op_ListBuckets(self, req: Request) -> Response:
        items = "".join(
            f"    <Bucket><CreationDate>{_iso(created)}</CreationDate>"
            f"<ExtranetEndpoint>oss-{self.region}.aliyuncs.com</ExtranetEndpoint>"
            f"<Location>oss-{self.region}</Location><Name>{name}</Name>"
            f"<Region>{self.region}</Region><StorageClass>Standard</StorageClass></Bucket>\n"
            for name, created in sorted(self.store.buckets.items())
        )
        body = _xml_doc(
            "ListAllMyBucketsResult",
            f"  <Owner><ID>{OWNER_ID}</ID><DisplayName>{OWNER_ID}</DisplayName></Owner>\n"
            f"  <Buckets>\n{items}  </Buckets>\n",
        )
        return Response(status=200, headers=[XML_CONTENT_TYPE], body=body)

    def _put_bucket(self, req: Request) -> Response:
        assert req.bucket is not None
        self.store.create_bucket(req.bucket)
        return Response(status=200, headers=[("Location", f"/{req.bucket}")])

    async def _op_HeadBucket(self, req: Request) -> Response:
        return Response(status=200)

    async def _op_DeleteBucket(self, req: Request) -> Response:
        assert req.bucket is not None
        if self.store.objects.get(req.bucket) or any(
            u.bucket == req.bucket for u in self.store.uploads.values()
        ):
            raise OSSErrorResponse(
                409,
                "BucketNotEmpty",
                "The bucket you tried to delete is not empty.",
                [("BucketName", req.bucket)],
            )
        self.store.delete_bucket(req.bucket)
        return Response(status=204)

    def _walk(
        self, bucket: str, prefix: str, delimiter: str, marker: str, limit: int
    ) -> tuple[list[StoredObject], list[str], bool, str]:
        """List keys after ``marker``: (objects, common prefixes, truncated, last entry)."""
        keys = self.store.sorted_keys(bucket)
        objects = self.store.objects.get(bucket, {})
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

    @staticmethod
    def _contents(objs: list[StoredObject], enc: Callable[[str], str], owner: bool) -> str:
        owner_xml = (
            f"    <Owner><ID>{OWNER_ID}</ID><DisplayName>{OWNER_ID}</DisplayName></Owner>\n"
            if owner
            else ""
        )
        return "".join(
            "  <Contents>\n"
            f"    <Key>{_x(enc(o.key))}</Key>\n"
            f"    <LastModified>{_iso(o.last_modified)}</LastModified>\n"
            f"    <ETag>&quot;{o.etag}&quot;</ETag>\n"
            f"    <Type>{o.object_type}</Type>\n"
            f"    <Size>{o.size}</Size>\n"
            "    <StorageClass>Standard</StorageClass>\n"
            f"{owner_xml}"
            "  </Contents>\n"
            for o in objs
        )

    @staticmethod
    def _encoder(q: Mapping[str, str]) -> tuple[Callable[[str], str], str]:
        encoding = q.get("encoding-type")
        if encoding is None or encoding == "":
            return (lambda s: s), ""
        if encoding != "url":
            raise _invalid_argument("Invalid encoding-type.", "encoding-type", encoding)
        return (lambda s: quote(s, safe="/")), _el("EncodingType", "url")

    async def _op_ListObjects(self, req: Request) -> Response:
        assert req.bucket is not None
        q = req.q
        enc, enc_xml = self._encoder(q)
        prefix, delimiter, marker = q.get("prefix", ""), q.get("delimiter", ""), q.get("marker", "")
        limit = _int_param(q, "max-keys", 100, 0, 1000)
        objs, prefixes, truncated, last = self._walk(req.bucket, prefix, delimiter, marker, limit)
        children = (
            _el("Name", req.bucket)
            + _el("Prefix", enc(prefix))
            + _el("Marker", enc(marker))
            + _el("MaxKeys", limit)
            + _el("Delimiter", enc(delimiter))
            + enc_xml
            + _el("IsTruncated", str(truncated).lower())
            + (_el("NextMarker", enc(last)) if truncated else "")
            + self._contents(objs, enc, owner=True)
            + _common_prefixes(prefixes, enc)
        )
        return _xml_ok("ListBucketResult", children)

    async def _op_ListObjectsV2(self, req: Request) -> Response:
        assert req.bucket is not None
        q = req.q
        enc, enc_xml = self._encoder(q)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        start_after = q.get("start-after", "")
        token = q.get("continuation-token")
        marker = _token_decode(token) if token else start_after
        if token and start_after > marker:
            marker = start_after
        limit = _int_param(q, "max-keys", 100, 0, 1000)
        objs, prefixes, truncated, last = self._walk(req.bucket, prefix, delimiter, marker, limit)
        children = (
            _el("Name", req.bucket)
            + _el("Prefix", enc(prefix))
            + (_el("StartAfter", enc(start_after)) if "start-after" in q else "")
            + (_el("ContinuationToken", token) if token else "")
            + _el("MaxKeys", limit)
            + _el("Delimiter", enc(delimiter))
            + enc_xml
            + _el("IsTruncated", str(truncated).lower())
            + (_el("NextContinuationToken", _token_encode(last)) if truncated else "")
            + _el("KeyCount", len(objs) + len(prefixes))
            + self._contents(objs, enc, owner=q.get("fetch-owner") == "true")
            + _common_prefixes(prefixes, enc)
        )
        return _xml_ok("ListBucketResult", children)

    async def _op_ListMultipartUploads(self, req: Request) -> Response:
        assert req.bucket is not None
        q = req.q
        enc, enc_xml = self._encoder(q)
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        key_marker, id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
        limit = _int_param(q, "max-uploads", 1000, 1, 1000)
        uploads = sorted(
            (
                u
                for u in list(self.store.uploads.values())
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
                    f"  <CommonPrefixes><Prefix>{_x(enc(common))}</Prefix></CommonPrefixes>\n"
                )
                next_key, next_id = common, ""
                continue
            entries.append(
                f"  <Upload>\n    <Key>{_x(enc(u.key))}</Key>\n"
                f"    <UploadId>{u.upload_id}</UploadId>\n"
                f"    <StorageClass>Standard</StorageClass>\n"
                f"    <Initiated>{_iso(u.initiated)}</Initiated>\n  </Upload>\n"
            )
            next_key, next_id = u.key, u.upload_id
        children = (
            _el("Bucket", req.bucket)
            + _el("KeyMarker", enc(key_marker))
            + _el("UploadIdMarker", id_marker)
            + _el("NextKeyMarker", enc(next_key))
            + _el("NextUploadIdMarker", next_id)
            + _el("Delimiter", enc(delimiter))
            + _el("Prefix", enc(prefix))
            + _el("MaxUploads", limit)
            + enc_xml
            + _el("IsTruncated", str(truncated).lower())
            + "".join(entries)
        )
        return _xml_ok("ListMultipartUploadsResult", children)

    async def _op_DeleteMultipleObjects(self, req: Request) -> Response:
        assert req.bucket is not None
        enc, enc_xml = self._encoder(req.q)
        expected_md5 = self._expected_md5(req.headers)
        body = await req.read_body(MAX_COMPLETE_BODY)
        if expected_md5 is not None and hashlib.md5(body).digest() != expected_md5:  # noqa: S324
            raise OSSErrorResponse(
                400, "InvalidDigest", "The Content-MD5 you specified was invalid."
            )
        root = _parse_xml(body, "Delete")
        if expected_md5 is None:  # OSS requires it for this request (EC 0016-00000606)
            raise OSSErrorResponse(
                400, "InvalidRequest", "Missing required header for this request: Content-MD5."
            )
        quiet = (root.findtext("Quiet") or "").strip().lower() == "true"
        keys = [node.findtext("Key") for node in root.findall("Object")]
        if not keys or len(keys) > 1000 or any(not k for k in keys):
            raise _malformed()
        deleted = ""
        for key in keys:
            assert key is not None
            self.store.delete(req.bucket, key)
            if not quiet:
                deleted += f"  <Deleted><Key>{_x(enc(key))}</Key></Deleted>\n"
        return _xml_ok("DeleteResult", enc_xml + deleted)

    async def _op_EmptyObjectName(self, req: Request) -> Response:
        raise OSSErrorResponse(400, "InvalidObjectName", "The object name must not be empty.")

    # ------------------------------------------------------------------ objects

    def _object_or_404(self, req: Request) -> StoredObject:
        bucket, key = self._bucket_key(req)
        obj = self.store.get(bucket, key)
        if obj is None:
            raise OSSErrorResponse(
                404, "NoSuchKey", "The specified key does not exist.", [("Key", key)]
            )
        return obj

    def _check_overwrite(self, req: Request, bucket: str, key: str) -> None:
        """``x-oss-forbid-overwrite: true`` and the object exists: 409 FileAlreadyExists."""
        forbid = req.headers.get("x-oss-forbid-overwrite", "").lower() == "true"
        if forbid and self.store.get(bucket, key) is not None:
            raise OSSErrorResponse(
                409,
                "FileAlreadyExists",
                "The object you specified already exists and can not be overwritten.",
                [("Key", key)],
            )

    async def _op_PutObject(self, req: Request) -> Response:
        bucket, key = self._bucket_key(req)
        config = self._callback_config(req)  # validated before anything is stored
        expected_md5 = self._expected_md5(req.headers)
        declared = self._check_size(req.headers, MAX_PUT_SIZE)
        self._check_overwrite(req, bucket, key)
        content_type, metadata, stored = self._upload_metadata(key, req.headers)
        temp, size, md5, crc = await self._receive_body(req, expected_md5, declared)
        obj, headers = self._commit_normal(
            bucket, key, temp, size, md5, crc, (content_type, metadata, stored)
        )
        if obj.content_md5 is not None:
            headers.append(("Content-MD5", obj.content_md5))
        return await self._finish_upload(req, obj, config, headers, b"", None)

    def _commit_normal(
        self,
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
        obj = self.store.commit_object(
            bucket=bucket,
            key=key,
            temp=temp,
            size=size,
            etag=self._etag_digest(md5, crc, size).hex().upper(),
            crc=crc,
            content_md5=base64.b64encode(md5).decode() if md5 is not None else None,
            content_type=content_type,
            metadata=metadata,
            headers=stored,
            object_type="Normal",
        )
        return obj, [("ETag", _quote_etag(obj.etag)), ("x-oss-hash-crc64ecma", str(crc))]

    async def _op_PostObject(self, req: Request) -> Response:
        """A browser form upload: fields, a signed policy, then the file (streamed)."""
        bucket = req.bucket
        assert bucket is not None
        # The file may be up to 5 GB, as for PutObject; the fields come on top.
        declared = self._check_size(req.headers, MAX_PUT_SIZE + POST_FORM_OVERHEAD)
        form = FormReader(req.body_chunks(), boundary_of(req.headers.get("content-type", "")))
        try:
            fields = await form.fields()
            authenticate_post(fields, self.credentials, region=self.region)
            length_range = check_policy(fields["policy"], fields, bucket)
            key = fields.get("key", "")
            if not key:
                raise _invalid_argument("The key form field is missing or empty.", "key", "")
            key = key.replace("${filename}", form.filename or "")
            self._check_key(key)
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
        given = {
            k: v for k, v in fields.items() if k in _STORED_HEADERS or k.startswith("x-oss-meta-")
        }
        if "content-type" in fields or form.file_content_type:
            given["content-type"] = fields.get("content-type") or form.file_content_type or ""
        content_type, metadata, stored = self._upload_metadata(key, given)
        path, size, md5, crc = await self._sink(
            form.file_chunks(), declared, self.etag_mode == "md5"
        )
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
        obj, headers = self._commit_normal(
            bucket, key, path, size, md5, crc, (content_type, metadata, stored)
        )
        if config is not None:
            return await self._finish_upload(req, obj, config, headers, b"", None)
        status = fields.get("success_action_status", "")
        if status == "200":
            return Response(status=200, headers=headers)
        if status == "201":
            location = f"{self.endpoint}/{bucket}/{quote(key)}"
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse>'
                f"<Bucket>{escape(bucket)}</Bucket><Location>{escape(location)}</Location>"
                f"<Key>{escape(key)}</Key><ETag>{escape(_quote_etag(obj.etag))}</ETag>"
                "</PostResponse>"
            ).encode()
            headers.append(("Content-Type", "application/xml"))
            return Response(status=201, headers=headers, body=body)
        return Response(status=204, headers=headers)

    def _object_headers(self, obj: StoredObject) -> list[tuple[str, str]]:
        headers = [
            ("Content-Type", obj.content_type),
            ("ETag", _quote_etag(obj.etag)),
            ("Last-Modified", _http_date(obj.last_modified)),
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

    @staticmethod
    def _check_conditions(req: Request, obj: StoredObject) -> Response | None:
        etag = _quote_etag(obj.etag)
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

    async def _op_GetObject(self, req: Request) -> Response:
        obj = self._object_or_404(req)
        not_modified = self._check_conditions(req, obj)
        if not_modified is not None:
            return not_modified
        headers = self._object_headers(obj)
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
            stream = self.store.read(obj, start, length)
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

    async def _op_HeadObject(self, req: Request) -> Response:
        obj = self._object_or_404(req)
        not_modified = self._check_conditions(req, obj)
        if not_modified is not None:
            return not_modified
        return Response(
            status=200, headers=self._object_headers(obj), length=obj.size, stream=iter(())
        )

    async def _op_DeleteObject(self, req: Request) -> Response:
        bucket, key = self._bucket_key(req)
        self.store.delete(bucket, key)
        return Response(status=204)

    # ------------------------------------------------------------------ multipart

    def _upload_or_404(self, req: Request) -> Upload:
        bucket, key = self._bucket_key(req)
        upload_id = req.q.get("uploadId", "")
        upload = self.store.uploads.get(upload_id)
        if upload is None or upload.bucket != bucket or upload.key != key or upload.completing:
            raise OSSErrorResponse(
                404,
                "NoSuchUpload",
                "The specified upload does not exist. The upload ID may "
                "be invalid, or the upload may have been aborted or completed.",
                [("UploadId", upload_id)],
            )
        return upload

    async def _op_InitiateMultipartUpload(self, req: Request) -> Response:
        bucket, key = self._bucket_key(req)
        enc, enc_xml = self._encoder(req.q)
        content_type, metadata, stored = self._upload_metadata(key, req.headers)
        upload = self.store.create_upload(
            bucket=bucket, key=key, content_type=content_type, metadata=metadata, headers=stored
        )
        body = _xml_doc(
            "InitiateMultipartUploadResult",
            _el("Bucket", bucket)
            + _el("Key", enc(key))
            + _el("UploadId", upload.upload_id)
            + enc_xml,
        )
        return Response(status=200, headers=[XML_CONTENT_TYPE], body=body)

    async def _op_UploadPart(self, req: Request) -> Response:
        raw_number = req.q.get("partNumber", "")
        if not (raw_number.isascii() and raw_number.isdigit()) or not (
            1 <= int(raw_number) <= MAX_PART_NUMBER
        ):
            raise _invalid_argument(
                "Part number must be an integer between 1 and 10000, inclusive.",
                "partNumber",
                raw_number,
            )
        upload = self._upload_or_404(req)
        expected_md5 = self._expected_md5(req.headers)
        declared = self._check_size(req.headers, MAX_PUT_SIZE)
        temp, size, md5, crc = await self._receive_body(req, expected_md5, declared)
        digest = self._etag_digest(md5, crc, size)
        try:
            part = self.store.commit_part(upload, int(raw_number), temp, size, digest, crc)
        except FileNotFoundError:
            raise OSSErrorResponse(
                404,
                "NoSuchUpload",
                "The specified upload does not exist.",
                [("UploadId", upload.upload_id)],
            ) from None
        headers = [("ETag", _quote_etag(part.etag)), ("x-oss-hash-crc64ecma", str(crc))]
        if md5 is not None:
            headers.append(("Content-MD5", base64.b64encode(md5).decode()))
        return Response(status=200, headers=headers)

    @staticmethod
    def _parse_complete(body: bytes) -> list[tuple[int, str]]:
        root = _parse_xml(body, "CompleteMultipartUpload")
        parts: list[tuple[int, str]] = []
        for element in root:
            if element.tag.rpartition("}")[2] != "Part":
                continue
            number = element.findtext("PartNumber")
            etag = element.findtext("ETag")
            number = (number or "").strip()
            if not number or etag is None or not (number.isascii() and number.isdigit()):
                raise _malformed()
            parts.append((int(number.strip()), etag.strip().strip('"').upper()))
        if not parts:
            raise _malformed()
        return parts

    async def _op_CompleteMultipartUpload(self, req: Request) -> Response:
        bucket, key = self._bucket_key(req)
        upload = self._upload_or_404(req)
        config = self._callback_config(req)  # validated before completing
        enc, enc_xml = self._encoder(req.q)
        expected_md5 = self._expected_md5(req.headers)
        body = await req.read_body(MAX_COMPLETE_BODY)
        if expected_md5 is not None and hashlib.md5(body).digest() != expected_md5:  # noqa: S324
            raise OSSErrorResponse(
                400, "InvalidDigest", "The Content-MD5 you specified was invalid."
            )
        chosen: list[PartInfo] = []
        if req.headers.get("x-oss-complete-all", "").lower() == "yes":
            if body.strip():
                raise _invalid_argument(
                    "Should not specify both complete-all header and body.",
                    "x-oss-complete-all",
                    "yes",
                )
            chosen = [upload.parts[n] for n in sorted(upload.parts)]
            if not chosen:
                raise OSSErrorResponse(400, "InvalidPart", "The upload has no parts.")
        else:
            previous = 0
            for number, etag in self._parse_complete(body):
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
        self._check_overwrite(req, bucket, key)
        if upload.completing:
            raise OSSErrorResponse(404, "NoSuchUpload", "The specified upload does not exist.")
        upload.completing = True
        etag, crc, _ = combined_part_checksums(chosen)
        try:
            # The part files become the object's segments (renamed, never copied); the
            # ETag and CRC-64 come from the parts' digests (crc64_combine), not the bytes.
            obj = await asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(self.store.commit_multipart, upload, chosen, etag=etag, crc=crc),
            )
        except FileNotFoundError:
            upload.completing = False
            raise OSSErrorResponse(
                404, "NoSuchUpload", "The specified upload does not exist."
            ) from None
        except BaseException:
            upload.completing = False
            raise
        self.store.drop_upload(upload.upload_id)
        xml = _xml_doc(
            "CompleteMultipartUploadResult",
            enc_xml
            + _el("Location", f"{self.endpoint}/{bucket}/{quote(key)}")
            + _el("Bucket", bucket)
            + _el("Key", enc(key))
            + _el("ETag", _quote_etag(etag)),
        )
        headers = [("ETag", _quote_etag(etag)), ("x-oss-hash-crc64ecma", str(crc))]
        return await self._finish_upload(req, obj, config, headers, xml, "application/xml")

    async def _op_ListParts(self, req: Request) -> Response:
        bucket, key = self._bucket_key(req)
        upload = self._upload_or_404(req)
        enc, enc_xml = self._encoder(req.q)
        limit = _int_param(req.q, "max-parts", 1000, 1, 1000)
        marker = _int_param(req.q, "part-number-marker", 0, 0, MAX_PART_NUMBER)
        numbers = [n for n in sorted(upload.parts) if n > marker]
        page, truncated = numbers[:limit], len(numbers) > limit
        parts_xml = "".join(
            "  <Part>\n"
            f"    <PartNumber>{p.number}</PartNumber>\n"
            f"    <LastModified>{_iso(p.last_modified)}</LastModified>\n"
            f"    <ETag>&quot;{p.etag}&quot;</ETag>\n"
            f"    <HashCrc64ecma>{p.crc64}</HashCrc64ecma>\n"
            f"    <Size>{p.size}</Size>\n"
            "  </Part>\n"
            for p in (upload.parts[n] for n in page)
        )
        children = (
            _el("Bucket", bucket)
            + _el("Key", enc(key))
            + _el("UploadId", upload.upload_id)
            + _el("PartNumberMarker", marker)
            + _el("NextPartNumberMarker", page[-1] if page else marker)
            + _el("MaxParts", limit)
            + _el("IsTruncated", str(truncated).lower())
            + enc_xml
            + parts_xml
        )
        return _xml_ok("ListPartsResult", children)

    async def _op_AbortMultipartUpload(self, req: Request) -> Response:
        upload = self._upload_or_404(req)
        self.store.drop_upload(upload.upload_id)
        return Response(status=204)
