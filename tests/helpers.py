"""Test helpers: callback body parsers (import as ``helpers``)."""

from __future__ import annotations

import json
from typing import Any


def form_fields(body: bytes) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(body.decode(), keep_blank_values=True))


def json_body(body: bytes) -> Any:
    return json.loads(body)
