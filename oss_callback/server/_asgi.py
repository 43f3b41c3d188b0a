"""Verifying a callback as ASGI or Starlette (and so FastAPI) receive it.

Both read the body as it streams, at most ``max_body_size`` bytes (a declared
``Content-Length`` over the limit is refused without reading anything), and verify the
request with its path as received (``raw_path``, percent-encoded), since that is what OSS
signed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from typing import Any, cast
from urllib.parse import quote

from oss_callback.server._errors import CallbackBodyError, CallbackSignatureError
from oss_callback.server._headers import _normalize_headers
from oss_callback.server._verified import VerifiedCallback
from oss_callback.server._verifier import CallbackVerifier

__all__ = ["verify_asgi", "verify_starlette_request"]


async def _read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    text = (declared or "").strip()
    if text.isascii() and text.isdigit() and int(text) > limit:
        raise CallbackBodyError(
            f"callback body of {int(text)} bytes exceeds max_body_size ({limit})",
            reason="body_too_large",
        )
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise CallbackBodyError(
                f"callback body exceeds max_body_size ({limit})", reason="body_too_large"
            )
    return bytes(data)


def _scope_path(scope: Mapping[str, Any]) -> bytes:
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.partition(b"?")[0]
    return quote(str(scope.get("path", "/")), safe="/!$&'()*+,;=:@-._~").encode("ascii")


async def verify_asgi(
    verifier: CallbackVerifier,
    scope: Mapping[str, Any],
    receive: Callable[[], Any],
) -> VerifiedCallback:
    """Read the body of an ASGI HTTP request (at most ``max_body_size``) and verify it.

    For plain ASGI applications: call it from the app with its ``scope`` and ``receive``.
    The path is taken from ``raw_path`` (as received, percent-encoded).

    Args:
        verifier: the verifier to use.
        scope: the ASGI HTTP scope.
        receive: the ASGI receive callable (the body is consumed).

    Returns:
        The verified callback.

    Raises:
        CallbackSignatureError: as :meth:`CallbackVerifier.verify`; a body over the limit
            raises :class:`CallbackBodyError` without being read to the end.
    """
    headers = _normalize_headers(scope.get("headers", ()))

    async def chunks() -> AsyncGenerator[bytes, None]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise CallbackBodyError("the client disconnected", reason="malformed_body")
            yield bytes(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async with contextlib.aclosing(chunks()) as body_chunks:  # closed even when refused early
        body = await _read_body(body_chunks, headers.get("content-length"),
                                verifier.max_body_size)
    return await verifier.verify(
        str(scope.get("method", "")),
        _scope_path(scope),
        scope.get("query_string", b""),
        headers,
        body,
    )


async def verify_starlette_request(verifier: CallbackVerifier, request: Any) -> VerifiedCallback:
    """Read a Starlette (or FastAPI) request's body, at most ``max_body_size``, and verify it.

    The body is streamed (a request over the limit is refused without reading it all) and
    then cached on the request, so ``await request.body()`` still works afterwards::

        async def on_upload(request: Request) -> Response:
            try:
                cb = await verify_starlette_request(verifier, request)
            except CallbackSignatureError:
                return JSONResponse({"error": "invalid OSS callback"}, status_code=400)
            return JSONResponse({"Status": "OK"})

    Args:
        verifier: the verifier to use.
        request: a ``starlette.requests.Request``.

    Returns:
        The verified callback.

    Raises:
        CallbackSignatureError: as :meth:`CallbackVerifier.verify`.
    """
    scope = request.scope
    try:
        body = await _read_body(
            request.stream(), request.headers.get("content-length"), verifier.max_body_size
        )
    except CallbackSignatureError:
        raise
    except Exception as exc:  # ClientDisconnect and the like: nothing to verify
        raise CallbackBodyError(
            f"reading the callback body failed: {type(exc).__name__}", reason="malformed_body"
        ) from exc
    request._body = body  # what Request.body() caches; keeps the body readable afterwards
    return await verifier.verify(
        request.method,
        _scope_path(scope),
        scope.get("query_string", b""),
        cast("Iterable[tuple[bytes, bytes]]", scope.get("headers", ())),
        body,
    )
