"""``oss-callback callback-server``: its options, and the check that FastAPI and uvicorn are
installed before :mod:`oss_callback.cli._callback_server` (which imports them at the top,
being the README's example) is imported.
"""

from __future__ import annotations

import argparse
from typing import Any

from oss_callback.cli._common import UsageError, connection_args

__all__ = ["add_parser", "run_callback_server"]


def add_parser(sub: Any) -> None:
    """Register ``callback-server`` on the ``oss-callback`` subcommands."""
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
    connection_args(cs)


def run_callback_server(args: argparse.Namespace) -> int:
    """Run the server until interrupted (``UsageError``: exit code 2)."""
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
