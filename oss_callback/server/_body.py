"""Parsing a verified callback's body as its ``Content-Type`` says: form fields or JSON.

``Content-Type`` is not signed, so the type is not taken on trust: a form body must not be
a JSON document (a JSON body, signed as JSON, replayed as a form would have its string
values split on ``&`` into fields of their own), and the verifier's
``expected_body_type`` refuses any other type before the signature is even checked.
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qsl

from oss_callback.server._errors import CallbackBodyError

__all__ = ["BodyType"]

FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"

#: The two body types OSS sends (``Callback(body_type=...)``).
BodyType: TypeAlias = Literal["application/x-www-form-urlencoded", "application/json"]

_MAX_FORM_FIELDS = 10_000
_UTF8_BOM = b"\xef\xbb\xbf"


def _parse_body(body: bytes, content_type: str) -> dict[str, Any]:
    if content_type == JSON_TYPE or content_type.endswith("+json"):
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise CallbackBodyError(
                "the JSON callback body is not valid JSON", reason="malformed_body"
            ) from None
        if not isinstance(value, dict):
            raise CallbackBodyError(
                f"the JSON callback body is a {type(value).__name__}, not an object",
                reason="malformed_body",
            )
        return value
    if content_type in (FORM_TYPE, ""):  # OSS's default body type is the form
        if body.lstrip(b" \t\r\n").removeprefix(_UTF8_BOM).lstrip(b" \t\r\n")[:1] in (
            b"{", b"[",
        ):
            # Content-Type is not signed: a JSON body (signed as JSON) replayed as a form
            # would have its string values split on "&" into fields of their own.
            raise CallbackBodyError(
                "the callback body is a JSON document but its Content-Type says form data",
                reason="body_type_mismatch",
            )
        try:
            text = body.decode("utf-8")
            pairs = parse_qsl(
                text, keep_blank_values=True, errors="strict", max_num_fields=_MAX_FORM_FIELDS
            )
        except (UnicodeDecodeError, ValueError):
            raise CallbackBodyError(
                "the form callback body is not UTF-8 form data", reason="malformed_body"
            ) from None
        return dict(pairs)
    return {}  # OSS sends only the two types above; keep the raw body for anything else
