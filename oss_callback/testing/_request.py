"""One HTTP exchange as the emulator's handlers see it: the parsed request (its body read as
it arrives) and the response to send, an error answer included."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any
from urllib.parse import unquote_plus

import attrs

from oss_callback.testing._errors import OSSErrorResponse, error_xml, x_oss_err

__all__ = [
    "ClientDisconnected",
    "DropConnection",
    "Receive",
    "Request",
    "Response",
    "Scope",
    "Send",
    "bucket_key",
    "encode_header",
    "error_response",
    "request_from_scope",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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


def _decode_header(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def encode_header(value: str) -> bytes:
    """A response header value as bytes (latin-1 where it can be, else UTF-8)."""
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


def request_from_scope(scope: Scope, receive: Receive, request_id: str) -> Request:
    """The :class:`Request` of an ASGI ``http`` scope (not routed yet: no bucket, key or
    operation)."""
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
    return Request(
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


def bucket_key(req: Request) -> tuple[str, str]:
    """The bucket and key of an object operation (routing has set both)."""
    assert req.bucket is not None and req.key is not None
    return req.bucket, req.key


def error_response(req: Request, exc: OSSErrorResponse) -> Response:
    """OSS's answer to an error: the XML document (a HEAD gets it in ``x-oss-err``)."""
    body = error_xml(exc, req.request_id, req.host)
    headers = [("Content-Type", "application/xml"), ("x-oss-ec", exc.ec), *exc.headers]
    if req.method == "HEAD":
        headers.append(("x-oss-err", x_oss_err(body)))
        body = b""
    return Response(status=exc.status, headers=headers, body=body, error_code=exc.code)
