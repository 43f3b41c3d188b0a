"""FastAPI integration: a dependency that hands your route a verified OSS callback.

::

    from typing import Annotated

    from fastapi import Depends, FastAPI
    from oss_callback import Bucket
    from oss_callback.fastapi import callback_dependency
    from oss_callback.server import CallbackVerifier, VerifiedCallback

    app = FastAPI()
    bucket = Bucket("examplebucket", endpoint="https://oss-cn-hangzhou.aliyuncs.com")
    verified_callback = callback_dependency(CallbackVerifier(), confirm_with=bucket)

    @app.post("/oss-callback")
    async def on_upload(cb: Annotated[VerifiedCallback, Depends(verified_callback)]):
        ...                          # cb.fields["object"], cb.confirmed.size, cb.confirmed.etag
        return {"Status": "OK"}      # OSS hands this JSON back to the uploader

The dependency reads the raw body once (at most ``max_body_size`` bytes), verifies it and
parses it; with ``confirm_with=`` it also confirms that the callback is about an object
stored in that bucket (:meth:`~oss_callback.server.VerifiedCallback.confirm`: a signature
alone doesn't prove it, since OSS signs every customer's callbacks with one key). A forged,
tampered, unverifiable or unconfirmed callback is answered ``400`` with the JSON body
``{"detail": "invalid OSS callback"}`` before the route's code runs; the reason is logged
(logger ``oss_callback.server``), not sent back. The ``HTTPException`` is raised from the
:class:`~oss_callback.server.CallbackSignatureError`: an exception handler for
``HTTPException`` finds it (and its ``reason``) as ``exc.__cause__``.

Note:
    FastAPI resolves ``Annotated[..., Depends(verified_callback)]`` by name. In a module
    with ``from __future__ import annotations``, define ``verified_callback`` at module
    level (not inside a function), or FastAPI can't find it and answers 422.

Needs FastAPI and ``cryptography``: ``pip install 'oss-callback[fastapi]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import attrs

try:
    from fastapi import HTTPException, Request
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "oss_callback.fastapi needs FastAPI; install it with: pip install 'oss-callback[fastapi]'"
    ) from exc

from oss_callback.client._client import AsyncBucket
from oss_callback.client._sync import Bucket
from oss_callback.server._asgi import verify_starlette_request
from oss_callback.server._errors import CallbackSignatureError
from oss_callback.server._verified import VerifiedCallback, _required_fields
from oss_callback.server._verifier import CallbackVerifier

__all__ = ["INVALID_CALLBACK_DETAIL", "callback_dependency"]

logger = logging.getLogger("oss_callback.server")

#: The ``detail`` of the 400 answer to every callback that fails verification.
INVALID_CALLBACK_DETAIL = "invalid OSS callback"


def callback_dependency(
    verifier: CallbackVerifier | None = None,
    *,
    status_code: int = 400,
    confirm_with: AsyncBucket | Bucket | None = None,
    confirm_require: Iterable[str] = (),
) -> Callable[[Request], Awaitable[VerifiedCallback]]:
    """Make a FastAPI dependency that verifies the request as an OSS upload callback.

    Args:
        verifier: the verifier to use; ``None`` makes a default
            :class:`~oss_callback.server.CallbackVerifier` (keys fetched from
            ``gosspublic.alicdn.com`` and cached).
        status_code: the HTTP status answered to a callback that fails verification or
            confirmation.
        confirm_with: your bucket: every verified callback is then confirmed against it
            (:meth:`VerifiedCallback.confirm <oss_callback.server.VerifiedCallback.confirm>`:
            the object named in the body exists in this bucket, and the body's ``bucket``,
            ``size``, ``etag`` and ``crc64``, those it has, match) before the route runs,
            and the route gets the stored object's metadata as ``cb.confirmed``. A sync
            :class:`~oss_callback.Bucket` works whatever loop or thread serves the app (its
            HEAD runs in a worker thread); an :class:`~oss_callback.AsyncBucket` must be
            used on the event loop that serves the app. Recommended: without it, a callback
            OSS signed for an upload to *another* account's bucket is accepted.
        confirm_require: body fields that must be present besides ``object`` (any of
            ``"bucket"``, ``"size"``, ``"etag"``, ``"crc64"``): those your ``Callback``
            body template always has.

    Returns:
        An async dependency: use it as ``Depends(dependency)`` on the callback route. It
        returns the :class:`~oss_callback.server.VerifiedCallback`, or raises
        ``HTTPException(status_code)`` (JSON ``{"detail": "invalid OSS callback"}``) so
        the route never runs for a callback that isn't authentic (or not confirmed).

    Raises:
        ValueError: ``confirm_require`` names a field that can't be confirmed.
        TypeError: ``confirm_require`` without ``confirm_with``, or ``confirm_with`` is
            not a bucket.
    """
    active = verifier if verifier is not None else CallbackVerifier()
    require = _required_fields(confirm_require)
    if confirm_with is None and require:
        raise TypeError("confirm_require= needs confirm_with=bucket")
    if confirm_with is not None and not isinstance(confirm_with, AsyncBucket | Bucket):
        raise TypeError(
            "confirm_with must be an oss_callback.AsyncBucket or Bucket, got "
            f"{type(confirm_with).__name__}"
        )

    async def verified_oss_callback(request: Request) -> VerifiedCallback:
        try:
            cb = await verify_starlette_request(active, request)
            if confirm_with is not None:
                head = await cb.confirm(confirm_with, require=require)
                cb = attrs.evolve(cb, confirmed=head)
            return cb
        except CallbackSignatureError as exc:
            logger.warning(
                "refused OSS callback %s %r: %s (%s)",
                request.method,
                request.url.path,
                exc.reason,
                exc,
            )
            raise HTTPException(status_code=status_code, detail=INVALID_CALLBACK_DETAIL) from exc

    return verified_oss_callback
