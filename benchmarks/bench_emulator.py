"""Ingest throughput of the OSS emulator.

Compares, for one object of ``--size`` bytes:

* ``discard``: the same uvicorn stack (uvloop + httptools, same socket setup) with an ASGI
  app that reads the body and throws it away: the ceiling for the emulator;
* ``PutObject``: one ``curl -T`` upload into the emulator (presigned V1 URL), which streams
  the body to disk while computing MD5 and CRC-64 (on worker threads, pipelined);
* ``multipart``: the same bytes as parts uploaded concurrently by Python (httpx) threads,
  then CompleteMultipartUpload (timed separately too: it renames the part files into the
  object, copying nothing);
* ``GetObject``: ``curl -o /dev/null`` download, for reference (a multipart one too).

Each emulator scenario runs twice: with the faithful default (``etag="md5"``: ETags are
MD5s, as on OSS) and with the opt-in ``etag="fast"`` mode (no MD5 unless the client sends
``Content-MD5``; ETags from CRC-64 and size).  ``x discard`` is the wall time relative to
the discard app, ``x put`` relative to ``curl -T`` PutObject into the same mode.

Usage::

    python benchmarks/bench_emulator.py            # 1 GiB
    python benchmarks/bench_emulator.py --quick    # 128 MiB
    python benchmarks/bench_emulator.py --size 512M --part-size 32M --concurrency 4
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import hashlib
import hmac
import os
import shutil
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._signing import sign_v4
from oss_callback.testing import OSSEmulator

BUCKET = "bench-bucket"
MiB = 1024 * 1024


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": MiB, "G": 1024 * MiB}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def make_file(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, MiB)
            f.write(block[:n] if n < MiB else block)
            left -= n


def presigned_v1(emu: OSSEmulator, method: str, key: str, expires_in: int = 3600) -> str:
    expires = str(int(time.time()) + expires_in)
    sts = f"{method}\n\n\n{expires}\n/{BUCKET}/{key}"
    sig = base64.b64encode(
        hmac.new(emu.access_key_secret.encode(), sts.encode(), hashlib.sha1).digest()
    ).decode()
    return (
        f"{emu.endpoint}/{BUCKET}/{quote(key)}?OSSAccessKeyId={emu.access_key_id}"
        f"&Expires={expires}&Signature={quote(sig, safe='')}"
    )


def curl_put(url: str, path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-H",
            "Expect:",
            "-H",
            "Content-Type:",
            "-T",
            str(path),
            url,
        ],
        check=True,
    )
    return time.perf_counter() - started


def curl_get(url: str) -> float:
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", url], check=True)
    return time.perf_counter() - started


def httpx_put(url: str, path: Path, headers: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    with open(path, "rb") as f, httpx.Client(trust_env=False, timeout=600) as client:
        client.put(url, content=_chunks(f, 0, path.stat().st_size), headers=headers or {})
    return time.perf_counter() - started


def _chunks(f: Any, start: int, length: int, size: int = MiB) -> Iterator[bytes]:
    f.seek(start)
    while length:
        data = f.read(min(size, length))
        if not data:
            return
        length -= len(data)
        yield data


class DiscardServer:
    """The emulator's uvicorn setup serving an app that only reads and drops the body."""

    def __init__(self) -> None:
        import uvicorn

        from oss_callback.testing._server import _bind, _http_impl, _new_event_loop

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})

        self.sock = _bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self.server = _Server(
            uvicorn.Config(
                app, http=_http_impl(), lifespan="off", log_config=None, access_log=False
            )
        )

        def run() -> None:
            loop = _new_event_loop()
            loop.run_until_complete(self.server.serve(sockets=[self.sock]))
            loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.005)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()


def signed_headers(
    emu: OSSEmulator, method: str, key: str, query: list[tuple[str, str]]
) -> dict[str, str]:
    headers: dict[str, str] = {}
    creds = Credentials(access_key_id=emu.access_key_id, access_key_secret=emu.access_key_secret)
    sign_v4(method, BUCKET, key, query, headers, creds, datetime.now(timezone.utc), emu.region)
    return headers


def multipart(
    emu: OSSEmulator, path: Path, key: str, part_size: int, concurrency: int
) -> tuple[float, float, int]:
    size = path.stat().st_size
    started = time.perf_counter()
    with httpx.Client(
        trust_env=False, timeout=600, limits=httpx.Limits(max_connections=concurrency)
    ) as client:
        q = [("uploads", "")]
        r = client.post(
            f"{emu.endpoint}/{BUCKET}/{key}?uploads", headers=signed_headers(emu, "POST", key, q)
        )
        r.raise_for_status()
        upload_id = ET.fromstring(r.content).findtext("UploadId") or ""
        count = (size + part_size - 1) // part_size

        def put_part(n: int) -> tuple[int, str]:
            query = [("partNumber", str(n)), ("uploadId", upload_id)]
            start = (n - 1) * part_size
            length = min(part_size, size - start)
            with open(path, "rb") as f:
                resp = client.put(
                    f"{emu.endpoint}/{BUCKET}/{key}?partNumber={n}&uploadId={upload_id}",
                    content=_chunks(f, start, length),
                    headers={
                        **signed_headers(emu, "PUT", key, query),
                        "Content-Length": str(length),
                    },
                )
            resp.raise_for_status()
            return n, resp.headers["etag"]

        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            etags = sorted(pool.map(put_part, range(1, count + 1)))
        body = (
            "<CompleteMultipartUpload>"
            + "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in etags
            )
            + "</CompleteMultipartUpload>"
        )
        complete_started = time.perf_counter()
        q = [("uploadId", upload_id)]
        r = client.post(
            f"{emu.endpoint}/{BUCKET}/{key}?uploadId={upload_id}",
            content=body,
            headers=signed_headers(emu, "POST", key, q),
        )
        r.raise_for_status()
        done = time.perf_counter()
    return done - started, done - complete_started, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=parse_size, default=1024 * MiB, help="object size (default 1G)"
    )
    parser.add_argument("--quick", action="store_true", help="128 MiB")
    parser.add_argument("--part-size", type=parse_size, default=16 * MiB, help="default 16M")
    parser.add_argument("--concurrency", type=int, default=4, help="parts in flight (default 4)")
    parser.add_argument(
        "--etag",
        choices=("md5", "fast", "both"),
        default="both",
        help="emulator ETag mode(s) to run (default both, in separate rows)",
    )
    args = parser.parse_args(argv)
    size = 128 * MiB if args.quick else args.size
    have_curl = shutil.which("curl") is not None
    how = "curl -T" if have_curl else "httpx"
    rows: list[tuple[str, float, str, float | None, float | None]] = []
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        src = Path(tmp) / "src.bin"
        make_file(src, size)
        discard = DiscardServer()
        try:
            url = f"http://127.0.0.1:{discard.port}/x"
            discard_s = curl_put(url, src) if have_curl else httpx_put(url, src)
            rows.append(("discard app (same uvicorn stack)", discard_s, how, 1.0, None))
        finally:
            discard.close()
        modes = ("md5", "fast") if args.etag == "both" else (args.etag,)
        for mode in modes:
            label = "emulator" if mode == "md5" else "emulator etag=fast"
            data_dir = Path(tmp) / f"data-{mode}"
            with OSSEmulator(buckets=[BUCKET], data_dir=data_dir, etag=mode) as emu:
                url = presigned_v1(emu, "PUT", "put.bin")
                put_s = curl_put(url, src) if have_curl else httpx_put(url, src)
                obj = emu.head_object(BUCKET, "put.bin")
                assert obj is not None and obj.size == size, "PutObject stored the wrong size"
                note = f"{how}; ETag = " + ("MD5 (faithful)" if mode == "md5" else "CRC-64+size")
                rows.append((f"{label} PutObject", put_s, note, put_s / discard_s, 1.0))
                total, complete, count = multipart(
                    emu, src, "multi.bin", args.part_size, args.concurrency
                )
                obj = emu.head_object(BUCKET, "multi.bin")
                assert obj is not None and obj.size == size, "multipart stored the wrong size"
                rows.append(
                    (
                        f"{label} multipart ({count} parts x {args.part_size // MiB} MiB, "
                        f"{args.concurrency} in flight, httpx)",
                        total,
                        "incl. Complete",
                        total / discard_s,
                        total / put_s,
                    )
                )
                rows.append(
                    ("  of which CompleteMultipartUpload", complete, "renames parts", None, None)
                )
                if have_curl and mode == modes[0]:
                    for key in ("put.bin", "multi.bin"):
                        rows.append(
                            (
                                f"{label} GetObject ({key})",
                                curl_get(presigned_v1(emu, "GET", key)),
                                "curl -o /dev/null",
                                None,
                                None,
                            )
                        )
    width = max(len(r[0]) for r in rows)
    print(f"object size: {size / MiB:.0f} MiB; {os.cpu_count()} CPUs")
    head = f"{'seconds':>8}  {'MiB/s':>8}  {'x discard':>9}  {'x put':>6}"
    print(f"{'scenario':<{width}}  {head}  note")
    for name, seconds, note, x_discard, x_put in rows:
        xd = f"{x_discard:.2f}x" if x_discard is not None else "-"
        xp = f"{x_put:.2f}x" if x_put is not None else "-"
        speed = size / MiB / seconds
        print(f"{name:<{width}}  {seconds:8.3f}  {speed:8.0f}  {xd:>9}  {xp:>6}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
