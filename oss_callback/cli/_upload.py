"""``oss-callback upload PATH oss://BUCKET/KEY``: a resumable, concurrent upload with an
optional callback; rerun the same command to resume."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import anyio

from oss_callback.cli._common import (
    EXIT_CALLBACK_FAILED,
    EXIT_OK,
    UsageError,
    connection_args,
    make_client,
    pairs,
    parse_oss_url,
    parse_size,
)
from oss_callback.cli._progress import ProgressDisplay
from oss_callback.client._engine import loop_options
from oss_callback.client._heap import keep_heap
from oss_callback.protocol._callback import FORM_BODY_TYPE, JSON_BODY_TYPE, Callback
from oss_callback.protocol._errors import CallbackError, CallbackUnknownError
from oss_callback.protocol._models import PutObjectResult
from oss_callback.protocol._options import upload_headers

__all__ = ["add_parser", "run_upload"]


def add_parser(sub: Any) -> None:
    """Register ``upload`` on the ``oss-callback`` subcommands."""
    up = sub.add_parser(
        "upload",
        help="upload a file (resumable, concurrent) with an optional callback",
        description="Upload PATH to oss://BUCKET/KEY. Credentials come from "
        "OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET (and OSS_SESSION_TOKEN). Rerun the same "
        "command to resume an interrupted upload.",
    )
    up.add_argument("path", metavar="PATH")
    up.add_argument("destination", metavar="oss://BUCKET/KEY")
    connection_args(up)
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
    up.add_argument("--json", action="store_true",
                    help="print the result (or the error) as one JSON document")
    up.add_argument("--quiet", action="store_true", help="no progress output")


def run_upload(args: argparse.Namespace) -> int:
    """Run ``oss-callback upload`` (``UsageError``: exit code 2)."""
    if not os.path.isfile(args.path):
        what = "is a directory" if os.path.isdir(args.path) else "does not exist"
        raise UsageError(f"{args.path} {what}: give the path of a file to upload")
    keep_heap()  # this process is ours: reuse freed buffers instead of re-faulting them
    return anyio.run(_upload, args, backend_options=loop_options())


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
                query=pairs(args.callback_query, "--callback-query"),
                body=body,
                body_type=FORM_BODY_TYPE if args.callback_body_type == "form" else JSON_BODY_TYPE,
                host=args.callback_host,
                variables=pairs(args.callback_var, "--callback-var"),
            )
        elif args.callback_body or args.callback_query or args.callback_var:
            raise UsageError("--callback-body/--callback-query/--callback-var need --callback-url")
        options: dict[str, Any] = {
            "content_type": args.content_type, "storage_class": args.storage_class,
            "acl": args.acl, "metadata": pairs(args.meta, "--meta") if args.meta else None,
            "tagging": pairs(args.tag, "--tag") if args.tag else None,
        }
        upload_headers(key, **options)  # bad options: a usage error, before any request
    except ValueError as e:
        raise UsageError(str(e)) from None
    client = make_client(args)
    async with client:
        bucket = client.get_bucket(bucket_name)
        with ProgressDisplay(f"oss://{bucket_name}/{key}", sys.stderr,
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
                                      "exit_code": EXIT_CALLBACK_FAILED,
                                      "result": _result_dict(e.result)}))
                else:
                    print(f"oss-callback: stored, but {what}: {e}", file=sys.stderr)
                return EXIT_CALLBACK_FAILED
    if args.json:
        print(json.dumps({"ok": True, "stored": True, "exit_code": EXIT_OK,
                          "result": _result_dict(result)}))
    else:
        print(f"uploaded oss://{bucket_name}/{key}: etag={result.etag} crc64={result.crc64} "
              f"request_id={result.request_id}")
        if result.callback_body is not None:
            print(f"callback answered: {result.callback_body.decode('utf-8', 'replace')}")
    return EXIT_OK
