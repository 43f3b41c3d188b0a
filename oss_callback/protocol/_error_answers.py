"""Reading OSS's error answers: the ``<Error>`` XML, ``x-oss-err``, and the exception they make.

HTTP status and OSS error codes are mapped to classes in one place:
:func:`make_service_error`. It also says what to do when the SDK can tell: where a redirect
points (the SDK never follows one), why a 203 without a callback is suspicious, and, given
``callback_hint`` (:func:`callback_failure_hint`), why an https callback failed. Every text
taken from the answer is redacted (a :class:`~oss_callback.protocol._redact.Redactor`)
before a message is built from it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from xml.etree import ElementTree

from oss_callback.protocol._endpoint import _derive_region
from oss_callback.protocol._errors import CallbackError, ServiceError

if TYPE_CHECKING:
    from oss_callback.protocol._models import PutObjectResult

__all__ = [
    "MAX_ERROR_BODY",
    "callback_failure_hint",
    "decode_x_oss_err",
    "make_service_error",
    "parse_error_xml",
]

#: Error bodies bigger than this are not parsed (a misbehaving server must not eat memory).
MAX_ERROR_BODY = 64 * 1024


def _same(text: str) -> str:
    return text


def parse_error_xml(body: bytes) -> dict[str, str]:
    """Return every child of ``<Error>`` as ``{tag: text}``; ``{}`` if it isn't error XML."""
    if not body or len(body) > MAX_ERROR_BODY or b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        return {}  # OSS never sends a DTD: refuse entity expansion outright
    try:
        root = ElementTree.fromstring(body)  # noqa: S314 - stdlib expat: no external entities
    except (ElementTree.ParseError, ValueError):
        return {}
    if _local(root.tag) != "Error":
        return {}
    return {_local(child.tag): (child.text or "").strip() for child in root}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def decode_x_oss_err(value: str) -> dict[str, str]:
    """Decode the base64 error XML OSS puts in ``x-oss-err`` on bodiless (HEAD) errors."""
    try:
        raw = base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        return {}
    return parse_error_xml(raw)


#: OSS's ``CallbackFailed`` message when it could not reach the callback URL: a refused
#: connection, an unknown host and a failed TLS handshake all read the same.
_CALLBACK_CONNECT_FAILED = re.compile(r"error status\s*:\s*-1\.?\s*oss can ?not connect", re.I)


def callback_failure_hint(urls: str, sends_sni: bool, message: str) -> str | None:
    """What to do about a failed callback, when the SDK can tell: OSS could not connect to
    an ``https://`` callback URL and the callback asked for no SNI (``callbackSNI``)."""
    https = any(urlsplit(u).scheme == "https" for u in urls.split(";"))
    if sends_sni or not https or not _CALLBACK_CONNECT_FAILED.search(message):
        return None
    if "sni=true" in message.lower():
        return None  # the message says it already (the emulator's does)
    return (
        "OSS called the https callback URL without SNI (Callback(sni=False)); if the server "
        "needs SNI, as most HTTPS servers behind a CDN, a load balancer or a shared IP do, "
        "the TLS handshake fails like this: use Callback(sni=True), or leave sni at its "
        "default (on for https URLs)"
    )


def make_service_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    result: PutObjectResult | None = None,
    redact: Callable[[str], str] | None = None,
    callback_hint: Callable[[str], str | None] | None = None,
) -> ServiceError:
    """Map an OSS error response to the right :class:`ServiceError` subclass.

    ``headers`` must be case-insensitive (``httpx.Headers``) or lower-case keyed. Every
    text taken from the answer goes through ``redact`` (a :class:`Redactor`) first.

    A 203 with a ``result`` (an upload that carried a callback) becomes
    :class:`CallbackError`; a 203 without one (no callback was attached) is a plain
    :class:`ServiceError` that says so, never labelled ``CallbackFailed`` by the SDK.
    A redirect (3xx) says where to: the ``<Endpoint>`` of OSS's ``PermanentRedirect``
    (the bucket is in another region) or the ``Location`` header. ``callback_hint`` turns a
    :class:`CallbackError`'s message into its hint (``None``: none).
    """
    clean = redact or _same
    raw_fields = parse_error_xml(body)
    if not raw_fields and headers.get("x-oss-err"):
        raw_fields = decode_x_oss_err(headers["x-oss-err"])
    fields = {clean(k): clean(v) for k, v in raw_fields.items()}
    code = fields.get("Code", "")
    message = fields.get("Message", "")
    if not fields and status != 203:
        # The whole (bounded) text is redacted before it is cut: a cut can't split a secret
        # into pieces that no longer match.
        text = clean(body[:MAX_ERROR_BODY].decode("utf-8", "replace")).strip()
        message = " ".join(text[:200].split())
    if not code and status == 203 and result is not None:
        code = "CallbackFailed"
    request_id = fields.get("RequestId") or _header(headers, "x-oss-request-id", clean)
    ec = fields.get("EC") or _header(headers, "x-oss-ec", clean)
    host_id = fields.get("HostId")
    hint: str | None = None
    if 300 <= status < 400:
        hint = _redirect_hint(fields.get("Endpoint"), _header(headers, "location", clean))
    if status == 203 and result is not None:
        return CallbackError(
            status, code, message, request_id,
            result=result, ec=ec, host_id=host_id, details=fields,
            hint=callback_hint(message) if callback_hint is not None else None,
        )
    if status == 203:
        hint = (
            "the server answered 203, which OSS sends only when an upload callback failed, "
            "but this request carried no callback: whether it took effect is unknown (check "
            "the object with head_object); is the endpoint really OSS, or is a proxy in between?"
        )
    return ServiceError(
        status, code, message, request_id, ec=ec, host_id=host_id, details=fields, hint=hint
    )


def _header(headers: Mapping[str, str], name: str, clean: Callable[[str], str]) -> str | None:
    value = headers.get(name)
    return clean(value) if value else None


def _redirect_hint(endpoint: str | None, location: str | None) -> str:
    """What to do about a redirect: the SDK never follows one (a signature is valid for the
    one host it was made for)."""
    if endpoint:
        host = endpoint.split("://", 1)[-1].strip("/")
        region = _derive_region(host.split(":", 1)[0].lower())
        where = f", region='{region}'" if region else ""
        return (
            f"the bucket is in another region: OSS asks to use the endpoint {host}; create "
            f"the client with endpoint='https://{host}'{where}"
        )
    if location:
        shown = location if len(location) <= 200 else location[:200] + "..."
        parts = urlsplit(location)
        origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None
        use = (f": if the bucket is served there, create the client with endpoint='{origin}'"
               if origin else "")
        return (
            f"the server redirects to {shown}, and the SDK does not follow redirects (a "
            f"request is signed for one host){use}; otherwise check the endpoint"
        )
    return "the server answered with a redirect that names no target; check the endpoint"
