"""``oss-callback abort-uploads oss://BUCKET[/PREFIX]``: list the unfinished multipart
uploads under a prefix and abort them, freeing their parts (billed as storage until then)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import anyio

from oss_callback.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    connection_args,
    make_client,
    one_line,
    parse_duration,
    parse_oss_prefix,
)
from oss_callback.client._engine import loop_options
from oss_callback.protocol._errors import OSSError, ServiceError
from oss_callback.protocol._models import MultipartUpload

if TYPE_CHECKING:
    from oss_callback.client._client import AsyncBucket

__all__ = ["ABORT_CONCURRENCY", "add_parser", "run_abort_uploads"]

#: Aborts in flight at once.
ABORT_CONCURRENCY = 8


def add_parser(sub: Any) -> None:
    """Register ``abort-uploads`` on the ``oss-callback`` subcommands."""
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
    connection_args(ab)
    ab.add_argument("--older-than", type=parse_duration, metavar="DURATION",
                    help="only uploads initiated at least this long ago, e.g. 7d, 12h, 1d12h")
    ab.add_argument("--dry-run", action="store_true", help="list what would be aborted")
    ab.add_argument("--json", action="store_true",
                    help="print the outcome (or the error) as one JSON document")


def run_abort_uploads(args: argparse.Namespace) -> int:
    """Run ``oss-callback abort-uploads`` (``UsageError``: exit code 2)."""
    return anyio.run(_abort_uploads, args, backend_options=loop_options())


def age(seconds: float) -> str:
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
    client = make_client(args)
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
    code = EXIT_FAILED if failed else EXIT_OK
    if args.json:
        print(json.dumps({
            "ok": not failed, "dry_run": args.dry_run, "bucket": bucket_name, "prefix": prefix,
            "older_than": args.older_than,
            **({"error": f"{failed} of {len(todo)} abort(s) failed"} if failed else {}),
            "exit_code": code,
            "uploads": [
                {"key": u.key, "upload_id": u.upload_id,
                 "initiated": u.initiated.isoformat() if u.initiated else None,
                 "status": outcome[i][0], "error": outcome[i][1]}
                for i, u in enumerate(uploads)
            ],
        }))
        return code
    verbs = {"aborted": "aborted", "gone": "already gone", "would_abort": "would abort",
             "failed": "FAILED to abort"}
    for i, u in enumerate(uploads):
        status, error = outcome[i]
        if status == "kept":
            continue
        when = "initiated: unknown"
        if u.initiated is not None:
            when = (f"initiated {u.initiated:%Y-%m-%d %H:%M:%S}Z, "
                    f"{age((now - u.initiated).total_seconds())} ago")
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
    return code


async def _abort_all(bucket: AsyncBucket, uploads: list[MultipartUpload], todo: list[int],
                     outcome: dict[int, tuple[str, str | None]]) -> None:
    """Abort ``uploads[i]`` for each ``i`` in ``todo``, a few at once; record each outcome."""
    limiter = anyio.CapacityLimiter(ABORT_CONCURRENCY)

    async def abort(i: int) -> None:
        key, upload_id = uploads[i]
        async with limiter:
            try:
                await bucket.abort_multipart_upload(key, upload_id)
            except ServiceError as e:
                outcome[i] = ("gone", None) if e.code == "NoSuchUpload" else (
                    "failed", one_line(e))
            except (OSSError, ValueError) as e:  # one failure doesn't stop the others
                outcome[i] = ("failed", one_line(e))
            else:
                outcome[i] = ("aborted", None)

    async with anyio.create_task_group() as tg:
        for i in todo:
            tg.start_soon(abort, i)
