"""FastAPI integration: a dependency that hands your route a verified OSS callback.

::

    from typing import Annotated

    from fastapi import Depends, FastAPI
    from oss_callback.fastapi import callback_dependency
    from oss_callback.server import CallbackVerifier, VerifiedCallback

    app = FastAPI()
    verified_callback = callback_dependency(CallbackVerifier())

    @app.post("/oss-callback")
    async def on_upload(cb: Annotated[VerifiedCallback, Depends(verified_callback)]):
        ...                          # cb.fields["object"], cb.fields["size"]
        return {"Status": "OK"}      # OSS hands this JSON back to the uploader

The dependency reads the raw body once (at most ``max_body_size`` bytes), verifies it and
parses it. A forged, tampered or unverifiable callback is answered ``400`` with the JSON
body ``{"detail": "invalid OSS callback"}`` before the route's code runs; the reason is
logged (logger ``oss_callback.server``), not sent back.

Note:
    FastAPI resolves ``Annotated[..., Depends(verified_callback)]`` by name. In a module
    with ``from __future__ import annotations``, define ``verified_callback`` at module
    level (not inside a function), or FastAPI can't find it and answers 422.

Needs FastAPI and ``cryptography``: ``pip install 'oss-callback[fastapi]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

try:
    from fastapi import HTTPException, Request
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "oss_callback.fastapi needs FastAPI; install it with: pip install 'oss-callback[fastapi]'"
    ) from exc

from ._verify import (
    CallbackSignatureError,
    CallbackVerifier,
    VerifiedCallback,
    verify_starlette_request,
)

__all__ = ["INVALID_CALLBACK_DETAIL", "callback_dependency"]

logger = logging.getLogger("oss_callback.server")

#: The ``detail`` of the 400 answer to every callback that fails verification.
INVALID_CALLBACK_DETAIL = "invalid OSS callback"


def callback_dependency(
    verifier: CallbackVerifier | None = None,
    *,
    status_code: int = 400,
) -> Callable[[Request], Awaitable[VerifiedCallback]]:
    """Make a FastAPI dependency that verifies the request as an OSS upload callback.

    Args:
        verifier: the verifier to use; ``None`` makes a default
            :class:`~oss_callback.server.CallbackVerifier` (keys fetched from
            ``gosspublic.alicdn.com`` and cached).
        status_code: the HTTP status answered to a callback that fails verification.

    Returns:
        An async dependency: use it as ``Depends(dependency)`` on the callback route. It
        returns the :class:`~oss_callback.server.VerifiedCallback`, or raises
        ``HTTPException(status_code)`` (JSON ``{"detail": "invalid OSS callback"}``) so
        the route never runs for a callback that isn't authentic.
    """
    active = verifier if verifier is not None else CallbackVerifier()

    async def verified_oss_callback(request: Request) -> VerifiedCallback:
        try:
            return await verify_starlette_request(active, request)
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
