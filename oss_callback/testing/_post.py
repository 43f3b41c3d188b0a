"""PostObject (a browser's form upload): the multipart/form-data reader and the POST policy.

A PostObject request is ``POST /`` on the bucket with a ``multipart/form-data`` body: text
fields (``key``, ``policy``, the signature, ``callback``, ``x:`` variables, ...) and then
the ``file`` field, whose bytes are the object (fields after it are ignored, as on OSS).
:class:`FormReader` reads the fields, then streams the file without holding it in memory.
:func:`check_policy` applies the policy's expiration and conditions to the fields.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

from oss_callback.testing._errors import OSSErrorResponse

__all__ = ["FormReader", "boundary_of", "check_policy"]

#: The text fields before ``file`` may hold at most this many bytes in all.
MAX_FIELD_BYTES = 64 * 1024
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _malformed(detail: str) -> OSSErrorResponse:
    return OSSErrorResponse(
        400,
        "MalformedPOSTRequest",
        f"The body of your POST request is not well-formed multipart/form-data: {detail}.",
    )


def _params(value: str) -> tuple[str, dict[str, str]]:
    """``'form-data; name="a"'`` -> ``("form-data", {"name": "a"})``."""
    head, _, rest = value.partition(";")
    params = {}
    for match in _PARAM.finditer(";" + rest):
        raw = match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[match.group(1).lower()] = raw
    return head.strip().lower(), params


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a ``Content-Type`` header.

    Raises:
        OSSErrorResponse: 400 ``MalformedPOSTRequest`` if it is not multipart/form-data
            with a boundary.
    """
    kind, params = _params(content_type)
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data" or not boundary or len(boundary) > 200:
        raise _malformed("the Content-Type has no multipart/form-data boundary")
    return boundary.encode("latin-1")


class FormReader:
    """Reads a multipart/form-data body: the fields, then the ``file`` field's bytes."""

    def __init__(self, chunks: AsyncIterator[bytes], boundary: bytes) -> None:
        self._chunks = chunks
        self._delimiter = b"\r\n--" + boundary
        self._buf = bytearray(b"\r\n")  # so that the first boundary looks like the others
        self._eof = False
        self.filename: str | None = None
        self.file_content_type: str | None = None

    async def _more(self) -> None:
        try:
            self._buf += await self._chunks.__anext__()
        except StopAsyncIteration:
            self._eof = True
            raise _malformed("the body ended before the file field did") from None

    async def _until(self, marker: bytes, limit: int) -> int:
        """The index of ``marker`` in the buffer, reading more as needed (at most ``limit``)."""
        while (index := self._buf.find(marker)) < 0:
            if len(self._buf) > limit:
                raise _malformed(f"the form fields exceed {MAX_FIELD_BYTES} bytes")
            await self._more()
        return index

    async def fields(self) -> dict[str, str]:
        """The text fields before ``file`` (names lower-cased, as OSS matches them).

        Afterwards :attr:`filename` and :attr:`file_content_type` describe the file.

        Raises:
            OSSErrorResponse: 400 ``MalformedPOSTRequest`` (no ``file`` field, a field
                over the size limit, a broken part).
        """
        fields: dict[str, str] = {}
        used = 0
        # Skip a preamble, up to the first boundary.
        start = await self._until(self._delimiter, MAX_FIELD_BYTES)
        del self._buf[: start + len(self._delimiter)]
        while True:
            await self._until_len(2)
            if self._buf[:2] == b"--":
                raise _malformed("there is no file field")
            if self._buf[:2] != b"\r\n":
                raise _malformed("a boundary is not followed by a line break")
            end = await self._until(b"\r\n\r\n", MAX_FIELD_BYTES)
            raw_headers = bytes(self._buf[2:end]).decode("utf-8", "replace")
            del self._buf[: end + 4]
            name, filename, content_type = _part_headers(raw_headers)
            if name.lower() == "file":
                self.filename = filename
                self.file_content_type = content_type
                return fields
            end = await self._until(self._delimiter, MAX_FIELD_BYTES - used)
            used += end
            if used > MAX_FIELD_BYTES:
                raise _malformed(f"the form fields exceed {MAX_FIELD_BYTES} bytes")
            fields[name.lower()] = bytes(self._buf[:end]).decode("utf-8", "replace")
            del self._buf[: end + len(self._delimiter)]

    async def _until_len(self, n: int) -> None:
        while len(self._buf) < n:
            await self._more()

    async def file_chunks(self) -> AsyncIterator[bytes]:
        """The file field's bytes, as they arrive (after :meth:`fields`)."""
        keep = len(self._delimiter) - 1
        while True:
            index = self._buf.find(self._delimiter)
            if index >= 0:
                if index:
                    yield bytes(self._buf[:index])
                del self._buf[:]
                return
            if len(self._buf) > keep:
                cut = len(self._buf) - keep
                yield bytes(self._buf[:cut])
                del self._buf[:cut]
            await self._more()


def _part_headers(raw: str) -> tuple[str, str | None, str | None]:
    """``(name, filename, content type)`` of a part's headers."""
    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    for line in raw.split("\r\n"):
        header, _, value = line.partition(":")
        header = header.strip().lower()
        if header == "content-disposition":
            kind, params = _params(value)
            if kind != "form-data" or "name" not in params:
                raise _malformed("a part's Content-Disposition is not form-data with a name")
            name = params["name"]
            filename = params.get("filename")
        elif header == "content-type":
            content_type = value.strip() or None
    if name is None:
        raise _malformed("a part has no Content-Disposition")
    return name, filename, content_type


# --------------------------------------------------------------------------- policy


def _invalid_policy(message: str) -> OSSErrorResponse:
    return OSSErrorResponse(400, "InvalidPolicyDocument", f"Invalid Policy: {message}")


def _parse_expiration(value: Any) -> float:
    if not isinstance(value, str):
        raise _invalid_policy("Invalid 'expiration' value.")
    text = value.strip().replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise _invalid_policy(f"Invalid 'expiration' value: {value!r}.") from None
    if when.tzinfo is None:
        raise _invalid_policy(f"'expiration' has no time zone: {value!r}.")
    return when.timestamp()


def check_policy(
    policy: str, fields: Mapping[str, str], bucket: str, now: float | None = None
) -> tuple[int, int] | None:
    """Apply a POST policy (Base64 JSON) to the form fields.

    Returns:
        The ``content-length-range`` ``(min, max)`` it sets, if any (checked once the file's
        size is known).

    Raises:
        OSSErrorResponse: 400 ``InvalidPolicyDocument`` for a policy that is not Base64
            JSON with an ``expiration`` and a ``conditions`` list; 403 ``AccessDenied``
            when it has expired or a condition does not hold.
    """
    try:
        document = json.loads(base64.b64decode(policy, validate=True))
    except (binascii.Error, ValueError):
        raise _invalid_policy("Invalid JSON.") from None
    if not isinstance(document, dict):
        raise _invalid_policy("Invalid JSON.")
    if _parse_expiration(document.get("expiration")) <= (time.time() if now is None else now):
        raise OSSErrorResponse(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    conditions = document.get("conditions")
    if not isinstance(conditions, list):
        raise _invalid_policy("Policy document must contain a 'conditions' list.")
    values = {**fields, "bucket": bucket}
    length_range: tuple[int, int] | None = None
    for condition in conditions:
        if isinstance(condition, dict) and len(condition) == 1:
            ((name, expected),) = condition.items()
            ok = isinstance(expected, str) and values.get(name.lower()) == expected
        elif isinstance(condition, list) and condition and isinstance(condition[0], str):
            op = condition[0].lower()
            if op == "content-length-range":
                if len(condition) != 3 or not all(
                    isinstance(n, int) and not isinstance(n, bool) for n in condition[1:]
                ):
                    raise _invalid_policy(f"Invalid content-length-range: {condition}.")
                length_range = (condition[1], condition[2])
                continue
            if len(condition) != 3 or not isinstance(condition[1], str):
                raise _invalid_policy(f"Invalid condition: {condition}.")
            actual = values.get(condition[1].removeprefix("$").lower())
            expected = condition[2]
            if op == "eq" and isinstance(expected, str):
                ok = actual == expected
            elif op == "starts-with" and isinstance(expected, str):
                ok = actual is not None and actual.startswith(expected)
            elif op in ("in", "not-in") and isinstance(expected, list):
                ok = (actual in expected) == (op == "in")
            else:
                raise _invalid_policy(f"Invalid condition: {condition}.")
        else:
            raise _invalid_policy(f"Invalid condition: {condition}.")
        if not ok:
            raise OSSErrorResponse(
                403,
                "AccessDenied",
                "Invalid according to Policy: Policy Condition failed: "
                + json.dumps(condition, ensure_ascii=False),
            )
    return length_range
