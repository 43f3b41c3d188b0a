"""An OSS upload-callback server: FastAPI verifies each callback, confirms it, records it.

Run it::

    pip install 'oss-callback[fastapi]' uvicorn
    export OSS_BUCKET=examplebucket OSS_ENDPOINT=https://oss-cn-hangzhou.aliyuncs.com
    export OSS_ACCESS_KEY_ID=... OSS_ACCESS_KEY_SECRET=...     # read access to the bucket
    uvicorn --factory examples.fastapi_sqlite:app_from_env --host 0.0.0.0 --port 8000

and upload with a callback pointing at it, asking for the fields the handler records::

    from oss_callback import Callback

    cb = Callback(
        url="https://your-server.example.com/oss-callback",
        body="bucket=${bucket}&object=${object}&size=${size}&etag=${etag}"
             "&mimeType=${mimeType}&uid=${x:uid}",
        variables={"x:uid": "42"},
    )
    result = await bucket.put_object("photos/cat.jpg", data, callback=cb)
    result.callback_json()      # {"Status": "OK", "id": 1, ...}: this handler's reply

Configuration (environment variables):

``OSS_BUCKET`` (required)
    Your bucket. Every callback is *confirmed* against it before it is recorded: the
    object it names must exist there, with the size and etag it claims (a signature alone
    proves only that OSS sent the body: OSS signs every customer's callbacks with one key,
    so a callback signed for someone else's upload would verify too).
``OSS_ENDPOINT``, ``OSS_REGION``, ``OSS_ACCESS_KEY_ID``, ``OSS_ACCESS_KEY_SECRET``
    Where the bucket is, and credentials that may HEAD its objects (read by
    :class:`oss_callback.Bucket` itself).
``OSS_CALLBACK_DB``
    The SQLite file (default ``uploads.db``).
``OSS_CALLBACK_PUBLIC_KEY``
    A PEM file to pin the key to (e.g. the emulator's ``emu.public_key_pem``); then no key
    is ever fetched.
``OSS_CALLBACK_KEY_HOSTS``
    Comma-separated hosts/URL prefixes the ``x-oss-pub-key-url`` may point at (default
    ``gosspublic.alicdn.com``; ``127.0.0.1:9000`` for a local emulator).

A forged, tampered or unconfirmed callback is answered 400 before the handler runs, and
the row records the stored object's size and etag (from the confirmation), not the body's.
The same upload may be reported twice (callbacks can be replayed), so rows are keyed on
bucket, object and etag.
"""

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI

from oss_callback import AsyncBucket, Bucket
from oss_callback.fastapi import callback_dependency
from oss_callback.server import DEFAULT_KEY_HOSTS, CallbackVerifier, VerifiedCallback

SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    bucket      TEXT NOT NULL,
    object      TEXT NOT NULL,
    size        INTEGER,
    etag        TEXT NOT NULL DEFAULT '',
    mime_type   TEXT,
    variables   TEXT NOT NULL DEFAULT '{}',   -- every other body field, as JSON
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (bucket, object, etag)
)
"""

#: Body fields stored in their own columns; everything else lands in ``variables``.
KNOWN_FIELDS = ("bucket", "object", "size", "etag", "mimeType")


@contextmanager
def connect(db_path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """Open the database (creating the table), commit on success, always close."""
    conn = sqlite3.connect(db_path)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(SCHEMA)
        with conn:
            yield conn
    finally:
        conn.close()


def record_upload(
    db_path: str | os.PathLike[str], cb: VerifiedCallback, bucket_name: str
) -> dict[str, Any]:
    """Store (or find again) the upload a verified, confirmed callback reports; return its row.

    The size and etag come from the confirmation (the stored object), not from the body.
    """
    if cb.confirmed is None:
        raise ValueError("record_upload() needs a confirmed callback (confirm_with=bucket)")
    variables = {k: v for k, v in cb.fields.items() if k not in KNOWN_FIELDS}
    row = (
        bucket_name,
        str(cb["object"]),
        cb.confirmed.size,
        cb.confirmed.etag,
        cb.get("mimeType"),
        json.dumps(variables, ensure_ascii=False, sort_keys=True),
    )
    with connect(db_path) as conn:
        conn.execute(
            "INSERT INTO uploads (bucket, object, size, etag, mime_type, variables) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, object, etag) DO NOTHING",
            row,
        )
        stored = conn.execute(
            "SELECT * FROM uploads WHERE bucket = ? AND object = ? AND etag = ?",
            (row[0], row[1], row[3]),
        ).fetchone()
    return _row_dict(stored)


def list_uploads(db_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every recorded upload, oldest first."""
    with connect(db_path) as conn:
        rows = conn.execute("SELECT * FROM uploads ORDER BY id").fetchall()
    return [_row_dict(r) for r in rows]


def _row_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["variables"] = json.loads(out["variables"])
    return out


def verifier_from_env() -> CallbackVerifier:
    """Build the verifier from ``OSS_CALLBACK_PUBLIC_KEY`` / ``OSS_CALLBACK_KEY_HOSTS``."""
    key_file = os.environ.get("OSS_CALLBACK_PUBLIC_KEY")
    hosts_env = os.environ.get("OSS_CALLBACK_KEY_HOSTS", "")
    hosts = tuple(h.strip() for h in hosts_env.split(",") if h.strip()) or DEFAULT_KEY_HOSTS
    public_key = Path(key_file).read_bytes() if key_file else None
    return CallbackVerifier(public_key=public_key, allowed_key_hosts=hosts)


def create_app(
    db_path: str | os.PathLike[str],
    bucket: Bucket | AsyncBucket,
    verifier: CallbackVerifier | None = None,
) -> FastAPI:
    """The application: ``POST /oss-callback`` (what OSS calls) and ``GET /uploads``.

    Every callback is verified (``verifier``) and then confirmed against ``bucket``: a sync
    :class:`~oss_callback.Bucket` works whatever loop serves the app; an
    :class:`~oss_callback.AsyncBucket` must belong to the serving loop.
    """
    app = FastAPI(title="OSS upload callbacks")
    app.state.bucket = bucket  # e.g. to close it on shutdown
    verified_callback = callback_dependency(
        verifier or CallbackVerifier(),
        confirm_with=bucket,
        confirm_require=("size", "etag"),  # the template below always sends them
    )

    # A plain ``def``: FastAPI runs it in a worker thread, so SQLite doesn't block the loop.
    @app.post("/oss-callback")
    def on_upload(cb: Annotated[VerifiedCallback, Depends(verified_callback)]) -> dict[str, Any]:
        row = record_upload(db_path, cb, bucket.name)
        # OSS passes this JSON back to the uploader (PutObjectResult.callback_body).
        return {"Status": "OK", "id": row["id"], "object": row["object"], "size": row["size"]}

    @app.get("/uploads")
    def uploads() -> list[dict[str, Any]]:
        return list_uploads(db_path)

    return app


def app_from_env() -> FastAPI:
    """The app configured from the environment (``uvicorn --factory ...:app_from_env``)."""
    name = os.environ.get("OSS_BUCKET")
    if not name:
        raise RuntimeError("set OSS_BUCKET to the bucket whose uploads this server records")
    bucket = Bucket(name)  # endpoint, region and credentials from OSS_* variables
    return create_app(os.environ.get("OSS_CALLBACK_DB", "uploads.db"), bucket,
                      verifier_from_env())


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app_from_env(), host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
