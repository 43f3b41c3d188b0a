"""The emulator's raw ASGI application: each request is parsed, routed, authenticated, put
through the fault rules, and dispatched to its operation family's handler; the answer is
sent (faults may corrupt, cut or drop it) and recorded.

The operation families, one module each: ``_buckets`` (the service and buckets),
``_objects`` (put, get, head, delete, delete-multiple), ``_copy_append`` (CopyObject,
UploadPartCopy, AppendObject), ``_multipart``, ``_listing`` and ``_post_object`` (browser
form uploads).  A handler takes the shared :class:`EmulatorState` and the
:class:`Request`, and returns a :class:`Response` or raises ``OSSErrorResponse``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable

from oss_callback.testing._auth import RequestView, authenticate
from oss_callback.testing._buckets import HANDLERS as BUCKETS
from oss_callback.testing._buckets import put_bucket
from oss_callback.testing._copy_append import HANDLERS as COPY_APPEND
from oss_callback.testing._errors import OSSErrorResponse
from oss_callback.testing._faults import Fault, FaultInjector, RequestInfo
from oss_callback.testing._formats import http_date
from oss_callback.testing._listing import HANDLERS as LISTING
from oss_callback.testing._multipart import HANDLERS as MULTIPART
from oss_callback.testing._objects import HANDLERS as OBJECTS
from oss_callback.testing._post_object import HANDLERS as POST_OBJECT
from oss_callback.testing._records import RequestRecord
from oss_callback.testing._request import (
    ClientDisconnected,
    DropConnection,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    encode_header,
    error_response,
    request_from_scope,
)
from oss_callback.testing._routing import check_names, route
from oss_callback.testing._state import EmulatorState

__all__ = ["HANDLERS", "EmulatorApp"]

logger = logging.getLogger("oss_callback.testing")

Handler = Callable[[EmulatorState, Request], Awaitable[Response]]

#: Every operation the emulator implements (but PutBucket, see ``_dispatch``), by name.
HANDLERS: dict[str, Handler] = {
    **BUCKETS,
    **OBJECTS,
    **COPY_APPEND,
    **MULTIPART,
    **LISTING,
    **POST_OBJECT,
}


class EmulatorApp:
    """The ASGI app. :class:`OSSEmulator` owns and drives it (and its :attr:`state`)."""

    def __init__(self, state: EmulatorState, faults: FaultInjector) -> None:
        self.state = state
        self.faults = faults
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex().upper()

    async def aclose(self) -> None:
        """Close the callback HTTP client (call on the server's loop before it stops)."""
        await self.state.aclose()

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
        req = request_from_scope(scope, receive, request_id)
        fired: list[Fault] = []
        try:
            try:
                route(req, endpoint=self.state.endpoint,
                      bucket_exists=self.state.store.bucket_exists)
                response = await self._dispatch(req, fired)
            except OSSErrorResponse as exc:
                await req.drain()
                response = error_response(req, exc)
            await self._send(req, response, fired, send)
        except DropConnection:
            response = Response(status=-1, error_code="ConnectionDropped")
            await self._drop(send, started=req.response_started)
        except ClientDisconnected:
            response = Response(status=-1, error_code="ClientDisconnected")
        except Exception as exc:
            logger.exception("oss emulator: internal error (request %s)", request_id)
            response = error_response(
                req, OSSErrorResponse(500, "InternalError", f"Emulator error: {type(exc).__name__}")
            )
            if not req.response_started:
                await self._send(req, response, [], send)
        self._record(req, response, bool(fired))

    # ------------------------------------------------------------------ plumbing

    async def _dispatch(self, req: Request, fired: list[Fault]) -> Response:
        state = self.state
        if req.operation == "GetCallbackPublicKey":
            return Response(
                status=200,
                headers=[("Content-Type", "application/x-pem-file")],
                body=state.public_key_pem,
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
                state.credentials,
                region=state.region,
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
        await self._inject(req, fired)
        check_names(req)
        if req.operation == "PutBucket":
            return put_bucket(state, req)
        if req.bucket is not None and not state.store.bucket_exists(req.bucket):
            raise OSSErrorResponse(
                404,
                "NoSuchBucket",
                "The specified bucket does not exist.",
                [("BucketName", req.bucket)],
            )
        handler = HANDLERS.get(req.operation)
        if handler is None:
            raise OSSErrorResponse(
                501, "NotImplemented", "The OSS emulator does not implement this operation."
            )
        return await handler(state, req)

    @staticmethod
    async def _inject(req: Request, fired: list[Fault]) -> None:
        """The faults that act before the handler: delay, drop the connection, or answer
        an error status."""
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
            (b"date", http_date(time.time()).encode()),
            (b"server", b"AliyunOSS"),
            (b"x-oss-server-time", str(int((time.monotonic() - req.started) * 1000)).encode()),
        ]
        if response.status not in (204, 304) and not any(
            k.lower() == "content-length" for k, _ in headers
        ):
            raw_headers.append((b"content-length", str(length).encode()))
        raw_headers.extend((k.lower().encode("latin-1"), encode_header(v)) for k, v in headers)
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
        self.state.record_request(record)
        logger.debug(
            "oss emulator: %s %s %s -> %s (%s)",
            req.method,
            req.raw_path,
            req.operation,
            record.status,
            req.request_id,
        )
