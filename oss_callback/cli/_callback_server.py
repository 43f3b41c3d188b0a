"""``oss-callback callback-server``: the reference upload-callback server.

The code between the two ``README`` marker comments below is, character for character, the
FastAPI block of README.md's "Receiving callbacks" section (tests/cli/test_callback_server.py
checks it, and runs the README's copy against the emulator): what the command serves is
what the README shows. Below the block: the command's plumbing (its options become a
verifier and a bucket; uvicorn serves the app).

No ``from __future__ import annotations`` here: FastAPI resolves the route's
``Annotated[..., Depends(verified_callback)]`` parameter, defined inside ``create_app``,
from the real annotation.
"""
# ruff: noqa: E402 - the command's plumbing is imported after the README's code

# --- README "Receiving callbacks": begin ---
import json
import sqlite3
from contextlib import closing
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from oss_callback import Bucket
from oss_callback.fastapi import callback_dependency
from oss_callback.server import CallbackVerifier, VerifiedCallback

SCHEMA = """CREATE TABLE IF NOT EXISTS uploads (
    bucket TEXT NOT NULL, object TEXT NOT NULL, size INTEGER, etag TEXT,
    fields TEXT NOT NULL,        -- the whole callback body, as JSON
    confirmed INTEGER NOT NULL,  -- 1: checked against the bucket, 0: signature only
    received_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (bucket, object))"""


def shown(value: Any) -> str:
    """A value for the one-line log: as it is, or quoted if it has a line break (or any
    other unprintable character)."""
    text = str(value)
    return text if text.isprintable() else repr(text)


def create_app(verifier: CallbackVerifier, bucket: Bucket | None = None,
               db_path: str | None = None, path: str = "/oss-callback") -> FastAPI:
    """POST ``path``: verify each callback (and confirm it), print it, store it in SQLite."""
    # With your bucket, each callback must name an object stored there with this size and
    # etag: a callback OSS signed for another account's upload is refused. Without: the
    # signature only (OSS signs every customer's callbacks with the same key).
    verified_callback = callback_dependency(
        verifier, confirm_with=bucket, confirm_require=("size", "etag") if bucket else ())
    if db_path:
        with closing(sqlite3.connect(db_path)) as db:
            db.execute(SCHEMA)
    app = FastAPI()

    @app.post(path)  # a plain def: FastAPI runs it in a worker thread, SQLite may block
    def on_upload(cb: Annotated[VerifiedCallback, Depends(verified_callback)]) -> dict[str, Any]:
        if bucket is not None and cb.confirmed is not None:  # the stored object's metadata
            where, size, etag = bucket.name, cb.confirmed.size, cb.confirmed.etag
        else:  # what the signed body says
            where, size, etag = cb.get("bucket", ""), cb.get("size"), cb.get("etag")
        key = str(cb.get("object", ""))
        if db_path:  # one row per object (OSS may call twice; a new upload replaces it)
            with closing(sqlite3.connect(db_path)) as db, db:
                db.execute("INSERT OR REPLACE INTO uploads (bucket, object, size, etag, "
                           "fields, confirmed) VALUES (?, ?, ?, ?, ?, ?)",
                           (where, key, size, etag, json.dumps(cb.fields),
                            cb.confirmed is not None))
        others = [f"{shown(k)}={shown(v)}" for k, v in cb.fields.items()
                  if k not in ("bucket", "object", "size", "etag", "crc64")]
        print("stored" if db_path else "accepted", shown(f"oss://{where}/{key}"),
              f"size={shown(size)}", f"etag={shown(etag)}", *others,
              "(confirmed)" if cb.confirmed else "(signature only)", flush=True)
        # OSS hands this JSON back to the uploader (in its PutObjectResult.callback_body)
        return {"Status": "OK", "bucket": where, "object": key, "size": size, "etag": etag}

    @app.exception_handler(HTTPException)  # what callback_dependency raises: a refusal
    async def refused(request: Request, exc: HTTPException) -> JSONResponse:
        reason = getattr(exc.__cause__, "reason", "refused")  # the CallbackSignatureError's
        print("refused", f"{reason}:", exc.__cause__ or exc.detail, flush=True)
        return JSONResponse({"Status": "Refused", "reason": reason}, exc.status_code)

    return app
# --- README "Receiving callbacks": end ---


import argparse
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import uvicorn

from oss_callback.cli._common import UsageError
from oss_callback.protocol._errors import OSSError

__all__ = ["create_app", "serve"]

#: Where the emulator serves its callback key (``OSSEmulator.public_key_url``), under its URL.
EMULATOR_KEY_PATH = "/_emulator/"


def emulator_base(url: str) -> str:
    """``127.0.0.1:9000/`` -> ``http://127.0.0.1:9000``: the emulator's endpoint."""
    base = url.strip()
    return ("" if "://" in base else "http://") + base.rstrip("/")


def make_verifier(args: argparse.Namespace) -> tuple[CallbackVerifier, str]:
    """The verifier the options ask for, and which key it trusts."""
    if args.public_key:
        try:
            with open(args.public_key, "rb") as f:
                pem = f.read(64 * 1024)
        except OSError as e:
            raise UsageError(f"--public-key {args.public_key}: can't read it "
                             f"({e.strerror or e})") from None
        try:
            return CallbackVerifier(public_key=pem), f"the key pinned from {args.public_key}"
        except ValueError as e:
            raise UsageError(f"--public-key {args.public_key}: not an RSA public key in PEM "
                             f"({e})") from None
    if args.trust_emulator:
        prefix = emulator_base(args.trust_emulator) + EMULATOR_KEY_PATH
        try:
            verifier = CallbackVerifier(allowed_key_hosts=[prefix])
        except ValueError as e:
            raise UsageError(f"--trust-emulator {args.trust_emulator!r}: give the emulator's "
                             f"URL, e.g. http://127.0.0.1:9000 ({e})") from None
        return verifier, f"the emulator's key, from {prefix}"
    return CallbackVerifier(), "OSS's key, from https://gosspublic.alicdn.com"


def make_bucket(args: argparse.Namespace) -> tuple[Bucket | None, str]:
    """The bucket callbacks are confirmed against (``None``: signature only), and a note."""
    endpoint = args.endpoint or (args.trust_emulator and emulator_base(args.trust_emulator))
    name = args.bucket or os.environ.get("OSS_BUCKET")
    needed = []
    if not (os.environ.get("OSS_ACCESS_KEY_ID") and os.environ.get("OSS_ACCESS_KEY_SECRET")):
        needed.append("set OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET")
    if not endpoint:
        needed.append("pass --endpoint URL (or set OSS_ENDPOINT)")
    if not name:
        needed.append("pass --bucket NAME (or set OSS_BUCKET)")
    if needed and args.bucket:
        raise UsageError(f"--bucket {args.bucket}: to confirm callbacks against it, "
                         + " and ".join(needed))
    if needed or not name or not endpoint:
        return None, ("callbacks are only signature-checked, so one OSS signed for another "
                      "account's upload is accepted too; to confirm them against your bucket, "
                      + ", ".join(needed))
    try:
        bucket = Bucket(name, endpoint, region=args.region,
                        signature_version=args.signature_version)
    except (OSSError, ValueError) as e:
        raise UsageError(f"bucket {name!r} at {endpoint}: {e}") from None
    return bucket, (f"callbacks are confirmed against oss://{name} at {endpoint} (a HEAD with "
                    "the credentials in the environment)")


class _DropRefusalLogs(logging.Filter):
    """The server prints each refusal itself: skip callback_dependency's log of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("refused OSS callback")


@contextmanager
def _quiet_refusals() -> Iterator[None]:
    logger = logging.getLogger("oss_callback.server")
    drop = _DropRefusalLogs()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _AnnouncingServer(uvicorn.Server):
    """uvicorn, saying where it listens once it does (with ``--port 0`` the system picks)."""

    def __init__(self, config: uvicorn.Config, path: str, lines: list[str]) -> None:
        super().__init__(config)
        self._path, self._lines = path, lines

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"OSS callback server listening on http://{shown}:{port}{self._path}", flush=True)
        for line in self._lines:
            print(line, flush=True)


def serve(args: argparse.Namespace) -> int:
    """Run the server until interrupted (``UsageError``: options it can't start with)."""
    if not args.path.startswith("/"):
        raise UsageError(f"--path {args.path!r} must start with /")
    verifier, keys = make_verifier(args)
    bucket, confirming = make_bucket(args)
    try:
        try:
            app = create_app(verifier, bucket, args.db, path=args.path)
        except sqlite3.Error as e:
            raise UsageError(f"--db {args.db}: {e}") from None
        lines = [f"signatures checked with {keys}", confirming,
                 f"storing callbacks in SQLite: {args.db}" if args.db else
                 "not storing callbacks (--db FILE stores them in SQLite)"]
        config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="off",
                                log_config=None, access_log=False)
        server = _AnnouncingServer(config, args.path, lines)
        # Ctrl-C: uvicorn stops gracefully, then raises it again
        with _quiet_refusals(), suppress(KeyboardInterrupt):
            try:
                server.run()
            except SystemExit:  # uvicorn could not listen (its error is printed above)
                print(f"oss-callback callback-server: cannot listen on {args.host}:"
                      f"{args.port}; choose another --host or --port", file=sys.stderr)
                return 1
    finally:
        if bucket is not None:
            bucket.close()
    return 0
