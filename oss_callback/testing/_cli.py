"""``oss-callback emulator``: run the OSS emulator until interrupted."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from types import FrameType

from oss_callback.client._heap import keep_heap

__all__ = ["build_parser", "keep_heap", "main_emulator", "startup_lines"]


def build_parser(prog: str = "oss-callback emulator") -> argparse.ArgumentParser:
    """The argument parser of the ``emulator`` subcommand."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a local Alibaba Cloud OSS emulator (V1/V4 auth, multipart, callbacks).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port; 0 picks one (default 9000)")
    parser.add_argument(
        "--data-dir", default=None, help="keep objects here (default: a temporary directory)"
    )
    parser.add_argument("--region", default="cn-hangzhou", help="V4 region (default cn-hangzhou)")
    parser.add_argument(
        "--bucket", action="append", default=[], metavar="NAME", help="create a bucket (repeatable)"
    )
    parser.add_argument(
        "--access-key-id",
        default=None,
        help="accepted access key id (default: $OSS_ACCESS_KEY_ID, else the test default)",
    )
    parser.add_argument(
        "--access-key-secret",
        default=None,
        help="its secret (default: $OSS_ACCESS_KEY_SECRET, else the test default)",
    )
    parser.add_argument(
        "--callback-timeout", type=float, default=5.0, help="seconds per callback URL (default 5)"
    )
    parser.add_argument(
        "--header-timeout", type=float, default=30.0, metavar="SECONDS",
        help="drop a connection that sends no complete request head within this many seconds "
        "of opening or of its previous response (idle or slowloris clients; default 30)",
    )
    parser.add_argument(
        "--etag",
        choices=("md5", "fast"),
        default="md5",
        help="md5 (default): ETags are MD5s, as on OSS; fast: skip the MD5 unless the client "
        "sends Content-MD5 and derive ETags from CRC-64 and size (for throughput benchmarks)",
    )
    return parser


def startup_lines(
    endpoint: str,
    region: str,
    access_key_id: str,
    secret: str | None,
    buckets: list[str],
) -> list[str]:
    """What the command prints once the server accepts connections: what a client needs.

    The first line is ``OSS emulator listening on http://HOST:PORT`` (scripts wait for it
    and take the endpoint from it); then the endpoint, region, access key id and secret
    it accepts, the buckets it made, and the ``export`` line that points the
    ``oss-callback`` commands (and clients that read ``OSS_*`` variables) at it.  A
    ``secret`` of ``None`` came from ``$OSS_ACCESS_KEY_SECRET``: it is not echoed (it
    may be a real one), and the ``export`` line leaves the keys as they are.
    """
    exports = {"OSS_ENDPOINT": endpoint, "OSS_REGION": region}
    if secret is not None:
        exports |= {"OSS_ACCESS_KEY_ID": access_key_id, "OSS_ACCESS_KEY_SECRET": secret}
    return [
        f"OSS emulator listening on {endpoint}",
        f"  endpoint           {endpoint}",
        f"  region             {region}",
        f"  access key id      {access_key_id}",
        f"  access key secret  {secret or '(the value of $OSS_ACCESS_KEY_SECRET)'}",
        f"  buckets            {', '.join(buckets) or '(none yet: --bucket NAME makes one)'}",
        "  export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in exports.items()),
    ]


def main_emulator(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM; returns the exit status.

    Once the server accepts connections, prints :func:`startup_lines`: first
    ``OSS emulator listening on http://HOST:PORT``, then what a client needs to use it.
    """
    from oss_callback.testing._emulator import (
        DEFAULT_ACCESS_KEY_ID,
        DEFAULT_ACCESS_KEY_SECRET,
        OSSEmulator,
    )

    args = build_parser().parse_args(argv)
    access_key_id = args.access_key_id or os.environ.get("OSS_ACCESS_KEY_ID")
    secret = args.access_key_secret or os.environ.get("OSS_ACCESS_KEY_SECRET")
    if not (access_key_id and secret):
        access_key_id, secret = DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET
    # One from the environment may be a real secret: it is not printed.
    from_env = not args.access_key_secret and secret != DEFAULT_ACCESS_KEY_SECRET
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    in_main = threading.current_thread() is threading.main_thread()
    previous = {}
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        try:
            emulator = OSSEmulator(
                host=args.host,
                port=args.port,
                data_dir=args.data_dir,
                region=args.region,
                access_key_id=access_key_id,
                access_key_secret=secret,
                buckets=args.bucket,
                callback_timeout=args.callback_timeout,
                etag=args.etag,
                header_timeout=args.header_timeout,
            )
        except ValueError as exc:  # a bad --bucket name, timeout...
            print(f"oss-callback emulator: {exc}", file=sys.stderr)
            return 2
        try:
            emulator.start()
        except OSError as exc:
            print(
                f"oss-callback emulator: cannot listen on {args.host}:{args.port}: {exc}",
                file=sys.stderr,
            )
            return 1
        if in_main:  # this process is the server
            keep_heap()
        try:
            buckets = sorted(emulator._require_running().store.buckets)  # --data-dir's too
            lines = startup_lines(emulator.endpoint, emulator.region, access_key_id,
                                  None if from_env else secret, buckets)
            print("\n".join(lines), flush=True)
            while not stop.wait(0.2):
                pass
        finally:
            emulator.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
