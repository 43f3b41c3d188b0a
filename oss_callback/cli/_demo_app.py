"""The demo's callback server: a FastAPI app that verifies callbacks and records them.

Kept in its own module without ``from __future__ import annotations`` so that FastAPI can
resolve the ``Annotated[..., Depends(...)]`` parameters of routes defined in a function.
"""

import sqlite3
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from oss_callback.client._client import AsyncBucket
from oss_callback.client._sync import Bucket
from oss_callback.fastapi import callback_dependency
from oss_callback.server import CallbackVerifier, VerifiedCallback

__all__ = ["make_callback_app"]


def make_callback_app(
    verifier: CallbackVerifier,
    db: sqlite3.Connection,
    seen: list[dict[str, Any]],
    *,
    confirm_with: Bucket | AsyncBucket | None = None,
) -> FastAPI:
    """``POST /oss-callback`` records the upload in ``db``; ``/oss-callback-broken`` fails.

    With ``confirm_with`` (the demo's bucket: a sync :class:`~oss_callback.Bucket`, or an
    :class:`~oss_callback.AsyncBucket` of the loop serving the app), every callback is
    also confirmed against the stored object, and the row gets the stored size and etag
    rather than the body's (:meth:`VerifiedCallback.confirm`).
    """
    app = FastAPI()
    verified_callback = callback_dependency(verifier, confirm_with=confirm_with)

    @app.post("/oss-callback")
    async def on_upload(
        cb: Annotated[VerifiedCallback, Depends(verified_callback)],
    ) -> dict[str, Any]:
        fields = dict(cb.fields)
        seen.append(fields)
        size, etag = int(fields.get("size") or 0), fields.get("etag")
        if cb.confirmed is not None:  # the stored object's own metadata
            size, etag = cb.confirmed.size, cb.confirmed.etag
        cur = db.execute(
            "INSERT INTO uploads (bucket, object, size, etag, crc64, uid) VALUES (?,?,?,?,?,?)",
            (fields.get("bucket"), fields.get("object"), size, etag, fields.get("crc64"),
             fields.get("uid")),
        )
        db.commit()
        return {"Status": "OK", "recorded_id": cur.lastrowid}

    @app.post("/oss-callback-broken")
    async def broken(cb: Annotated[VerifiedCallback, Depends(verified_callback)]) -> JSONResponse:
        # a failing application server: OSS turns this into 203 CallbackFailed
        return JSONResponse({"error": "the database is down (on purpose)"}, status_code=500)

    return app
