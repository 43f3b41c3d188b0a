"""What every ``oss-callback`` command shares: exit codes, usage errors, the argument parser
class, the parsers of sizes, durations and ``oss://`` locations, the connection options and
the client they make.

Exit codes: 0 success; 1 the upload (or an abort) failed; 2 bad usage or input; 3 the object
was stored but its callback failed (HTTP 203), or whether it succeeded is unknown (a rerun
after an earlier run's Complete went through but its answer was lost); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from oss_callback.client._client import AsyncClient

__all__ = [
    "EXIT_CALLBACK_FAILED",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ArgumentsError",
    "Parser",
    "UsageError",
    "connection_args",
    "make_client",
    "one_line",
    "pairs",
    "parse_duration",
    "parse_oss_prefix",
    "parse_oss_url",
    "parse_size",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CALLBACK_FAILED = 3
EXIT_INTERRUPTED = 130

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "ki": 1024, "kib": 1024, "m": 10**6,
          "mb": 10**6, "mi": 1024**2, "mib": 1024**2, "g": 10**9, "gb": 10**9,
          "gi": 1024**3, "gib": 1024**3, "t": 10**12, "tb": 10**12, "ti": 1024**4,
          "tib": 1024**4}


class UsageError(Exception):
    """A problem with the command line or its inputs (exit code 2)."""


class ArgumentsError(UsageError):
    """argparse refused the command line; ``parser`` is the (sub)command's parser."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`ArgumentsError` instead of exiting, so that
    ``main`` can report it as JSON under ``--json`` (and as argparse does otherwise).
    Subcommand parsers are of the same class (``add_subparsers`` uses the parent's)."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentsError(self, message)


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


def pairs(values: Sequence[str] | None, what: str) -> dict[str, str]:
    """Repeated ``K=V`` options -> a dict (``what``: the option, for the error)."""
    out: dict[str, str] = {}
    for item in values or ():
        if "=" not in item:
            raise UsageError(f"{what} {item!r} must be written K=V")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def connection_args(parser: argparse.ArgumentParser) -> None:
    """``--endpoint``, ``--region``, ``--signature-version`` (from the environment too)."""
    parser.add_argument("--endpoint", default=os.environ.get("OSS_ENDPOINT"),
                        help="e.g. https://oss-cn-hangzhou.aliyuncs.com (default: $OSS_ENDPOINT)")
    parser.add_argument("--region", default=os.environ.get("OSS_REGION"),
                        help="region for V4 signing when the endpoint doesn't tell it")
    parser.add_argument("--signature-version", choices=("v4", "v1"), default="v4")


def make_client(args: argparse.Namespace) -> AsyncClient:
    """The client the connection options ask for (credentials from the environment)."""
    from oss_callback.client._client import AsyncClient

    if not args.endpoint:
        raise UsageError("no endpoint: pass --endpoint URL or set OSS_ENDPOINT")
    try:
        return AsyncClient(args.endpoint, region=args.region,
                           signature_version=args.signature_version)
    except ValueError as e:
        raise UsageError(str(e)) from None


def one_line(error: BaseException) -> str:
    """An error's message on one line (its type's name if it has none)."""
    text = str(error) or type(error).__name__
    return " ".join(text.split())
