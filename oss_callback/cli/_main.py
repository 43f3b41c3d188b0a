"""The ``oss-callback`` command line: ``demo``, ``upload``, ``abort-uploads``, ``emulator``,
``callback-server`` (the reference callback server) and ``callback-test`` (fire a signed
callback at a server and get OSS's verdict).

Exit codes: 0 success; 1 the upload (or an abort) failed; 2 bad usage or input; 3 the object
was stored but its callback failed (HTTP 203), or whether it succeeded is unknown (a rerun
after an earlier run's Complete went through but its answer was lost); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from oss_callback.client._engine import loop_options
from oss_callback.client._heap import keep_heap
from oss_callback.protocol._callback import FORM_BODY_TYPE, JSON_BODY_TYPE, Callback
from oss_callback.protocol._errors import CallbackError, CallbackUnknownError, OSSError
from oss_callback.protocol._models import MultipartUpload, PutObjectResult
from oss_callback.protocol._options import upload_headers

if TYPE_CHECKING:
    from oss_callback.client._client import AsyncBucket, AsyncClient

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CALLBACK_FAILED = 3
EXIT_INTERRUPTED = 130

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Aborts in flight at once (``abort-uploads``).
ABORT_CONCURRENCY = 8
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 10**6,
          "mb": 10**6, "mi": 1024**2, "mib": 1024**2, "g": 10**9, "gb": 10**9,
          "gi": 1024**3, "gib": 1024**3, "t": 10**12, "tb": 10**12, "ti": 1024**4,
          "tib": 1024**4}


class UsageError(Exception):
    """A problem with the command line or its inputs (exit code 2)."""


def parse_size(text: str) -> int:
    """``8MiB``, ``8M`` (decimal), ``100KiB``, ``1048576`` -> bytes."""
    m = _SIZE.fullmatch(text)
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 8MiB, 100KiB, 1048576")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``1d12h``, ``90m``, ``30s``, ``2w`` -> seconds."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION_PART.sub("", compact):
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use e.g. 7d, 12h, 1d12h, 90m, 30s (units s m h d w)"
        )
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(compact))


def parse_oss_prefix(text: str) -> tuple[str, str]:
    """``oss://bucket[/prefix]`` -> ``(bucket, prefix)`` (``""``: the whole bucket)."""
    m = re.fullmatch(r"oss://([^/]+)(?:/(.*))?", text, re.DOTALL)
    if not m:
        raise UsageError(
            f"bad location {text!r}: write it as oss://BUCKET or oss://BUCKET/PREFIX "
            "(e.g. oss://my-bucket/uploads/)"
        )
    return m.group(1), m.group(2) or ""


def parse_oss_url(text: str) -> tuple[str, str]:
    """``oss://bucket/key`` -> ``(bucket, key)``."""
    m = re.fullmatch(r"oss://([^/]+)/(.+)", text)
    if not m:
        raise UsageError(
            f"bad destination {text!r}: write it as oss://BUCKET/KEY (e.g. oss://my-bucket/dir/file.bin)"
        )
    return m.group(1), m.group(2)


def _pairs(values: Sequence[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or ():
        if "=" not in item:
            raise UsageError(f"{what} {item!r} must be written K=V")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oss-callback",
        description="Alibaba Cloud OSS uploads with upload callbacks (and a local OSS emulator).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser(
        "demo",
        help="run the whole flow on an embedded emulator and a local callback server",
        description="Start the embedded OSS emulator and a callback receiver, upload a "
        "multi-part file with a callback, and show what each side saw.",
    )

    up = sub.add_parser(
        "upload",
        help="upload a file (resumable, concurrent) with an optional callback",
        description="Upload PATH to oss://BUCKET/KEY. Credentials come from "
        "OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET (and OSS_SESSION_TOKEN). Rerun the same "
        "command to resume an interrupted upload.",
    )
    up.add_argument("path", metavar="PATH")
    up.add_argument("destination", metavar="oss://BUCKET/KEY")
    _connection_args(up)
    up.add_argument("--callback-url", help="URL OSS POSTs to after the upload")
    up.add_argument("--callback-body", default=None,
                    help="body template, e.g. 'bucket=${bucket}&object=${object}&size=${size}'")
    up.add_argument("--callback-body-type", choices=("form", "json"), default="form")
    up.add_argument("--callback-query", action="append", metavar="K=V",
                    help="query parameter for the callback URL (repeatable)")
    up.add_argument("--callback-var", action="append", metavar="x:NAME=V",
                    help="custom callback variable (repeatable)")
    up.add_argument("--callback-host", help="Host header of the callback request")
    up.add_argument("--part-size", type=parse_size, metavar="SIZE", help="e.g. 8MiB")
    up.add_argument("--concurrency", type=int, metavar="N", help="parts in flight")
    up.add_argument("--checkpoint-file", metavar="PATH")
    up.add_argument("--no-checkpoint", action="store_true", help="don't record progress")
    up.add_argument("--content-type",
                    help="Content-Type of the object (default: guessed from the key, then the "
                    "file name)")
    up.add_argument("--meta", action="append", metavar="NAME=V",
                    help="user metadata, x-oss-meta-NAME (repeatable)")
    up.add_argument("--storage-class",
                    help="Standard, IA, Archive, ColdArchive or DeepColdArchive")
    up.add_argument("--acl", help="private, public-read, public-read-write or default")
    up.add_argument("--tag", action="append", metavar="K=V", help="object tag (repeatable)")
    up.add_argument("--json", action="store_true", help="print the result as JSON")
    up.add_argument("--quiet", action="store_true", help="no progress output")

    ab = sub.add_parser(
        "abort-uploads",
        help="list and abort unfinished multipart uploads (their parts are billed)",
        description="List the unfinished multipart uploads under oss://BUCKET/PREFIX and "
        "abort them, freeing their parts (billed as storage until then). This includes "
        "uploads still running elsewhere: use --older-than to keep recent ones, and "
        "--dry-run to see first. Credentials come from OSS_ACCESS_KEY_ID, "
        "OSS_ACCESS_KEY_SECRET (and OSS_SESSION_TOKEN).",
    )
    ab.add_argument("location", metavar="oss://BUCKET[/PREFIX]")
    _connection_args(ab)
    ab.add_argument("--older-than", type=parse_duration, metavar="DURATION",
                    help="only uploads initiated at least this long ago, e.g. 7d, 12h, 1d12h")
    ab.add_argument("--dry-run", action="store_true", help="list what would be aborted")
    ab.add_argument("--json", action="store_true", help="print the outcome as JSON")

    cs = sub.add_parser(
        "callback-server",
        help="run the reference callback server: verify, confirm, print and store callbacks",
        description="Receive OSS upload callbacks: check each one's signature, confirm it "
        "against --bucket when OSS credentials are in the environment (OSS_ACCESS_KEY_ID, "
        "OSS_ACCESS_KEY_SECRET, OSS_SESSION_TOKEN), print one line per callback, store it in "
        "SQLite (--db) and answer OSS with JSON; anything else gets 400.",
    )
    cs.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    cs.add_argument("--port", type=int, default=8080, help="port; 0 picks one (default 8080)")
    cs.add_argument("--path", default="/oss-callback", help="default /oss-callback")
    keys = cs.add_mutually_exclusive_group()
    keys.add_argument("--public-key", metavar="PEM_FILE",
                      help="pin the callback public key (nothing is fetched)")
    keys.add_argument("--trust-emulator", metavar="URL",
                      help="trust the key of the emulator at URL, e.g. http://127.0.0.1:9000 "
                      "(default: OSS's key host, gosspublic.alicdn.com)")
    cs.add_argument("--db", metavar="FILE", help="store each callback in this SQLite file")
    cs.add_argument("--bucket", default=None, metavar="NAME",
                    help="confirm each callback against this bucket (default: $OSS_BUCKET)")
    _connection_args(cs)

    from oss_callback.cli._callback_test import add_parser as add_callback_test_parser

    add_callback_test_parser(sub)

    sub.add_parser(
        "emulator",
        help="run a local OSS emulator (for tests and development)",
        add_help=False,
        description="oss-callback emulator [--host H] [--port P] [--data-dir DIR] "
        "[--region R] [--bucket NAME ...] [--access-key-id ID] [--access-key-secret SECRET] "
        "[--etag md5|fast]",
    )
    return parser


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=os.environ.get("OSS_ENDPOINT"),
                        help="e.g. https://oss-cn-hangzhou.aliyuncs.com (default: $OSS_ENDPOINT)")
    parser.add_argument("--region", default=os.environ.get("OSS_REGION"),
                        help="region for V4 signing when the endpoint doesn't tell it")
    parser.add_argument("--signature-version", choices=("v4", "v1"), default="v4")


def _client(args: argparse.Namespace) -> AsyncClient:
    from oss_callback.client._client import AsyncClient

    if not args.endpoint:
        raise UsageError("no endpoint: pass --endpoint URL or set OSS_ENDPOINT")
    try:
        return AsyncClient(args.endpoint, region=args.region,
                           signature_version=args.signature_version)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _result_dict(result: PutObjectResult) -> dict[str, Any]:
    body = result.callback_body
    return {
        "key": result.key,
        "etag": result.etag,
        "crc64": result.crc64,
        "request_id": result.request_id,
        "version_id": result.version_id,
        "upload_id": result.upload_id,
        "size": result.size,
        "callback_status": result.callback_status,
        "callback_body": body.decode("utf-8", "replace") if body is not None else None,
        "recovered": result.recovered,
    }


class _Progress:
    """A rich progress bar on a TTY, plain lines otherwise."""

    def __init__(self, label: str, stream: TextIO, quiet: bool) -> None:
        self.label = label
        self.stream = stream
        self.quiet = quiet
        self._rich: Any = None
        self._task: Any = None
        self._last = 0.0
        self._last_pct = -1
        self._last_done = -1

    def __enter__(self) -> Callable[[int, int | None], None]:
        if self.quiet:
            return lambda done, total: None
        if self.stream.isatty():
            try:
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )
            except ImportError:
                pass
            else:
                self._rich = Progress(
                    "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeRemainingColumn(),
                    console=None, transient=False,
                )
                self._rich.__enter__()
                self._task = self._rich.add_task(self.label, total=None)
        return self.update

    def update(self, done: int, total: int | None) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=done, total=total)
            return
        now = time.monotonic()
        pct = int(done * 100 / total) if total else 0
        if done == 0 or (done, pct) == (self._last_done, self._last_pct):
            return
        if done == total or now - self._last >= 1.0 or pct >= self._last_pct + 10:
            self._last_done = done
            self._last, self._last_pct = now, pct
            print(f"{self.label}: {done}/{total if total is not None else '?'} bytes ({pct}%)",
                  file=self.stream, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.__exit__(None, None, None)


async def _upload(args: argparse.Namespace) -> int:
    bucket_name, key = parse_oss_url(args.destination)
    if not args.endpoint:
        raise UsageError("no endpoint: pass --endpoint URL or set OSS_ENDPOINT")
    callback = None
    try:
        if args.callback_url:
            body = args.callback_body or (
                "bucket=${bucket}&object=${object}&etag=${etag}&size=${size}&crc64=${crc64}"
                if args.callback_body_type == "form"
                else '{"bucket":${bucket},"object":${object},"etag":${etag},"size":${size}}'
            )
            callback = Callback(
                args.callback_url,
                query=_pairs(args.callback_query, "--callback-query"),
                body=body,
                body_type=FORM_BODY_TYPE if args.callback_body_type == "form" else JSON_BODY_TYPE,
                host=args.callback_host,
                variables=_pairs(args.callback_var, "--callback-var"),
            )
        elif args.callback_body or args.callback_query or args.callback_var:
            raise UsageError("--callback-body/--callback-query/--callback-var need --callback-url")
        options: dict[str, Any] = {
            "content_type": args.content_type, "storage_class": args.storage_class,
            "acl": args.acl, "metadata": _pairs(args.meta, "--meta") if args.meta else None,
            "tagging": _pairs(args.tag, "--tag") if args.tag else None,
        }
        upload_headers(key, **options)  # bad options: a usage error, before any request
    except ValueError as e:
        raise UsageError(str(e)) from None
    client = _client(args)
    async with client:
        bucket = client.get_bucket(bucket_name)
        with _Progress(f"oss://{bucket_name}/{key}", sys.stderr,
                       args.quiet or args.json) as progress:
            try:
                result = await bucket.resumable_upload(
                    key, args.path, callback=callback, part_size=args.part_size,
                    concurrency=args.concurrency, checkpoint_file=args.checkpoint_file,
                    disable_checkpoint=args.no_checkpoint, progress=progress, **options,
                )
            except (CallbackError, CallbackUnknownError) as e:
                what = ("the callback failed" if isinstance(e, CallbackError) else
                        "whether the callback succeeded is unknown (an earlier run's answer "
                        "was lost)")
                if args.json:
                    print(json.dumps({"ok": False, "stored": True, "error": str(e),
                                      "result": _result_dict(e.result)}))
                else:
                    print(f"oss-callback: stored, but {what}: {e}", file=sys.stderr)
                return EXIT_CALLBACK_FAILED
    if args.json:
        print(json.dumps({"ok": True, "stored": True, "result": _result_dict(result)}))
    else:
        print(f"uploaded oss://{bucket_name}/{key}: etag={result.etag} crc64={result.crc64} "
              f"request_id={result.request_id}")
        if result.callback_body is not None:
            print(f"callback answered: {result.callback_body.decode('utf-8', 'replace')}")
    return EXIT_OK


def _age(seconds: float) -> str:
    """``3d 4h``, ``5h 12m``, ``42s``: a rough age for people."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


async def _abort_uploads(args: argparse.Namespace) -> int:
    bucket_name, prefix = parse_oss_prefix(args.location)
    client = _client(args)
    async with client:
        bucket = client.get_bucket(bucket_name)
        uploads = await bucket.list_multipart_uploads(prefix)
        now = datetime.now(timezone.utc)
        outcome: dict[int, tuple[str, str | None]] = {}  # index -> (status, error)
        todo: list[int] = []
        for i, u in enumerate(uploads):
            if args.older_than is not None and (
                u.initiated is None or (now - u.initiated).total_seconds() < args.older_than
            ):
                outcome[i] = ("kept", None)
            elif args.dry_run:
                outcome[i] = ("would_abort", None)
            else:
                todo.append(i)
        if todo:
            await _abort_all(bucket, uploads, todo, outcome)
    failed = sum(1 for status, _ in outcome.values() if status == "failed")
    if args.json:
        print(json.dumps({
            "ok": not failed, "dry_run": args.dry_run, "bucket": bucket_name, "prefix": prefix,
            "older_than": args.older_than,
            "uploads": [
                {"key": u.key, "upload_id": u.upload_id,
                 "initiated": u.initiated.isoformat() if u.initiated else None,
                 "status": outcome[i][0], "error": outcome[i][1]}
                for i, u in enumerate(uploads)
            ],
        }))
        return EXIT_FAILED if failed else EXIT_OK
    verbs = {"aborted": "aborted", "gone": "already gone", "would_abort": "would abort",
             "failed": "FAILED to abort"}
    for i, u in enumerate(uploads):
        status, error = outcome[i]
        if status == "kept":
            continue
        when = "initiated: unknown"
        if u.initiated is not None:
            age = _age((now - u.initiated).total_seconds())
            when = f"initiated {u.initiated:%Y-%m-%d %H:%M:%S}Z, {age} ago"
        line = f"{verbs[status]} oss://{bucket_name}/{u.key} upload {u.upload_id} ({when})"
        print(f"{line}: {error}" if error else line, file=sys.stderr if error else sys.stdout)
    counts = {s: sum(1 for st, _ in outcome.values() if st == s) for s in verbs.keys() | {"kept"}}
    where = f"oss://{bucket_name}/{prefix}"
    summary = [f"{len(uploads)} unfinished upload(s) under {where}"]
    if args.dry_run:
        summary.append(f"{counts['would_abort']} would be aborted (dry run: none was)")
    else:
        summary.append(f"{counts['aborted'] + counts['gone']} aborted")
    if counts["kept"]:
        summary.append(f"{counts['kept']} kept (initiated less than --older-than ago, or at an "
                       "unknown time)")
    if failed:
        summary.append(f"{failed} failed")
    print("; ".join(summary))
    return EXIT_FAILED if failed else EXIT_OK


async def _abort_all(bucket: AsyncBucket, uploads: list[MultipartUpload], todo: list[int],
                     outcome: dict[int, tuple[str, str | None]]) -> None:
    """Abort ``uploads[i]`` for each ``i`` in ``todo``, a few at once; record each outcome."""
    from oss_callback.protocol._errors import ServiceError

    limiter = anyio.CapacityLimiter(ABORT_CONCURRENCY)

    async def abort(i: int) -> None:
        key, upload_id = uploads[i]
        async with limiter:
            try:
                await bucket.abort_multipart_upload(key, upload_id)
            except ServiceError as e:
                outcome[i] = ("gone", None) if e.code == "NoSuchUpload" else (
                    "failed", _one_line(e))
            except (OSSError, ValueError) as e:  # one failure doesn't stop the others
                outcome[i] = ("failed", _one_line(e))
            else:
                outcome[i] = ("aborted", None)

    async with anyio.create_task_group() as tg:
        for i in todo:
            tg.start_soon(abort, i)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oss-callback`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The emulator parses its own options.
    rest = [a for a in args_list if a != "--debug"]
    if rest[:1] == ["emulator"]:
        from oss_callback.testing._cli import main_emulator

        return main_emulator(rest[1:])
    parser = _build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "demo":
            from oss_callback.cli._demo import run_demo

            return run_demo()
        if args.command == "abort-uploads":
            return anyio.run(_abort_uploads, args, backend_options=loop_options())
        if args.command == "callback-server":
            return _callback_server(args)
        if args.command == "callback-test":
            from oss_callback.cli._callback_test import run_callback_test

            return run_callback_test(args)
        if not os.path.isfile(args.path):
            what = "is a directory" if os.path.isdir(args.path) else "does not exist"
            raise UsageError(f"{args.path} {what}: give the path of a file to upload")
        keep_heap()  # this process is ours: reuse freed buffers instead of re-faulting them
        return anyio.run(_upload, args, backend_options=loop_options())
    except KeyboardInterrupt:
        print("oss-callback: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as e:
        if args.debug:
            raise
        print(f"oss-callback: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (OSSError, OSError, ValueError, TypeError) as e:
        if args.debug:
            raise
        print(f"oss-callback: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_FAILED


def _callback_server(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise UsageError(
            f"callback-server needs FastAPI and uvicorn ({e.name} is missing): "
            "pip install 'oss-callback[fastapi,emulator]'"
        ) from None
    from oss_callback.cli._callback_server import serve

    return serve(args)


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
