"""The XML OSS speaks for multipart uploads and listings: building and defensive parsing."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from oss_callback.protocol._errors import ResponseError

__all__ = ["complete_body", "delete_body", "parse_xml", "strip_etag", "xml_safe"]

MAX_XML_BODY = 16 * 1024 * 1024


def strip_etag(value: str | None) -> str:
    """``"ABC"`` -> ``ABC``."""
    return (value or "").strip().strip('"')


def complete_body(parts: Iterable[tuple[int, str]]) -> bytes:
    """The CompleteMultipartUpload body for ``(part_number, etag)`` pairs (ascending)."""
    items = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>&quot;{escape(strip_etag(e))}&quot;</ETag></Part>"
        for n, e in parts
    )
    return f"<CompleteMultipartUpload>{items}</CompleteMultipartUpload>".encode()


def xml_safe(text: str) -> bool:
    """Whether XML 1.0 can carry ``text`` (most control characters it can't, even escaped)."""
    return all((c >= " " or c in "\t\n\r") and c not in "\ufffe\uffff" for c in text)


def delete_body(keys: Iterable[str], quiet: bool) -> bytes:
    """The DeleteMultipleObjects body for ``keys`` (each must be :func:`xml_safe`)."""
    items = "".join(f"<Object><Key>{escape(k)}</Key></Object>" for k in keys)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Delete><Quiet>{'true' if quiet else 'false'}</Quiet>{items}</Delete>"
    ).encode()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class Node:
    """A tiny, namespace-agnostic view of an element."""

    def __init__(self, element: ElementTree.Element, url_encoded: bool = False) -> None:
        self.element = element
        self.url_encoded = url_encoded

    def text(self, tag: str, default: str | None = None) -> str | None:
        for child in self.element:
            if _local(child.tag) == tag:
                return (child.text or "").strip()
        return default

    def required(self, tag: str, what: str) -> str:
        value = self.text(tag)
        if value is None:
            raise ResponseError(f"the {what} response has no <{tag}>: is the endpoint really OSS?")
        return value

    def key_text(self, tag: str, what: str) -> str:
        value = self.required(tag, what)
        return unquote(value) if self.url_encoded else value

    def children(self, tag: str) -> list[Node]:
        return [Node(c, self.url_encoded) for c in self.element if _local(c.tag) == tag]


def parse_xml(body: bytes, root_tag: str, what: str) -> Node:
    """Parse ``body`` whose root must be ``root_tag``; :class:`ResponseError` otherwise."""
    if len(body) > MAX_XML_BODY:
        raise ResponseError(f"the {what} response is too large ({len(body)} bytes) to be OSS XML")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise ResponseError(f"the {what} response has a DTD, which OSS never sends")
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - stdlib expat: no external entities
    except (ElementTree.ParseError, ValueError):
        snippet = body[:80].decode("utf-8", "replace")
        raise ResponseError(
            f"the {what} response is not XML (starts with {snippet!r}): check the endpoint"
        ) from None
    if _local(root.tag) != root_tag:
        raise ResponseError(f"the {what} response is <{_local(root.tag)}>, expected <{root_tag}>")
    node = Node(root)
    node.url_encoded = (node.text("EncodingType") or "").lower() == "url"
    return node
