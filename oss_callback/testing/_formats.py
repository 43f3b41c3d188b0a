"""OSS's formats on the wire, for every operation family: XML documents (written and read),
dates, quoted ETags, ``encoding-type=url``, and the argument errors they raise."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from email.utils import formatdate
from urllib.parse import quote
from xml.sax.saxutils import escape

from oss_callback.testing._errors import OSSErrorResponse
from oss_callback.testing._request import Response

__all__ = [
    "MAX_XML_BODY",
    "NS",
    "OWNER_ID",
    "XML_CONTENT_TYPE",
    "common_prefixes",
    "el",
    "encoder",
    "http_date",
    "int_param",
    "invalid_argument",
    "iso",
    "malformed",
    "parse_xml",
    "quote_etag",
    "xml_doc",
    "xml_ok",
    "xml_text",
]

OWNER_ID = "1234567890123456"
NS = ""  # OSS's list results carry no namespace, and oss2's parser relies on that
#: The largest request document read (CompleteMultipartUpload, DeleteMultipleObjects).
MAX_XML_BODY = 4 * 1024 * 1024
XML_CONTENT_TYPE = ("Content-Type", "application/xml")


def quote_etag(etag: str) -> str:
    """An ETag as OSS sends it, in double quotes."""
    return f'"{etag}"'


def iso(ts: float) -> str:
    """Unix time as OSS writes it in XML (``2024-01-02T03:04:05.000Z``)."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def http_date(ts: float) -> str:
    """Unix time as an HTTP date (``Date``, ``Last-Modified``)."""
    return formatdate(ts, usegmt=True)


def xml_text(value: str) -> str:
    """XML text content (control characters, which XML 1.0 cannot carry, shown as \\xNN)."""
    if any(c < " " and c not in "\t\n\r" for c in value):
        value = "".join(c if c >= " " or c in "\t\n\r" else f"\\x{ord(c):02x}" for c in value)
    return escape(value)


def xml_ok(root: str, children: str) -> Response:
    """A 200 answer with an OSS XML document."""
    return Response(status=200, headers=[XML_CONTENT_TYPE], body=xml_doc(root, children))


def common_prefixes(prefixes: Iterable[str], enc: Callable[[str], str]) -> str:
    """The ``<CommonPrefixes>`` elements of a listing."""
    return "".join(
        f"  <CommonPrefixes><Prefix>{xml_text(enc(p))}</Prefix></CommonPrefixes>\n"
        for p in prefixes
    )


def xml_doc(root: str, children: str) -> bytes:
    """An XML document: the declaration, then ``root`` around ``children``."""
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}{NS}>\n{children}</{root}>\n'.encode()


def el(name: str, value: str | int) -> str:
    """One child element line."""
    return f"  <{name}>{xml_text(str(value))}</{name}>\n"


def invalid_argument(message: str, name: str, value: str) -> OSSErrorResponse:
    """400 ``InvalidArgument`` naming the argument and its value."""
    return OSSErrorResponse(
        400, "InvalidArgument", message, [("ArgumentName", name), ("ArgumentValue", value)]
    )


def int_param(q: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter in ``[low, high]`` (``default`` when absent or empty)."""
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise invalid_argument(
            f"Argument {name} must be an integer between {low} and {high}.", name, raw
        )
    return int(raw)


def encoder(q: Mapping[str, str]) -> tuple[Callable[[str], str], str]:
    """How keys are written (``encoding-type=url``: URL-encoded) and the element saying so."""
    encoding = q.get("encoding-type")
    if encoding is None or encoding == "":
        return (lambda s: s), ""
    if encoding != "url":
        raise invalid_argument("Invalid encoding-type.", "encoding-type", encoding)
    return (lambda s: quote(s, safe="/")), el("EncodingType", "url")


def malformed() -> OSSErrorResponse:
    """400 ``MalformedXML``."""
    return OSSErrorResponse(
        400,
        "MalformedXML",
        "The XML you provided was not well-formed or did not validate against our published "
        "schema.",
    )


def parse_xml(body: bytes, root_tag: str) -> ET.Element:
    """Parse a (size-capped) request document; ``MalformedXML`` if it is not ``root_tag``."""
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise malformed()
    try:
        root = ET.fromstring(body)  # noqa: S314 - no DTD/entities (refused above)
    except ET.ParseError:
        raise malformed() from None
    if root.tag.rpartition("}")[2] != root_tag:
        raise malformed()
    return root
