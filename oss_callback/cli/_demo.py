"""``oss-callback demo``: the whole upload-callback flow on this machine, no cloud account.

It starts the embedded OSS emulator and a FastAPI callback server (which verifies OSS's
RSA signature and records each upload in SQLite), uploads a multi-part file with
``resumable_upload`` and a callback, shows both sides, then repeats against a failing
callback server to show :class:`CallbackError`.  Everything is stopped and removed at exit.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx

from oss_callback.cli._progress import ProgressDisplay
from oss_callback.client._client import AsyncClient
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._crc64 import CRC64
from oss_callback.protocol._errors import CallbackError

__all__ = ["run_demo"]

MiB = 1024 * 1024
FILE_SIZE = 40 * MiB
PART_SIZE = 8 * MiB
BUCKET = "demo-bucket"
KEY = "uploads/demo-video.bin"


class _Out:
    """Rich output when available (and a TTY), plain text otherwise."""

    def __init__(self) -> None:
        self.console: Any = None
        try:
            from rich.console import Console

            self.console = Console(highlight=False)
        except ImportError:  # pragma: no cover - rich is in the cli extra
            self.console = None

    def step(self, text: str) -> None:
        if self.console is not None:
            self.console.print(f"\n[bold cyan]>[/] [bold]{text}[/]")
        else:
            print(f"\n> {text}", flush=True)

    def line(self, text: str) -> None:
        if self.console is not None:
            self.console.print(f"  {text}", markup=False)
        else:
            print(f"  {text}", flush=True)

    def progress(self) -> ProgressDisplay:
        return ProgressDisplay("  uploading", sys.stdout, quiet=False)


def run_demo() -> int:
    """Run the demo; returns the process exit code."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        from oss_callback.server import CallbackVerifier  # noqa: F401
        from oss_callback.testing import OSSEmulator  # noqa: F401
    except ImportError as e:
        print(
            f"oss-callback demo needs the optional extras ({e.name} is missing): "
            "pip install 'oss-callback[all]'",
            file=sys.stderr,
        )
        return 2
    return anyio.run(_demo)


async def _demo() -> int:
    from oss_callback.cli._demo_app import make_callback_app
    from oss_callback.client._sync import Bucket
    from oss_callback.server import CallbackVerifier
    from oss_callback.testing import OSSEmulator, ServeASGI

    out = _Out()
    out.line("oss_callback demo: upload with a callback, verify it, see both sides.")
    with tempfile.TemporaryDirectory(prefix="oss-callback-demo-") as tmp:
        async with OSSEmulator(buckets=[BUCKET], data_dir=Path(tmp) / "oss") as emu:
            out.step(f"OSS emulator listening on {emu.endpoint} (bucket {BUCKET})")
            # The emulator's key, pinned: nothing to fetch (and no proxy from the environment
            # to fetch it through); with real OSS the verifier fetches and caches OSS's key.
            verifier = CallbackVerifier(public_key=emu.public_key_pem)
            db = sqlite3.connect(":memory:", check_same_thread=False)
            db.execute("CREATE TABLE uploads (id INTEGER PRIMARY KEY, bucket TEXT, object TEXT,"
                       " size INTEGER, etag TEXT, crc64 TEXT, uid TEXT)")
            seen: list[dict[str, Any]] = []
            # The app's own view of its bucket: each callback is confirmed against the stored
            # object, so a genuinely signed callback replayed from another account is refused.
            confirm_bucket = Bucket(BUCKET, emu.endpoint, emu.access_key_id,
                                    emu.access_key_secret, region=emu.region,
                                    http_client=httpx.AsyncClient(trust_env=False, timeout=60))
            app = make_callback_app(verifier, db, seen, confirm_with=confirm_bucket)
            with confirm_bucket, ServeASGI(app) as server:
                out.step(f"Callback server (FastAPI) at {server.url}/oss-callback")
                out.line("it verifies OSS's RSA signature, confirms the object against the "
                         "bucket (HEAD with its own keys) and records each upload in SQLite")
                path = Path(tmp) / "demo-video.bin"
                crc = await anyio.to_thread.run_sync(_make_file, path, FILE_SIZE)
                out.step(f"Created {path.name}: {FILE_SIZE // MiB} MiB = "
                         f"{FILE_SIZE // PART_SIZE} parts of {PART_SIZE // MiB} MiB")
                code = await _upload(out, emu, server.url, path, crc, seen, db)
            db.close()
        out.step("Done: emulator and callback server stopped, temporary files removed.")
    return code


def _make_file(path: Path, size: int) -> int:
    h = CRC64()
    with path.open("wb") as f:
        for _ in range(size // MiB):
            block = os.urandom(MiB)
            h.update(block)
            f.write(block)
    return h.value


async def _upload(out: _Out, emu: Any, server_url: str, path: Path, crc: int,
                  seen: list[dict[str, Any]], db: sqlite3.Connection) -> int:
    body = ("bucket=${bucket}&object=${object}&size=${size}&etag=${etag}&crc64=${crc64}"
            "&uid=${x:uid}")
    # The emulator is on this machine: never through a proxy set in the environment.
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http, AsyncClient(
            emu.endpoint, emu.access_key_id, emu.access_key_secret, region=emu.region,
            http_client=http) as client:
        bucket = client.get_bucket(BUCKET)
        callback = Callback(server_url + "/oss-callback", body=body, variables={"x:uid": "42"})
        out.step(f"resumable_upload -> oss://{BUCKET}/{KEY}, 4 parts in flight, callback on "
                 "CompleteMultipartUpload")
        with out.progress() as progress:
            result = await bucket.resumable_upload(
                KEY, path, callback=callback, part_size=PART_SIZE, concurrency=4,
                disable_checkpoint=True, progress=progress,
            )
        out.step("The callback server received and verified:")
        for name, value in seen[-1].items():
            out.line(f"{name:>7} = {value}")
        row = db.execute("SELECT id, object, size FROM uploads ORDER BY id DESC").fetchone()
        out.line(f"and stored it in SQLite as row {row[0]} ({row[1]}, {row[2]} bytes)")
        out.step("The uploader got back:")
        out.line(f"etag          = {result.etag}")
        out.line(f"upload_id     = {result.upload_id}")
        out.line(f"callback_body = {result.callback_body!r}")
        match = "match" if result.crc64 == crc else "MISMATCH"
        out.line(f"CRC-64: local file {crc}, OSS {result.crc64} -> {match}")
        if result.crc64 != crc:
            return 1

        out.step("Again, with a callback server that fails (it answers HTTP 500):")
        broken = Callback(server_url + "/oss-callback-broken", body=body,
                          variables={"x:uid": "43"})
        try:
            await bucket.resumable_upload(KEY + ".2", path, callback=broken,
                                          part_size=PART_SIZE, disable_checkpoint=True)
        except CallbackError as e:
            out.line(f"CallbackError: {e}")
            head = await bucket.head_object(KEY + ".2")
            out.line(f"the object is stored all the same: {head.size} bytes, "
                     f"etag {e.result.etag}, crc64 {e.result.crc64} "
                     f"({'match' if e.result.crc64 == crc else 'MISMATCH'})")
        else:
            out.line("unexpected: the failing callback did not raise CallbackError")
            return 1
    return 0
