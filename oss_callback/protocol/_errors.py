"""The exception tree. Every error this package raises on purpose derives from OSSError::

    OSSError                      the one root
    ├── ServiceError              OSS answered with an error (status, code, message, request id, ec)
    │   └── CallbackError         HTTP 203 CallbackFailed: the object IS stored; .result has it
    ├── RequestError              the request never got an answer (connect/read/write, timeout)
    └── ClientError               this side refused or detected a problem
        ├── InconsistentError     CRC-64 of what OSS stored != CRC-64 of what was sent
        ├── CheckpointError       an unusable checkpoint file (corrupt, foreign, newer version)
        ├── FileChangedError      the source file changed between runs or during the upload
        ├── ResponseError         the server's answer is not what OSS sends (e.g. HTML, bad XML)
        ├── CallbackUnknownError  stored, but a lost answer hid whether the callback succeeded
        └── ObjectTooLargeError   get_object refused an object over its max_size (memory)

Argument errors are plain ``ValueError``/``TypeError`` raised before any request is made.
HTTP status and OSS error codes are mapped to classes in one place: :func:`make_service_error`.

No secret reaches an error: every text taken from an answer (the error XML, ``x-oss-err``,
an HTML body, any header) goes through a :class:`Redactor` before a message is built from
it, so ``str(e)``, ``repr(e)``, ``e.message``, ``e.details`` and log lines never carry the
STS token, the access key secret or a request signature, even when a server or a proxy
echoes them.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, urlsplit
from xml.etree import ElementTree

from oss_callback.protocol._endpoint import _derive_region

if TYPE_CHECKING:
    from oss_callback.protocol._models import PutObjectResult

__all__ = [
    "CallbackError",
    "CallbackUnknownError",
    "CheckpointError",
    "ClientError",
    "FileChangedError",
    "InconsistentError",
    "OSSError",
    "ObjectTooLargeError",
    "Redactor",
    "RequestError",
    "ResponseError",
    "ServiceError",
    "make_service_error",
    "parse_error_xml",
]

#: Error bodies bigger than this are not parsed (a misbehaving server must not eat memory).
MAX_ERROR_BODY = 64 * 1024


class OSSError(Exception):
    """The root of every error raised by oss_callback."""


class ServiceError(OSSError):
    """OSS answered with an error.

    Attributes:
        status: the HTTP status code.
        code: the OSS error code (``NoSuchKey``, ``SignatureDoesNotMatch``, ...), or ``""``.
        message: the human-readable message OSS sent.
        request_id: ``x-oss-request-id`` (quote it to Alibaba Cloud support).
        ec: the detailed error code (``EC``/``x-oss-ec``), or ``None``.
        host_id: the ``HostId`` OSS sent, or ``None``.
        details: every child element of ``<Error>``, by tag (e.g. ``StringToSign``).
        hint: what to do about it, when the SDK can tell (e.g. the endpoint a redirect
            names), or ``None``; ``str(error)`` ends with it.
    """

    def __init__(
        self,
        status: int,
        code: str = "",
        message: str = "",
        request_id: str | None = None,
        *,
        ec: str | None = None,
        host_id: str | None = None,
        details: Mapping[str, str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.ec = ec
        self.host_id = host_id
        self.details: dict[str, str] = dict(details or {})
        self.hint = hint
        super().__init__(self._summary())

    def _summary(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(self.code)
        text = " ".join(parts)
        if self.message:
            text += f": {' '.join(self.message.split())}"
        extras = []
        if self.ec:
            extras.append(f"ec={self.ec}")
        if self.request_id:
            extras.append(f"request_id={self.request_id}")
        if extras:
            text += f" ({', '.join(extras)})"
        hint = self.hint or _HINTS.get(self.code)
        if hint:
            text += f" - {' '.join(hint.split())}"
        return text

    def __str__(self) -> str:
        return self._summary()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r}, ec={self.ec!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_service_error,
            (type(self), self.status, self.code, self.message, self.request_id, self.ec,
             self.host_id, self.details, self.hint),
        )


def _rebuild_service_error(
    cls: type[ServiceError],
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    ec: str | None,
    host_id: str | None,
    details: dict[str, str],
    hint: str | None = None,
) -> ServiceError:
    return cls(status, code, message, request_id, ec=ec, host_id=host_id, details=details,
               hint=hint)


_HINTS = {
    "SignatureDoesNotMatch": "check the access key secret, the region and the system clock",
    "InvalidAccessKeyId": "check the access key id (OSS_ACCESS_KEY_ID)",
    "RequestTimeTooSkewed": "the local clock is off by more than 15 minutes; sync it",
    "NoSuchBucket": "check the bucket name and the endpoint's region",
    "SecurityTokenExpired": "the STS token expired; get a new one",
}


class CallbackError(ServiceError):
    """The object was stored, but the upload callback failed (HTTP 203 ``CallbackFailed``).

    The upload itself succeeded: ``result`` is the stored object's :class:`PutObjectResult`
    (etag, crc64, request id, version id).  ``code``/``message`` say why the callback failed,
    as OSS reported it (e.g. the callback server timed out or did not answer JSON).
    Catch it to go on without the callback::

        try:
            result = await bucket.put_object(key, data, callback=cb)
        except CallbackError as e:
            result = e.result   # stored; notify the application some other way
    """

    def __init__(
        self,
        status: int,
        code: str = "",
        message: str = "",
        request_id: str | None = None,
        *,
        result: PutObjectResult,
        ec: str | None = None,
        host_id: str | None = None,
        details: Mapping[str, str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.result = result
        super().__init__(
            status, code, message, request_id, ec=ec, host_id=host_id, details=details,
            hint=hint,
        )

    def _summary(self) -> str:
        return f"object {self.result.key!r} was stored, but its upload callback failed: " + (
            super()._summary()
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_callback_error,
            (self.status, self.code, self.message, self.request_id, self.result, self.ec,
             self.host_id, self.details, self.hint),
        )


def _rebuild_callback_error(
    status: int,
    code: str,
    message: str,
    request_id: str | None,
    result: PutObjectResult,
    ec: str | None,
    host_id: str | None,
    details: dict[str, str],
    hint: str | None = None,
) -> CallbackError:
    return CallbackError(
        status, code, message, request_id, result=result, ec=ec, host_id=host_id,
        details=details, hint=hint,
    )


class RequestError(OSSError):
    """The request got no answer: connection refused/reset, DNS failure, or a timeout."""


class ClientError(OSSError):
    """This side refused or detected a problem (integrity, checkpoint, changed file...)."""


class InconsistentError(ClientError):
    """The CRC-64 OSS computed differs from the CRC-64 of the bytes that were sent."""

    def __init__(self, message: str, *, client_crc: int, server_crc: int,
                 request_id: str | None = None) -> None:
        self.client_crc = client_crc
        self.server_crc = server_crc
        self.request_id = request_id
        super().__init__(message)


    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_inconsistent_error,
            (str(self), self.client_crc, self.server_crc, self.request_id),
        )


def _rebuild_inconsistent_error(
    message: str, client_crc: int, server_crc: int, request_id: str | None
) -> InconsistentError:
    return InconsistentError(
        message, client_crc=client_crc, server_crc=server_crc, request_id=request_id
    )


class CheckpointError(ClientError):
    """A checkpoint file can't be used (corrupt, foreign, or from a newer version)."""


class FileChangedError(ClientError):
    """The source file changed between runs or while it was being uploaded."""


class ResponseError(ClientError):
    """The server answered with something OSS never sends (HTML, malformed XML, ...)."""


class CallbackUnknownError(ClientError):
    """The object is stored, but whether its upload callback succeeded is unknown.

    ``resumable_upload`` with a callback raises it when a CompleteMultipartUpload succeeded
    but its answer was lost: a previous run was killed or cut off during it (found on the
    rerun), or a retried Complete found its first attempt had gone through. OSS ran the
    callback then (or tried: a failed callback still stores the object, HTTP 203), and only
    the lost answer said how it went. The callback is not fired again (the object is not
    uploaded again either). ``result`` describes the stored
    object (``recovered=True``, ``callback_status=None``). Handle it like
    :class:`CallbackError`: the upload is done, make sure the application learns of it::

        try:
            result = await bucket.resumable_upload(key, path, callback=cb)
        except (CallbackError, CallbackUnknownError) as e:
            result = e.result   # stored; tell the application yourself (idempotently)
    """

    def __init__(self, message: str, *, result: PutObjectResult) -> None:
        self.result = result
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_callback_unknown_error, (str(self), self.result))


def _rebuild_callback_unknown_error(message: str, result: PutObjectResult) -> CallbackUnknownError:
    return CallbackUnknownError(message, result=result)


class ObjectTooLargeError(ClientError):
    """``get_object`` refused an object bigger than its ``max_size`` (it reads into memory).

    Raised as soon as the answer's ``Content-Length`` says so (nothing of the body is read),
    or, without one, once more than ``max_size`` bytes have arrived (the rest is not read).
    Stream big objects to disk with ``get_object_to_file(key, path)`` instead, or pass a
    larger ``max_size=`` (``None``: no limit).

    Attributes:
        key: the object key.
        size: the size the server announced, or (without ``Content-Length``) the bytes
            received when reading stopped: the object is at least that big.
        max_size: the limit that was exceeded.
    """

    def __init__(self, message: str, *, key: str, size: int, max_size: int) -> None:
        self.key = key
        self.size = size
        self.max_size = max_size
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_too_large, (str(self), self.key, self.size, self.max_size))


def _rebuild_too_large(message: str, key: str, size: int, max_size: int) -> ObjectTooLargeError:
    return ObjectTooLargeError(message, key=key, size=size, max_size=max_size)


# --------------------------------------------------------------------------- redaction

REDACTED = "<redacted>"
#: A run of this many characters of a secret is redacted wherever it appears, so a server
#: that echoes a token cut short (or a message cut at its length limit) leaks no half of it.
FRAGMENT = 16
#: Secrets shorter than this are never looked for (they would match ordinary words).
_MIN_SECRET = 4
#: ``name=value`` / ``name: value`` pairs whose value is a credential, whatever its value:
#: signatures (``Signature=`` of V4 and of V1 presigned URLs, ``x-oss-signature``,
#: ``SignatureProvided``) and tokens (``security-token``, ``x-oss-security-token``).
_LABELLED = re.compile(
    r"(?i)\b((?:x-oss-)?signature(?:provided)?|(?:x-oss-)?security-?token|"
    r"access-?key-?secret|access_key_secret)(\s*[=:]\s*\"?)[^\s&,;\"'<>]+"
)
#: A V1 ``Authorization: OSS <id>:<signature>`` value.
_V1_AUTHORIZATION = re.compile(r"\bOSS ([\w.\-]+):(?!//)[A-Za-z0-9+/=]{8,}")


def _forms(secret: str) -> set[str]:
    """How ``secret`` may show up in text: as is, URL-encoded, JSON-escaped, or as the hex
    dump OSS puts in ``StringToSignBytes``."""
    raw = secret.encode("utf-8", "surrogatepass")
    return {
        secret,
        quote(secret, safe=""),
        quote(secret, safe="/"),
        quote_plus(secret),
        secret.replace("/", "\\/"),
        " ".join(f"{b:02x}" for b in raw),
        " ".join(f"{b:02X}" for b in raw),
        raw.hex(),
        raw.hex().upper(),
    }


class Redactor:
    """Removes secrets from text: ``redact(text) -> text`` with each replaced by ``<redacted>``.

    What goes: every secret (the access key secret, the STS token, a request's signature)
    in its usual encodings (:func:`_forms`), and any run of :data:`FRAGMENT` characters of
    one of them; every ``exact`` text (a request's whole ``Authorization`` value, whose
    other parts - algorithm, key id, scope - are no secret and must stay readable
    elsewhere); and the value of any labelled credential (``Signature=...``,
    ``x-oss-signature=...``, ``security-token=...``, ``OSS id:sig``), known or not.
    The lookup tables are built on first use (only error paths pay for them).
    """

    def __init__(self, secrets: Iterable[str | None] = (), *,
                 exact: Iterable[str | None] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s and len(s) >= _MIN_SECRET)
        self._exact_only = tuple(s for s in exact if s and len(s) >= _MIN_SECRET)
        self._exact: list[str] | None = None
        self._grams: frozenset[str] = frozenset()

    def with_secrets(self, *more: str | None, exact: Iterable[str | None] = ()) -> Redactor:
        """A redactor for these secrets as well (e.g. one request's signature)."""
        return Redactor((*self._secrets, *more), exact=(*self._exact_only, *exact))

    def _build(self) -> list[str]:
        forms: set[str] = set()
        for secret in self._secrets:
            forms |= _forms(secret)
        self._grams = frozenset(
            form[i : i + FRAGMENT]
            for form in forms
            for i in range(len(form) - FRAGMENT + 1)
        )
        self._exact = sorted(forms | set(self._exact_only), key=len, reverse=True)
        return self._exact

    def __call__(self, text: str) -> str:
        if not text:
            return text
        exact = self._exact if self._exact is not None else self._build()
        for form in exact:
            if form in text:
                text = text.replace(form, REDACTED)
        if self._grams and len(text) >= FRAGMENT:
            text = self._drop_fragments(text)
        text = _LABELLED.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        return _V1_AUTHORIZATION.sub(lambda m: f"OSS {m.group(1)}:{REDACTED}", text)

    def _drop_fragments(self, text: str) -> str:
        grams = self._grams
        spans: list[list[int]] = []
        for i in range(len(text) - FRAGMENT + 1):
            if text[i : i + FRAGMENT] in grams:
                if spans and i <= spans[-1][1]:
                    spans[-1][1] = i + FRAGMENT
                else:
                    spans.append([i, i + FRAGMENT])
        if not spans:
            return text
        out: list[str] = []
        last = 0
        for start, end in spans:
            out.append(text[last:start])
            out.append(REDACTED)
            last = end
        out.append(text[last:])
        return "".join(out)


def _same(text: str) -> str:
    return text


# --------------------------------------------------------------------------- parsing


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
