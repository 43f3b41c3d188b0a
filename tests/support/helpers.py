"""Test helpers: callback body parsers (import as ``helpers``)."""

from __future__ import annotations

import json
from typing import Any

import pytest


def form_fields(body: bytes) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(body.decode(), keep_blank_values=True))


def json_body(body: bytes) -> Any:
    return json.loads(body)


#: httpx reads a response body through a chain of async generators; when a read stops early
#: (a body over its limit), the SDK closes the outermost and the response, but the inner
#: generators are left to the collector, and trio warns about each (asyncio doesn't). For
#: the few tests that stop reading a body on purpose.
HTTPX_STOPPED_READ = pytest.mark.filterwarnings(
    r"ignore:Async generator '(httpx|httpcore)\..*' was garbage collected:ResourceWarning",
)
