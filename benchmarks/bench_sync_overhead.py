"""What the sync facade costs over the async API: many small puts, and large uploads.

The server runs in a separate process so it doesn't share the GIL with the client being
measured: the OSS emulator (``python -m oss_callback.testing``) by default, or with
``--server discard`` a tiny keep-alive HTTP server that reads and discards every body.

Each scenario runs the same work through ``AsyncBucket`` (awaited on one event loop) and
through ``Bucket`` (called from plain threads), best of ``--repeat`` runs, and reports the
sync/async time ratio and the per-call overhead of the portal hop.

    python benchmarks/bench_sync_overhead.py [--server emulator|discard] [--small 1000]
        [--small-size 1024] [--threads 16] [--large-mib 128] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio

from oss_callback import AsyncBucket, AsyncClient, Bucket, Client

BUCKET = "bench"
REGION = "cn-hangzhou"


# --------------------------------------------------------------------------- servers


class _DiscardHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        while length > 0:
            chunk = self.rfile.read(min(length, 1024 * 1024))
            if not chunk:
                break
            length -= len(chunk)
        body = b""
        if self.command == "POST" and "uploads" in self.path:
            body = (b"<?xml version='1.0'?><InitiateMultipartUploadResult><Bucket>bench"
                    b"</Bucket><Key>k</Key><UploadId>U1</UploadId>"
                    b"</InitiateMultipartUploadResult>")
        elif self.command == "POST":
            body = (b"<?xml version='1.0'?><CompleteMultipartUploadResult><ETag>\"E\"</ETag>"
                    b"</CompleteMultipartUploadResult>")
        self.send_response(200)
        self.send_header("ETag", '"D41D8CD98F00B204E9800998ECF8427E"')
        self.send_header("x-oss-request-id", "DISCARD")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_PUT = do_POST = do_GET = do_HEAD = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_discard() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DiscardHandler)
    server.daemon_threads = True
    print(f"discard server listening on http://127.0.0.1:{server.server_address[1]}",
          flush=True)
    server.serve_forever()


@contextmanager
def server_process(kind: str) -> Iterator[tuple[str, str, str]]:
    """Start the server in a child process; yield (endpoint, access key id, secret)."""
    if kind == "emulator":
        from oss_callback.testing import DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET

        cmd = [sys.executable, "-m", "oss_callback.testing", "--port", "0", "--bucket", BUCKET,
               "--region", REGION]
        creds = (DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET)
        env = {k: v for k, v in os.environ.items()
               if k not in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET")}
    else:
        cmd = [sys.executable, __file__, "--serve-discard"]
        creds = ("bench-id", "bench-secret")
        env = dict(os.environ)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "listening on " not in line:
            raise RuntimeError(f"the {kind} server did not start: {line!r}")
        yield line.rsplit("listening on ", 1)[1].strip(), *creds
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- scenarios


def best_of(repeat: int, run: Callable[[], float]) -> float:
    run()  # warm up: connections, the page cache
    return min(run() for _ in range(repeat))


async def abest_of(repeat: int, body: Callable[[], Awaitable[None]]) -> float:
    async def run() -> float:
        t0 = time.perf_counter()
        await body()
        return time.perf_counter() - t0

    await run()
    return min([await run() for _ in range(repeat)])


def timed(fn: Callable[[], None]) -> Callable[[], float]:
    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=["emulator", "discard"], default="emulator")
    parser.add_argument("--small", type=int, default=1000, help="number of small puts")
    parser.add_argument("--small-size", type=int, default=1024, help="bytes per small put")
    parser.add_argument("--threads", type=int, default=16, help="threads/tasks in parallel")
    parser.add_argument("--large-mib", type=int, default=128, help="size of the large upload")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--serve-discard", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_discard:
        serve_discard()
        return 0

    small = os.urandom(args.small_size)
    large = os.urandom(args.large_mib * 1024 * 1024)
    keys = [f"small/{i:06d}" for i in range(args.small)]

    with server_process(args.server) as (endpoint, key_id, secret), \
            tempfile.TemporaryDirectory() as tmp:
        big_file = os.path.join(tmp, "large.bin")
        with open(big_file, "wb") as f:
            f.write(large)
        kwargs: dict[str, Any] = {"region": REGION}

        async def a_seq(b: AsyncBucket) -> None:
            for k in keys:
                await b.put_object(k, small)

        async def a_par(b: AsyncBucket) -> None:
            it = iter(keys)

            async def worker() -> None:
                for k in it:
                    await b.put_object(k, small)

            async with anyio.create_task_group() as tg:
                for _ in range(args.threads):
                    tg.start_soon(worker)

        async def a_large(b: AsyncBucket) -> None:
            await b.put_object("large/put", large)

        async def a_resumable(b: AsyncBucket) -> None:
            await b.resumable_upload("large/resumable", big_file, disable_checkpoint=True)

        async_bodies = [a_seq, a_par, a_large, a_resumable]

        # --- async: one client on one event loop, as an async program would
        async def async_suite() -> list[float]:
            async with AsyncClient(endpoint, key_id, secret, **kwargs) as aclient:
                b = aclient.get_bucket(BUCKET)
                return [await abest_of(args.repeat, functools.partial(body, b))
                        for body in async_bodies]

        async_times = asyncio.run(async_suite())

        # --- sync: one client called from plain threads, as a script would
        with Client(endpoint, key_id, secret, **kwargs) as client:
            sb: Bucket = client.get_bucket(BUCKET)

            def s_seq() -> None:
                for k in keys:
                    sb.put_object(k, small)

            def s_par() -> None:
                with ThreadPoolExecutor(args.threads) as pool:
                    list(pool.map(lambda k: sb.put_object(k, small), keys))

            def s_large() -> None:
                sb.put_object("large/put", large)

            def s_resumable() -> None:
                sb.resumable_upload("large/resumable", big_file, disable_checkpoint=True)

            sync_times = [best_of(args.repeat, timed(fn))
                          for fn in (s_seq, s_par, s_large, s_resumable)]

            # the bare portal hop: a call that does no I/O at all
            async def nothing() -> None:
                return None

            hops = 5000
            t0 = time.perf_counter()
            for _ in range(hops):
                client._portal.call("nothing", nothing)
            hop = (time.perf_counter() - t0) / hops

        names = [
            (f"{args.small} x {args.small_size} B put, sequential", args.small),
            (f"{args.small} x {args.small_size} B put, {args.threads} in parallel", args.small),
            (f"1 x {args.large_mib} MiB put_object", 1),
            (f"1 x {args.large_mib} MiB resumable_upload", 1),
        ]
        results = [(n, ta, ts, c)
                   for (n, c), ta, ts in zip(names, async_times, sync_times, strict=True)]

    print(f"server: {args.server} ({endpoint}), python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, best of {args.repeat}")
    print(f"{'scenario':<44} {'async s':>9} {'sync s':>9} {'sync/async':>11} "
          f"{'overhead/call':>14}")
    for name, t_async, t_sync, calls in results:
        per_call = (t_sync - t_async) / calls * 1e6
        print(f"{name:<44} {t_async:>9.3f} {t_sync:>9.3f} {t_sync / t_async:>11.2f} "
              f"{per_call:>11.0f} us")
    print(f"bare portal round trip (no I/O): {hop * 1e6:.0f} us per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
