"""The ``oss-callback`` command line: ``demo``, ``upload``, ``abort-uploads``, ``emulator``,
``callback-server`` (the reference callback server) and ``callback-test`` (fire a signed
callback at a server and get OSS's verdict).

Each command lives in its own module (``add_parser`` registers it, ``run_...`` runs it);
this one assembles the parser, dispatches, and turns errors into one line on stderr (or,
with ``--json``, one JSON document on stdout: ``{"ok": false, "error": ..., "exit_code":
N, ...}``) and an exit code.

Exit codes: 0 success; 1 the upload (or an abort) failed; 2 bad usage or input; 3 the object
was stored but its callback failed (HTTP 203), or whether it succeeded is unknown (a rerun
after an earlier run's Complete went through but its answer was lost); 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from oss_callback._version import __version__
from oss_callback.cli._abort_uploads import add_parser as add_abort_uploads
from oss_callback.cli._abort_uploads import run_abort_uploads
from oss_callback.cli._callback_server_cmd import add_parser as add_callback_server
from oss_callback.cli._callback_server_cmd import run_callback_server
from oss_callback.cli._callback_test import add_parser as add_callback_test
from oss_callback.cli._callback_test import run_callback_test
from oss_callback.cli._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ArgumentsError,
    Parser,
    UsageError,
    one_line,
)
from oss_callback.cli._upload import add_parser as add_upload
from oss_callback.cli._upload import run_upload
from oss_callback.protocol._errors import OSSError, ServiceError

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="oss-callback",
        description="Alibaba Cloud OSS uploads with upload callbacks (and a local OSS emulator).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sub.add_parser(
        "demo",
        help="run the whole flow on an embedded emulator and a local callback server",
        description="Start the embedded OSS emulator and a callback receiver, upload a "
        "multi-part file with a callback, and show what each side saw.",
    )
    add_upload(sub)
    add_abort_uploads(sub)
    add_callback_server(sub)
    add_callback_test(sub)
    sub.add_parser(
        "emulator",
        help="run a local OSS emulator (for tests and development)",
        add_help=False,
        description="oss-callback emulator [--host H] [--port P] [--data-dir DIR] "
        "[--region R] [--bucket NAME ...] [--access-key-id ID] [--access-key-secret SECRET] "
        "[--etag md5|fast]",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from oss_callback.cli._demo import run_demo  # FastAPI, uvicorn: only for the demo

        return run_demo()
    if args.command == "abort-uploads":
        return run_abort_uploads(args)
    if args.command == "callback-server":
        return run_callback_server(args)
    if args.command == "callback-test":
        return run_callback_test(args)
    return run_upload(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oss-callback`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    # The emulator parses its own options.
    rest = [a for a in args_list if a != "--debug"]
    if rest[:1] == ["emulator"]:
        from oss_callback.testing._cli import main_emulator

        return main_emulator(rest[1:])
    parser = _build_parser()
    try:
        args = parser.parse_args(args_list)
    except ArgumentsError as e:
        if "--json" in args_list:
            command = e.parser.prog.removeprefix("oss-callback").strip() or None
            return _json_error(command, str(e), EXIT_USAGE, UsageError(str(e)))
        e.parser.print_usage(sys.stderr)  # what argparse itself does
        e.parser.exit(EXIT_USAGE, f"{e.parser.prog}: error: {e}\n")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    as_json = bool(getattr(args, "json", False))
    try:
        return _run(args)
    except KeyboardInterrupt as e:
        message = "interrupted; rerun the same command to resume"
        if as_json:
            return _json_error(args.command, message, EXIT_INTERRUPTED, e)
        print(f"oss-callback: {message}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as e:
        if args.debug:
            raise
        if as_json:
            return _json_error(args.command, str(e), EXIT_USAGE, e)
        print(f"oss-callback: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (OSSError, OSError, ValueError, TypeError) as e:
        if args.debug:
            raise
        if as_json:
            return _json_error(args.command, one_line(e), EXIT_FAILED, e)
        print(f"oss-callback: error: {one_line(e)}", file=sys.stderr)
        return EXIT_FAILED


def _json_error(command: str | None, message: str, code: int, error: BaseException) -> int:
    """Print the error as one JSON document on stdout (``--json``); returns ``code``."""
    doc: dict[str, Any] = {"ok": False, "command": command, "error": message,
                           "exit_code": code, "type": type(error).__name__}
    if isinstance(error, ServiceError):
        doc.update(status=error.status, code=error.code, request_id=error.request_id)
    print(json.dumps(doc))
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
