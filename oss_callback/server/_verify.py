"""Verifying the callback POST that OSS sends to an application server (PROTOCOL.md §2).

What is checked, in order (the first failure raises, see :class:`CallbackSignatureError`)::

    method is POST
    len(body) <= max_body_size
    Content-Type is expected_body_type (when set)
    authorization: exactly one header, standard base64,     -> the RSA signature
        at most 512 bytes (a 4096-bit RSA signature)
    x-oss-pub-key-url: exactly one header, standard base64  -> the key URL (unless pinned)
    the key URL is allowed                                  -> else no request is made at all
        under an allowed prefix, no query, no fragment; on gosspublic.alicdn.com only
        /callback_pub_key_v<N>.pem, always fetched over https
    the key: pinned, cached (LRU + TTL), or fetched once    -> GET, no redirects, size-capped;
        a failed fetch is remembered for key_failure_ttl seconds
    RSA PKCS#1 v1.5 over MD5 of
        unquote(path) [+ "?" + raw query] + "\\n" + body     (and unquote_plus(path), see below)
    the body parses as its content type says (form or JSON object), and a form body is
        not a JSON document (Content-Type is not signed)

A signature proves OSS sent the body, not that the body talks about *your* bucket: OSS
signs every customer's callbacks with the same key, and a body template may hold
constants. :meth:`VerifiedCallback.confirm` closes that gap (it HEADs the object with the
application's own credentials); :meth:`VerifiedCallback.check_secret` is the alternative
for a per-upload secret.

Why two decodings of the path: OSS signs ``url_decode(path)``, and whether its decoder turns
``+`` into a space (Ruby ``CGI.unescape``, PHP ``urldecode``) or keeps it (Python
``unquote``) is not documented.  A path without ``+`` has one decoding; one with ``+`` is
tried both ways.  Both strings are produced from the same bytes, so nothing an attacker
controls becomes signed that OSS did not sign.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hmac
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlsplit

import anyio
import attrs
import httpx
from anyio.lowlevel import RunVar

from oss_callback._version import __version__
from oss_callback.client._http import closing_iter
from oss_callback.protocol._errors import ClientError, OSSError, ServiceError

if TYPE_CHECKING:
    from oss_callback.client._client import AsyncBucket
    from oss_callback.client._sync import Bucket
    from oss_callback.protocol._models import HeadObjectResult

try:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "oss_callback.server needs the 'cryptography' package to verify callback "
        "signatures; install it with: pip install 'oss-callback[server]' "
        "(or 'oss-callback[fastapi]' for the FastAPI integration)"
    ) from exc

__all__ = [
    "CONFIRMABLE_FIELDS",
    "DEFAULT_KEY_HOSTS",
    "BodyType",
    "CallbackBodyError",
    "CallbackNotConfirmedError",
    "CallbackSignatureError",
    "CallbackVerifier",
    "PublicKeyFetchError",
    "Reason",
    "VerifiedCallback",
    "callback_string_to_sign",
    "verify_asgi",
    "verify_starlette_request",
]

logger = logging.getLogger("oss_callback.server")

#: The host OSS serves its callback public keys from.
DEFAULT_KEY_HOSTS: tuple[str, ...] = ("gosspublic.alicdn.com",)

FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPE = "application/json"

#: The two body types OSS sends (``Callback(body_type=...)``).
BodyType: TypeAlias = Literal["application/x-www-form-urlencoded", "application/json"]

#: The body fields :meth:`VerifiedCallback.confirm` checks against the stored object.
CONFIRMABLE_FIELDS: Final = ("object", "bucket", "size", "etag", "crc64")

#: Why a callback was refused (``CallbackSignatureError.reason``).
Reason = Literal[
    "method_not_allowed",
    "body_too_large",
    "missing_signature",
    "malformed_signature",
    "missing_key_url",
    "malformed_key_url",
    "key_url_not_allowed",
    "key_fetch_failed",
    "key_too_large",
    "key_invalid",
    "bad_signature",
    "unsupported_algorithm",
    "malformed_body",
    "body_type_mismatch",
    "not_confirmed",
    "confirm_failed",
]

#: What ``headers`` may be: a mapping, or ``(name, value)`` pairs (ASGI raw headers).
HeadersInput: TypeAlias = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]
#: What ``public_key`` may be: PEM (or DER) text/bytes, or a loaded key.
PublicKeyInput: TypeAlias = str | bytes | rsa.RSAPublicKey

_MAX_KEY_URL = 2048
_MAX_FORM_FIELDS = 10_000
#: A 4096-bit RSA signature: the longest accepted (OSS's key is 512 bits: 64 bytes).
_MAX_SIGNATURE = 512
#: The longest base64 text that can decode to ``n`` bytes.
_MAX_SIGNATURE_B64 = 4 * ((_MAX_SIGNATURE + 2) // 3)
_MAX_KEY_URL_B64 = 4 * ((_MAX_KEY_URL + 2) // 3)
#: Failed key fetches remembered at once (the oldest is forgotten first).
_MAX_FAILURES = 256
# Host or host:port, or a bracketed IPv6 literal with an optional port (used with fullmatch).
_HOST_ENTRY = re.compile(r"(?:[a-z0-9](?:[a-z0-9.\-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
#: OSS's own key host, where only OSS's key paths are fetched, and only over https.
_OSS_KEY_HOST = "gosspublic.alicdn.com"
_OSS_KEY_URL = re.compile(r"https?://gosspublic\.alicdn\.com(/callback_pub_key_v(?:0|[1-9][0-9]{0,3})\.pem)")
_UTF8_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------- errors


class CallbackSignatureError(ClientError):
    """The callback can't be trusted (or, once verified, can't be used).

    Every failure of :meth:`CallbackVerifier.verify` and :meth:`VerifiedCallback.confirm`
    raises this class or a subclass, so a single ``except CallbackSignatureError``
    (answering HTTP 400) covers them all::

        ClientError
        └── CallbackSignatureError         missing/malformed/wrong signature, tampered
            │                              request, key URL not allowed, not a POST
            ├── PublicKeyFetchError        the public key could not be fetched or loaded
            ├── CallbackBodyError          the body is too large, or is not the form/JSON
            │                              it claims (or not the expected_body_type)
            └── CallbackNotConfirmedError  signed by OSS, but not about an object stored in
                                           your bucket (confirm), or the wrong secret

    Attributes:
        reason: a short machine-readable code (:data:`Reason`), e.g. ``"bad_signature"``,
            ``"key_url_not_allowed"``, ``"body_too_large"``. Meant for logs; the message
            never contains key material or the signature.
    """

    def __init__(self, message: str, *, reason: Reason = "bad_signature") -> None:
        self.reason: Reason = reason
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), str(self), self.reason))


def _rebuild_error(
    cls: type[CallbackSignatureError], message: str, reason: Reason
) -> CallbackSignatureError:
    return cls(message, reason=reason)


class PublicKeyFetchError(CallbackSignatureError):
    """The public key at an allowed URL could not be used.

    The request failed or timed out, the answer was not ``200``, it was bigger than
    ``max_key_size``, or it was not an RSA public key in PEM.  A failure is remembered for
    ``key_failure_ttl`` seconds (60 by default): callbacks naming the same URL meanwhile are
    refused without another request (or verified with the previous key, if there was one).
    """


class CallbackBodyError(CallbackSignatureError):
    """The body is bigger than ``max_body_size``, or (signature valid) does not parse.

    A form body must be UTF-8 ``application/x-www-form-urlencoded`` and must not be a JSON
    document (reason ``"body_type_mismatch"``: ``Content-Type`` is not signed, so a JSON
    body replayed as a form could smuggle in fields); a JSON body must be a JSON object.
    With ``expected_body_type`` set, any other ``Content-Type`` is refused
    (``"body_type_mismatch"``) before the signature is checked.
    """


class CallbackNotConfirmedError(CallbackSignatureError):
    """A verified callback that does not describe an object stored in your bucket.

    Raised by :meth:`VerifiedCallback.confirm` (``confirm_sync``) and
    :meth:`VerifiedCallback.check_secret`. ``reason`` is ``"not_confirmed"`` when the
    callback names another bucket, no object, an object that doesn't exist, or one whose
    size/etag/crc64 differ, or when the secret is missing or wrong; ``"confirm_failed"``
    when the HEAD request itself failed (OSS unreachable, access denied: the callback may
    be genuine, but it could not be confirmed). The :class:`~oss_callback.OSSError` of a
    failed HEAD is the ``__cause__``.
    """


# --------------------------------------------------------------------------- headers


class _Headers(Mapping[str, str]):
    """A read-only, case-insensitive view of request headers.

    ``headers["Content-Type"]`` and ``headers["content-type"]`` are the same; repeated
    headers are joined with ``", "`` (use :meth:`getlist` for the separate values).
    """

    __slots__ = ("_items", "_map")

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = tuple((name.lower(), value) for name, value in items)
        grouped: dict[str, list[str]] = {}
        for name, value in self._items:
            grouped.setdefault(name, []).append(value)
        self._map = grouped

    def __getitem__(self, name: str) -> str:
        return ", ".join(self._map[name.lower()])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def getlist(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in the order received."""
        return list(self._map.get(name.lower(), ()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Headers):
            return self._items == other._items
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _normalize_headers(headers: HeadersInput) -> _Headers:
    if isinstance(headers, _Headers):
        return headers
    pairs: Iterable[tuple[str | bytes, str | bytes]]
    if isinstance(headers, Mapping):
        multi = getattr(headers, "multi_items", None)  # httpx.Headers keeps repeats apart
        pairs = multi() if callable(multi) else headers.items()
    else:
        pairs = headers
    return _Headers((_text(name), _text(value)) for name, value in pairs)


# --------------------------------------------------------------------------- the result


@attrs.frozen(kw_only=True)
class VerifiedCallback:
    """A callback whose signature checked out, with its body parsed.

    Attributes:
        method: the HTTP method (always ``"POST"``).
        path: the request path as OSS signed it (percent-decoded).
        query_string: the raw query string (``""`` when there is none).
        query: the query string parsed into ``{name: value}`` (the last value wins).
        headers: the request headers, case-insensitive and read-only.
        body: the raw bytes that were verified.
        fields: the parsed body: form fields (``{name: value}``, the last value wins) or the
            JSON object. Values of a form body are strings (``fields["size"] == "1024"``).
        content_type: the media type of the body, lower-case, without parameters
            (``"application/x-www-form-urlencoded"`` or ``"application/json"``; ``""``
            when the request had none).
        key_url: the public-key URL the key was fetched from (``https://`` for OSS's own
            key host, whatever the header said), or ``None`` when the key is pinned.
        confirmed: the stored object's metadata when the callback was confirmed by the
            FastAPI dependency (``callback_dependency(..., confirm_with=bucket)``), else
            ``None``. :meth:`confirm` returns the same thing.

    Warning:
        The signature proves that OSS sent this body, **not** that it is about your bucket:
        OSS signs every customer's callbacks with one key, and a body template may hold
        constants, so anyone can make OSS sign ``bucket=yours&object=paid.mp4&size=1``
        for an upload to *their* bucket and replay it to you. Before trusting ``bucket``,
        ``object``, ``size`` or ``etag``, call :meth:`confirm` (or use a per-upload secret,
        :meth:`check_secret`).
    """

    method: str
    path: str
    query_string: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    fields: dict[str, Any]
    content_type: str
    key_url: str | None = None
    confirmed: HeadObjectResult | None = None

    def get(self, name: str, default: Any = None) -> Any:
        """Return body field ``name``, or ``default`` when the body has no such field."""
        return self.fields.get(name, default)

    def __getitem__(self, name: str) -> Any:
        """Return body field ``name``; ``KeyError`` if the body has no such field."""
        return self.fields[name]

    def __contains__(self, name: object) -> bool:
        """Whether the body has a field ``name``."""
        return name in self.fields

    # ------------------------------------------------------------------ confirmation

    async def confirm(
        self, bucket: AsyncBucket | Bucket, *, require: Iterable[str] = ()
    ) -> HeadObjectResult:
        """Check, with your own credentials, that this callback is about your stored object.

        Defeats the cross-account replay (see the class's warning): it HEADs the object
        named in the body's ``object`` field in ``bucket`` and checks, before and after::

            object   required: a non-empty string naming an object that exists in bucket
            bucket   if the body has it: equal to bucket.name (refused before any request)
            size     if the body has it: equal to the stored object's size
            etag     if the body has it: equal to its ETag (quotes and case ignored)
            crc64    if the body has it: equal to its CRC-64

        Put the fields in your ``Callback`` body template
        (``"bucket=${bucket}&object=${object}&size=${size}&etag=${etag}"``) and list the
        ones your template always has in ``require``: a callback without them did not
        come from your template. ``etag`` pins the exact upload (an attacker can't know
        it for an object they can't read). Other fields (``mimeType``, custom
        ``${x:...}`` variables) are **not** checked: they are whatever the signed body
        says; use :meth:`check_secret` to tie them to an upload you authorised.

        Args:
            bucket: your bucket: an :class:`~oss_callback.AsyncBucket` used on this event
                loop, or a sync :class:`~oss_callback.Bucket` (its HEAD then runs in a
                worker thread).
            require: body fields that must be present besides ``object`` (any of
                ``"bucket"``, ``"size"``, ``"etag"``, ``"crc64"``).

        Returns:
            The stored object's metadata (``size``, ``etag``, ``crc64``, ``metadata``...):
            prefer these values to the body's.

        Raises:
            CallbackNotConfirmedError: ``reason="not_confirmed"``: a required field is
                missing, the body names another bucket or no object, the object doesn't
                exist, or a field differs; ``reason="confirm_failed"``: the HEAD failed
                (network, permissions; the OSS error is the ``__cause__``).
            ValueError: ``require`` names a field that can't be checked.
        """
        from oss_callback.client._sync import Bucket

        if isinstance(bucket, Bucket):
            confirm = functools.partial(self.confirm_sync, bucket, require=require)
            return await anyio.to_thread.run_sync(confirm)
        key = self._confirm_target(bucket.name, require)
        try:
            head = await bucket.head_object(key)
        except (OSSError, ValueError) as exc:
            raise _head_failed(bucket.name, key, exc) from exc
        self._check_head(bucket.name, head)
        return head

    def confirm_sync(self, bucket: Bucket, *, require: Iterable[str] = ()) -> HeadObjectResult:
        """The blocking twin of :meth:`confirm`, with a sync :class:`~oss_callback.Bucket`.

        For WSGI apps and plain ``def`` handlers (which FastAPI runs in a worker thread).
        Same checks, result and errors as :meth:`confirm`.

        Raises:
            TypeError: ``bucket`` is an :class:`~oss_callback.AsyncBucket` (``await
                cb.confirm(bucket)`` instead).
        """
        from oss_callback.client._client import AsyncBucket

        given: object = bucket  # a runtime check for callers without a type checker
        if isinstance(given, AsyncBucket):
            raise TypeError(
                "confirm_sync() needs a sync oss_callback.Bucket; with an AsyncBucket use "
                "'await cb.confirm(bucket)'"
            )
        key = self._confirm_target(bucket.name, require)
        try:
            head = bucket.head_object(key)
        except (OSSError, ValueError) as exc:
            raise _head_failed(bucket.name, key, exc) from exc
        self._check_head(bucket.name, head)
        return head

    def check_secret(self, field: str, expected: str | None) -> None:
        """Check a per-upload secret: the other defence against cross-account replays.

        When the application authorises an upload it makes a random secret, remembers it
        for that object, and the uploader passes it as a callback variable that the body
        template echoes::

            secret = secrets.token_urlsafe(16)          # remembered for "uploads/a.jpg"
            Callback(url, body="object=${object}&size=${size}&nonce=${x:nonce}",
                     variables={"x:nonce": secret})

            cb.check_secret("nonce", pending.pop(cb["object"], None))   # in the handler

        Someone replaying a callback signed for *their* bucket can't know the secret. It
        proves the upload was one you authorised, not that the object is stored, nor that
        the uploader (who knows the secret) didn't lie about the rest: use :meth:`confirm`
        when you can.

        Args:
            field: the body field that carries the secret (``"nonce"`` above).
            expected: the secret issued for this upload; ``None`` or ``""`` (none was
                issued) is refused.

        Raises:
            CallbackNotConfirmedError: (``reason="not_confirmed"``) the field is missing
                or differs (compared in constant time).
        """
        value = self.fields.get(field)
        if (
            not expected
            or not isinstance(value, str)
            or not hmac.compare_digest(value.encode("utf-8"), expected.encode("utf-8"))
        ):
            raise CallbackNotConfirmedError(
                f"the callback's {field[:64]!r} field does not match the secret issued for "
                "this upload",
                reason="not_confirmed",
            )

    def _confirm_target(self, bucket_name: str, require: Iterable[str]) -> str:
        required = _required_fields(require)
        key = self.fields.get("object")
        if not isinstance(key, str) or not key:
            raise CallbackNotConfirmedError(
                "the callback body has no object field to confirm (put object=${object} in "
                "the Callback body)",
                reason="not_confirmed",
            )
        missing = [name for name in required if name not in self.fields]
        if missing:
            raise CallbackNotConfirmedError(
                f"the callback body lacks {', '.join(missing)} (required to confirm it)",
                reason="not_confirmed",
            )
        if "bucket" in self.fields and self.fields["bucket"] != bucket_name:
            raise CallbackNotConfirmedError(
                f"the callback is about bucket {_shown(self.fields['bucket'])}, not "
                f"{bucket_name!r}",
                reason="not_confirmed",
            )
        return key

    def _check_head(self, bucket_name: str, head: HeadObjectResult) -> None:
        mismatches: list[str] = []
        if "size" in self.fields and _as_int(self.fields["size"]) != head.size:
            mismatches.append(f"size {_shown(self.fields['size'])} (stored: {head.size})")
        claimed_etag = _etag(self.fields.get("etag"))
        if "etag" in self.fields and (claimed_etag is None or claimed_etag != _etag(head.etag)):
            mismatches.append(f"etag {_shown(self.fields['etag'])} (stored: {head.etag!r})")
        if "crc64" in self.fields and (
            head.crc64 is None or _as_int(self.fields["crc64"]) != head.crc64
        ):
            mismatches.append(f"crc64 {_shown(self.fields['crc64'])} (stored: {head.crc64})")
        if mismatches:
            raise CallbackNotConfirmedError(
                f"the callback does not match oss://{bucket_name}/{head.key}: "
                + "; ".join(mismatches),
                reason="not_confirmed",
            )


def _required_fields(require: Iterable[str]) -> tuple[str, ...]:
    names = (require,) if isinstance(require, str) else tuple(require)
    unknown = [name for name in names if name not in CONFIRMABLE_FIELDS]
    if unknown:
        raise ValueError(
            f"require: {unknown!r} can't be confirmed; choose from {CONFIRMABLE_FIELDS!r}"
        )
    return names


def _shown(value: Any) -> str:
    """An attacker-controlled value, safe and short for a message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        return int(value)
    return None


def _etag(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip().strip('"'):
        return None
    return value.strip().strip('"').upper()


def _head_failed(bucket_name: str, key: str, exc: Exception) -> CallbackNotConfirmedError:
    where = f"oss://{bucket_name}/{_shown(key)[1:-1]}"
    if isinstance(exc, ValueError):
        return CallbackNotConfirmedError(
            f"the callback names {where}, which is not a valid object key",
            reason="not_confirmed",
        )
    if isinstance(exc, ServiceError) and exc.status == 404:
        return CallbackNotConfirmedError(
            f"the callback names {where}, which does not exist", reason="not_confirmed"
        )
    return CallbackNotConfirmedError(
        f"could not HEAD {where} to confirm the callback: {type(exc).__name__}: {exc}",
        reason="confirm_failed",
    )


# --------------------------------------------------------------------------- signing input


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def callback_string_to_sign(path: str | bytes, query_string: str | bytes, body: bytes) -> bytes:
    """The bytes OSS signs for a callback: ``unquote(path) [+ "?" + query] + "\\n" + body``.

    Args:
        path: the raw (percent-encoded) request path, e.g. ``"/oss%20callback"``.
        query_string: the raw query string without ``?`` (``""`` when there is none).
            It is not decoded.
        body: the raw request body.

    Returns:
        The string to sign, as bytes (the MD5 of it is what OSS signs with RSA).
    """
    message = unquote_to_bytes(_as_bytes(path))
    query = _as_bytes(query_string)
    if query:
        message += b"?" + query
    return message + b"\n" + body


def _decoded_paths(path: bytes) -> list[bytes]:
    """``unquote(path)``, then ``unquote_plus(path)`` when that differs (the ``+`` pitfall)."""
    decoded = unquote_to_bytes(path)
    paths = [decoded]
    if b"+" in path:
        plus = unquote_to_bytes(path.replace(b"+", b" "))
        if plus != decoded:
            paths.append(plus)
    return paths


# --------------------------------------------------------------------------- key policy


@attrs.frozen
class _Prefix:
    text: str
    scheme: str
    netloc: bytes


def _parse_allowed(entries: Sequence[str] | str) -> tuple[_Prefix, ...]:
    if isinstance(entries, str):
        entries = (entries,)
    prefixes: list[_Prefix] = []
    for entry in entries:
        if not isinstance(entry, str) or not entry or entry != entry.strip():
            raise ValueError(f"allowed_key_hosts: {entry!r} is not a host or URL prefix")
        texts: list[str]
        if "://" in entry:
            parts = urlsplit(entry)
            scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
            if (
                scheme not in ("http", "https")
                or not _HOST_ENTRY.fullmatch(netloc)
                or parts.query
                or parts.fragment
                or "?" in entry
                or "#" in entry
            ):
                raise ValueError(
                    f"allowed_key_hosts: {entry!r} must be an http(s)://host[:port][/path/] "
                    "prefix without user info, query or fragment"
                )
            texts = [f"{scheme}://{netloc}{parts.path or '/'}"]
        else:
            host = entry.lower()
            if not _HOST_ENTRY.fullmatch(host):
                raise ValueError(
                    f"allowed_key_hosts: {entry!r} must be a host or host:port "
                    "(e.g. 'gosspublic.alicdn.com' or '127.0.0.1:9000'), or an "
                    "http(s)://host[:port]/ URL prefix"
                )
            texts = [f"http://{host}/", f"https://{host}/"]
        for text in texts:
            try:
                url = httpx.URL(text)
            except httpx.InvalidURL as exc:
                raise ValueError(f"allowed_key_hosts: {entry!r} is not a valid URL") from exc
            prefixes.append(_Prefix(text, url.scheme, url.netloc))
    return tuple(prefixes)


def _allowed_prefix(url: str, prefixes: tuple[_Prefix, ...]) -> _Prefix | None:
    """The prefix ``url`` is under, or ``None``: the allow-list check (no I/O)."""
    if len(url) > _MAX_KEY_URL or any(not 0x21 <= ord(c) <= 0x7E or c == "\\" for c in url):
        return None
    # No "." or ".." path segments (raw or %2e-encoded): they could climb out of a prefix.
    path = url.split("://", 1)[-1].split("?", 1)[0].split("#", 1)[0]
    if any(seg.lower().replace("%2e", ".") in (".", "..") for seg in path.split("/")[1:]):
        return None
    for prefix in prefixes:
        if not url.startswith(prefix.text):
            continue
        # Belt and braces: the URL the HTTP client will really connect to must agree.
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            return None
        if parsed.scheme == prefix.scheme and parsed.netloc == prefix.netloc:
            return prefix
        return None
    return None


def _key_fetch_url(url: str, prefixes: tuple[_Prefix, ...]) -> str | None:
    """The URL to fetch the key named by ``url`` from, or ``None`` if it is not allowed.

    No I/O. Beyond the allow-list (:func:`_allowed_prefix`): no query and no fragment
    (each would make another cache entry for the same file), and on OSS's own key host
    only OSS's key path, fetched over https even when the header says http.
    """
    if "?" in url or "#" in url or _allowed_prefix(url, prefixes) is None:
        return None
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL:
        return None
    if host == _OSS_KEY_HOST:
        match = _OSS_KEY_URL.fullmatch(url)
        return None if match is None else f"https://{_OSS_KEY_HOST}{match.group(1)}"
    return url


def _load_public_key(value: PublicKeyInput | None) -> rsa.RSAPublicKey | None:
    if value is None or isinstance(value, rsa.RSAPublicKey):
        return value
    if not isinstance(value, str | bytes):
        raise TypeError(
            "public_key must be PEM (str or bytes) or a cryptography RSAPublicKey, "
            f"got {type(value).__name__}"
        )
    data = _as_bytes(value)
    try:
        if data.lstrip().startswith(b"-----"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("public_key is not a PEM/DER public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"public_key must be an RSA key, got {type(key).__name__}")
    return key


def _key_repr(key: rsa.RSAPublicKey | None) -> str:
    return "None" if key is None else f"<RSAPublicKey {key.key_size} bits>"


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _size(minimum: int) -> Callable[[object, attrs.Attribute[Any], int], None]:
    def check(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{attribute.name} must be an int >= {minimum}, got {value!r}")

    return check


def _body_type(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and value not in (FORM_TYPE, JSON_TYPE):
        raise ValueError(
            f"{attribute.name} must be None, {FORM_TYPE!r} or {JSON_TYPE!r}, got {value!r}"
        )


def _to_tuple(value: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


# --------------------------------------------------------------------------- key cache


class _KeyCache:
    """A thread-safe LRU of fetched keys; entries expire after ``ttl`` seconds.

    Two tiers of at most ``maxsize`` entries each: a key that has verified a callback
    (``trusted``), and a key only fetched so far (a forged callback can name any allowed
    URL, and the key there may be perfectly valid). Untrusted keys never evict trusted ones,
    so junk URLs can't flush the real key; :meth:`promote` moves a key up once it verified
    a signature. Expired trusted entries stay (until the LRU bound evicts them) so that a
    key can be used stale when refreshing it fails.
    """

    def __init__(
        self, maxsize: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._maxsize = maxsize
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, rsa.RSAPublicKey]] = OrderedDict()
        self._untrusted: OrderedDict[str, tuple[float, rsa.RSAPublicKey]] = OrderedDict()

    def lookup(self, url: str) -> tuple[rsa.RSAPublicKey, bool] | None:
        """``(key, trusted)`` for the fresh key for ``url``, or ``None``."""
        now = self._clock()
        with self._lock:
            for tier, trusted in ((self._entries, True), (self._untrusted, False)):
                entry = tier.get(url)
                if entry is not None and entry[0] > now:
                    tier.move_to_end(url)
                    return entry[1], trusted
            return None

    def get(self, url: str) -> rsa.RSAPublicKey | None:
        """The fresh key for ``url`` (trusted or not), or ``None``."""
        found = self.lookup(url)
        return None if found is None else found[0]

    def get_stale(self, url: str) -> rsa.RSAPublicKey | None:
        """The trusted key for ``url`` even if it expired, or ``None``."""
        with self._lock:
            entry = self._entries.get(url)
            return None if entry is None else entry[1]

    def put(self, url: str, key: rsa.RSAPublicKey, *, trusted: bool = True) -> None:
        """Remember ``key`` for ``url`` (evicting the least recently used of its tier)."""
        if self._maxsize <= 0 or self._ttl <= 0:
            return
        with self._lock:
            tier = self._entries if trusted else self._untrusted
            tier[url] = (self._clock() + self._ttl, key)
            tier.move_to_end(url)
            while len(tier) > self._maxsize:
                tier.popitem(last=False)
            if trusted:
                self._untrusted.pop(url, None)

    def promote(self, url: str, key: rsa.RSAPublicKey) -> None:
        """``key`` (fetched from ``url``) verified a callback: trust it."""
        with self._lock:
            entry = self._untrusted.pop(url, None)
            if entry is None or entry[1] is not key:
                return
            self._entries[url] = entry
            self._entries.move_to_end(url)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._entries.clear()
            self._untrusted.clear()

    def __len__(self) -> int:
        """How many trusted keys are kept."""
        with self._lock:
            return len(self._entries)


class _FailureCache:
    """Failed key fetches, remembered for ``ttl`` seconds (at most ``maxsize`` of them).

    Without it every forged callback naming a dead URL would fetch it again. Failures live
    apart from the keys: they never evict one.
    """

    def __init__(
        self, ttl: float, maxsize: int = _MAX_FAILURES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._maxsize = maxsize
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, PublicKeyFetchError]] = OrderedDict()

    def get(self, url: str) -> PublicKeyFetchError | None:
        """The failure remembered for ``url`` (a fresh copy), or ``None``."""
        with self._lock:
            entry = self._entries.get(url)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[url]
                return None
            return _copy_error(entry[1])

    def put(self, url: str, error: PublicKeyFetchError) -> None:
        """Remember that fetching ``url`` failed with ``error``."""
        if self._ttl <= 0:
            return
        with self._lock:
            self._entries[url] = (self._clock() + self._ttl, error)
            self._entries.move_to_end(url)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def discard(self, url: str) -> None:
        """Forget the failure of ``url``, if any."""
        with self._lock:
            self._entries.pop(url, None)

    def clear(self) -> None:
        """Forget every failure."""
        with self._lock:
            self._entries.clear()


def _copy_error(error: PublicKeyFetchError) -> PublicKeyFetchError:
    return type(error)(str(error), reason=error.reason)


class _UrlLocks:
    """One lock per key URL for the blocking fetches, made on demand and dropped when idle.

    A slow key server then delays only the callbacks that need *its* key.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, url: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(url) or (threading.Lock(), 0)
            self._locks[url] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[url]
                if users <= 1:
                    del self._locks[url]
                else:
                    self._locks[url] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


@attrs.define
class _Flight:
    """One in-progress fetch that concurrent callbacks for the same URL wait on."""

    event: anyio.Event = attrs.field(factory=anyio.Event)
    key: rsa.RSAPublicKey | None = None
    trusted: bool = False
    error: PublicKeyFetchError | None = None


# --------------------------------------------------------------------------- the verifier


@attrs.frozen(kw_only=True)
class CallbackVerifier:
    """Verifies the signed callback POSTs OSS sends after an upload.

    ::

        verifier = CallbackVerifier()                           # fetch from gosspublic.alicdn.com
        verifier = CallbackVerifier(public_key=pem)             # pinned: never fetches
        verifier = CallbackVerifier(allowed_key_hosts=("127.0.0.1:9000",))   # the emulator

        verified = await verifier.verify(method, path, query_string, headers, body)
        await verified.confirm(bucket)     # and it is about an object in *your* bucket

    A verifier holds no connections and needs no closing; share one per application (its
    key cache is thread-safe and works across event loops).

    A verified signature proves that OSS sent the body, not that the body is about your
    bucket (see :class:`VerifiedCallback`): confirm it with
    :meth:`VerifiedCallback.confirm` before trusting ``bucket``/``object``/``size``/``etag``.

    Args:
        public_key: pin the key: PEM (``str``/``bytes``; DER bytes work too) or a loaded
            ``cryptography`` ``RSAPublicKey``. Then ``x-oss-pub-key-url`` is ignored and
            nothing is ever fetched.
        allowed_key_hosts: where ``x-oss-pub-key-url`` may point (unpinned only). Each
            entry is either a host (``"gosspublic.alicdn.com"``, ``"127.0.0.1:9000"``),
            which allows ``http://HOST/`` and ``https://HOST/``, or a URL prefix
            (``"https://keys.example.com/oss/"``; with no path, ``/`` is added). A key URL
            must start with one of these (compared exactly, trailing slash included, so
            ``gosspublic.alicdn.com.evil.com`` and ``user@`` tricks don't match), and its
            parsed scheme, host and port must agree; key URLs with a query or a fragment
            are refused too. Anything else is refused **before** any request is made.
            ``()`` refuses every key URL. OSS's own host ``gosspublic.alicdn.com`` (the
            default) gets stricter rules: only OSS's key path
            ``/callback_pub_key_v<N>.pem`` is allowed there, and it is always fetched
            over ``https://`` (an ``http://`` key URL in the header is upgraded), so
            nobody on the network path can swap the key.
        expected_body_type: ``"application/x-www-form-urlencoded"`` or
            ``"application/json"``: the body type your ``Callback`` uses. A callback
            with any other ``Content-Type`` is then refused (``Content-Type`` is not
            signed: a JSON body replayed as a form could smuggle fields in). ``None``
            (default) accepts both, but still refuses a form ``Content-Type`` on a body
            that is a JSON document.
        max_body_size: callbacks with a bigger body are refused (OSS sends at most 1 MB).
        max_key_size: a key response bigger than this many bytes is refused.
        fetch_timeout: seconds allowed for fetching a key, all of it (OSS waits 5 s for the
            whole callback).
        key_cache_size: how many fetched keys are kept (least recently used evicted).
        key_cache_ttl: seconds a fetched key is used before it is fetched again. If the
            refresh fails, the expired key keeps being used (and a warning is logged).
            ``0`` disables caching. A key that has not yet verified a callback is kept
            apart, so keys fetched for forged callbacks never evict the real one.
        key_failure_ttl: seconds a failed key fetch is remembered: callbacks naming that
            URL meanwhile fail at once (or use the expired key) instead of fetching again.
            ``0`` disables it.

    Before any fetch, a signature longer than 512 bytes (a 4096-bit RSA signature; OSS's
    are 64) is refused as ``"malformed_signature"``. Concurrent callbacks needing the same
    key share one fetch (:meth:`verify`: per event loop; :meth:`verify_sync`: one lock
    per URL, so a slow key server only delays the callbacks that need its key).

    Warning:
        A signature proves OSS sent the body, not when: OSS signs no timestamp or nonce, so
        a captured callback can be replayed. Make handlers idempotent (key them on bucket,
        object and etag). The path checked is the one the application sees: a proxy that
        rewrites the path in front of it breaks verification.
    """

    public_key: rsa.RSAPublicKey | None = attrs.field(
        default=None, converter=_load_public_key, repr=_key_repr
    )
    allowed_key_hosts: tuple[str, ...] = attrs.field(default=DEFAULT_KEY_HOSTS, converter=_to_tuple)
    max_body_size: int = attrs.field(default=1024 * 1024, validator=_size(1))
    max_key_size: int = attrs.field(default=16 * 1024, validator=_size(1))
    fetch_timeout: float = attrs.field(default=5.0, validator=_positive)
    key_cache_size: int = attrs.field(default=16, validator=_size(0))
    key_cache_ttl: float = attrs.field(default=3600.0, validator=_non_negative)
    key_failure_ttl: float = attrs.field(default=60.0, validator=_non_negative)
    expected_body_type: BodyType | None = attrs.field(default=None, validator=_body_type)

    _prefixes: tuple[_Prefix, ...] = attrs.field(init=False, repr=False, eq=False)
    _cache: _KeyCache = attrs.field(init=False, repr=False, eq=False)
    _failures: _FailureCache = attrs.field(init=False, repr=False, eq=False)
    _flights: RunVar[dict[str, _Flight]] = attrs.field(init=False, repr=False, eq=False)
    _url_locks: _UrlLocks = attrs.field(init=False, repr=False, eq=False, factory=_UrlLocks)

    @_prefixes.default
    def _make_prefixes(self) -> tuple[_Prefix, ...]:
        return _parse_allowed(self.allowed_key_hosts)

    @_cache.default
    def _make_cache(self) -> _KeyCache:
        return _KeyCache(self.key_cache_size, float(self.key_cache_ttl))

    @_failures.default
    def _make_failures(self) -> _FailureCache:
        return _FailureCache(float(self.key_failure_ttl))

    @_flights.default
    def _make_flights(self) -> RunVar[dict[str, _Flight]]:
        return RunVar(f"oss_callback_key_fetches_{id(self)}")

    @property
    def key_url_prefixes(self) -> tuple[str, ...]:
        """The URL prefixes a key URL must start with (derived from ``allowed_key_hosts``)."""
        return tuple(p.text for p in self._prefixes)

    def is_key_url_allowed(self, url: str) -> bool:
        """Whether the verifier would fetch a public key for ``url`` (no I/O)."""
        return _key_fetch_url(url, self._prefixes) is not None

    def key_fetch_url(self, url: str) -> str | None:
        """Where the key named by ``url`` would be fetched from, or ``None`` (not allowed).

        The same URL, except on ``gosspublic.alicdn.com``, which is always fetched over
        https. No I/O.
        """
        return _key_fetch_url(url, self._prefixes)

    def clear_key_cache(self) -> None:
        """Forget every fetched key and failed fetch (the next callback fetches again)."""
        self._cache.clear()
        self._failures.clear()

    # ------------------------------------------------------------------ verify

    async def verify(
        self,
        method: str,
        path: str | bytes,
        query_string: str | bytes | None,
        headers: HeadersInput,
        body: bytes,
    ) -> VerifiedCallback:
        """Verify one callback request and parse its body.

        Args:
            method: the HTTP method (OSS always POSTs; anything else is refused).
            path: the raw request path, percent-encoded as received (ASGI ``raw_path``).
                A full target ``"/cb?a=1"`` is split when ``query_string`` is empty.
            query_string: the raw query string without ``?`` (ASGI ``query_string``), or
                ``""``/``None`` when there is none.
            headers: the request headers: a mapping (``dict``, ``httpx.Headers``,
                Starlette ``Headers``) or ``(name, value)`` pairs (ASGI raw headers).
                Names are matched case-insensitively.
            body: the raw request body.

        Returns:
            The verified callback.

        Raises:
            CallbackSignatureError: the callback is not authentic or can't be checked:
                its ``reason`` says why (:class:`PublicKeyFetchError` when the key could
                not be fetched, :class:`CallbackBodyError` for the body).
            TypeError: ``body`` is not bytes (a programming error, not a bad callback).
        """
        prepared = self._prepare(method, path, query_string, headers, body)
        if prepared.key is None:
            assert prepared.key_url is not None
            prepared.key, prepared.key_trusted = await self._key_async(prepared.key_url)
        return self._finish(prepared)

    def verify_sync(
        self,
        method: str,
        path: str | bytes,
        query_string: str | bytes | None,
        headers: HeadersInput,
        body: bytes,
    ) -> VerifiedCallback:
        """The blocking twin of :meth:`verify`, for WSGI and other synchronous servers.

        Same arguments, result and errors as :meth:`verify`. A key that must be fetched is
        fetched with a blocking ``httpx.Client``; the key cache is shared with
        :meth:`verify`. Don't call it on an event loop thread (it blocks while fetching).
        """
        prepared = self._prepare(method, path, query_string, headers, body)
        if prepared.key is None:
            assert prepared.key_url is not None
            prepared.key, prepared.key_trusted = self._key_sync(prepared.key_url)
        return self._finish(prepared)

    # ------------------------------------------------------------------ pure steps

    def _prepare(
        self,
        method: str,
        path: str | bytes,
        query_string: str | bytes | None,
        headers: HeadersInput,
        body: bytes,
    ) -> _Prepared:
        if not isinstance(body, bytes | bytearray | memoryview):
            raise TypeError(f"body must be bytes, got {type(body).__name__}")
        body = bytes(body)
        raw_path = _as_bytes(path)
        raw_query = _as_bytes(query_string or b"")
        if not raw_query and b"?" in raw_path:
            raw_path, _, raw_query = raw_path.partition(b"?")
        method = _text(method).upper()
        if method != "POST":
            raise CallbackSignatureError(
                f"OSS callbacks are POSTs, not {method[:16]!r}", reason="method_not_allowed"
            )
        if len(body) > self.max_body_size:
            raise CallbackBodyError(
                f"callback body of {len(body)} bytes exceeds max_body_size ({self.max_body_size})",
                reason="body_too_large",
            )
        hdrs = _normalize_headers(headers)
        content_type = hdrs.get("content-type", "").split(";", 1)[0].strip().lower()
        if self.expected_body_type is not None and content_type != self.expected_body_type:
            raise CallbackBodyError(
                f"the callback's Content-Type is {content_type[:100]!r}, not the expected "
                f"{self.expected_body_type!r}",
                reason="body_type_mismatch",
            )
        signature = _b64_header(
            hdrs, "authorization", "missing_signature", "malformed_signature",
            max_b64=_MAX_SIGNATURE_B64, max_size=_MAX_SIGNATURE,
        )
        prepared = _Prepared(
            method=method,
            path=raw_path,
            query=raw_query,
            headers=hdrs,
            body=body,
            content_type=content_type,
            signature=signature,
            key=self.public_key,
            key_url=None,
        )
        if self.public_key is not None:
            return prepared
        url_bytes = _b64_header(
            hdrs, "x-oss-pub-key-url", "missing_key_url", "malformed_key_url",
            max_b64=_MAX_KEY_URL_B64, max_size=_MAX_KEY_URL,
        )
        try:
            key_url = url_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise CallbackSignatureError(
                "x-oss-pub-key-url is not an ASCII URL", reason="malformed_key_url"
            ) from None
        fetch_url = _key_fetch_url(key_url, self._prefixes)
        if fetch_url is None:
            if _allowed_prefix(key_url, self._prefixes) is None:
                why = f"is not under an allowed prefix {self.key_url_prefixes!r}"
            elif "?" in key_url or "#" in key_url:
                why = "has a query or a fragment"
            else:
                why = f"is not OSS's key path on {_OSS_KEY_HOST} (/callback_pub_key_v<N>.pem)"
            raise CallbackSignatureError(
                f"public key URL {key_url[:200]!r} {why}; nothing was fetched",
                reason="key_url_not_allowed",
            )
        prepared.key_url = fetch_url
        return prepared

    def _finish(self, prepared: _Prepared) -> VerifiedCallback:
        key = prepared.key
        assert key is not None
        tail = (b"?" + prepared.query if prepared.query else b"") + b"\n" + prepared.body
        signed_path: bytes | None = None
        for decoded_path in _decoded_paths(prepared.path):
            try:
                key.verify(
                    prepared.signature,
                    decoded_path + tail,
                    padding.PKCS1v15(),
                    hashes.MD5(),  # noqa: S303 - OSS signs callbacks with MD5withRSA
                )
            except InvalidSignature:
                continue
            except UnsupportedAlgorithm as exc:
                raise CallbackSignatureError(
                    "this OpenSSL build refuses MD5 signatures (FIPS mode?)",
                    reason="unsupported_algorithm",
                ) from exc
            signed_path = decoded_path
            break
        if signed_path is None:
            raise CallbackSignatureError(
                "callback signature does not match its path, query and body",
                reason="bad_signature",
            )
        if not prepared.key_trusted and prepared.key_url is not None:
            self._cache.promote(prepared.key_url, key)  # it verified a signature: keep it
        content_type = prepared.content_type
        fields = _parse_body(prepared.body, content_type)
        query_text = prepared.query.decode("latin-1")
        return VerifiedCallback(
            method=prepared.method,
            path=signed_path.decode("utf-8", "replace"),
            query_string=query_text,
            query=dict(parse_qsl(query_text, keep_blank_values=True)),
            headers=prepared.headers,
            body=prepared.body,
            fields=fields,
            content_type=content_type,
            key_url=prepared.key_url,
        )

    # ------------------------------------------------------------------ key fetching

    def _known_key(self, url: str) -> tuple[rsa.RSAPublicKey, bool] | None:
        """``(key, trusted)`` without fetching, or ``None`` when a fetch is needed.

        Raises the remembered failure of ``url`` when there is no previous key to use.
        """
        found = self._cache.lookup(url)
        if found is not None:
            return found
        error = self._failures.get(url)
        if error is None:
            return None
        stale = self._cache.get_stale(url)
        if stale is None:
            raise error
        return stale, True

    async def _key_async(self, url: str) -> tuple[rsa.RSAPublicKey, bool]:
        known = self._known_key(url)
        if known is not None:
            return known
        # Single flight: concurrent callbacks on this event loop share one fetch per URL.
        flights = self._flights.get(None)
        if flights is None:
            flights = {}
            self._flights.set(flights)
        flight = flights.get(url)
        if flight is not None:
            await flight.event.wait()
            if flight.key is not None:
                return flight.key, flight.trusted
            error = flight.error
            assert error is not None
            raise _copy_error(error)
        flight = flights[url] = _Flight()
        try:
            flight.key, flight.trusted = await self._fetch_key_async(url)
            return flight.key, flight.trusted
        except PublicKeyFetchError as exc:
            flight.error = exc
            raise
        finally:
            if flight.key is None and flight.error is None:  # the leader was cancelled
                flight.error = PublicKeyFetchError(
                    f"fetching the public key from {url!r} was cancelled",
                    reason="key_fetch_failed",
                )
            del flights[url]
            flight.event.set()

    async def _fetch_key_async(self, url: str) -> tuple[rsa.RSAPublicKey, bool]:
        try:
            with anyio.fail_after(self.fetch_timeout):
                data = await self._fetch_async(url)
            return self._accept(url, data), False
        except TimeoutError:
            error = PublicKeyFetchError(
                f"fetching the public key from {url!r} timed out after {self.fetch_timeout} s",
                reason="key_fetch_failed",
            )
        except PublicKeyFetchError as exc:
            error = exc
        return self._failed(url, error)

    def _key_sync(self, url: str) -> tuple[rsa.RSAPublicKey, bool]:
        known = self._known_key(url)
        if known is not None:
            return known
        with self._url_locks.hold(url):  # one fetch per URL; other URLs don't wait
            known = self._known_key(url)
            if known is not None:
                return known
            try:
                data = self._fetch_sync(url)
                return self._accept(url, data), False
            except PublicKeyFetchError as exc:
                return self._failed(url, exc)

    def _accept(self, url: str, data: bytes) -> rsa.RSAPublicKey:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise PublicKeyFetchError(
                f"the answer from {url!r} is not a PEM public key", reason="key_invalid"
            ) from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise PublicKeyFetchError(f"the key at {url!r} is not an RSA key", reason="key_invalid")
        self._cache.put(url, key, trusted=False)  # trusted once it verifies a callback
        self._failures.discard(url)
        logger.info("fetched OSS callback public key from %s", url)
        return key

    def _failed(self, url: str, error: PublicKeyFetchError) -> tuple[rsa.RSAPublicKey, bool]:
        """Remember the failure; use the expired key if there is one, else raise."""
        self._failures.put(url, error)
        stale = self._cache.get_stale(url)
        if stale is None:
            raise error
        logger.warning(
            "refreshing the public key from %s failed (%s); using the old one", url, error.reason
        )
        return stale, True

    def _too_large(self, url: str) -> PublicKeyFetchError:
        return PublicKeyFetchError(
            f"the answer from {url!r} is bigger than max_key_size ({self.max_key_size} bytes)",
            reason="key_too_large",
        )

    def _check_response(self, url: str, response: httpx.Response) -> None:
        if response.status_code != 200:
            raise PublicKeyFetchError(
                f"fetching the public key from {url!r} got HTTP {response.status_code}",
                reason="key_fetch_failed",
            )
        length = response.headers.get("content-length", "")
        if (length.isascii() and length.isdigit()) and int(length) > self.max_key_size:
            raise self._too_large(url)

    def _client_options(self) -> dict[str, Any]:
        return {
            "timeout": self.fetch_timeout,
            "follow_redirects": False,  # a redirect could leave the allowed hosts
            "headers": {"User-Agent": f"oss-callback/{__version__}"},
        }

    async def _fetch_async(self, url: str) -> bytes:
        logger.debug("fetching OSS callback public key from %s", url)
        try:
            async with (
                httpx.AsyncClient(**self._client_options()) as client,
                client.stream("GET", url) as response,
            ):
                self._check_response(url, response)
                async with closing_iter(response.aiter_bytes()) as chunks:
                    return await self._read_capped(url, chunks)
        except PublicKeyFetchError:
            raise
        except Exception as exc:  # any fetch failure is a refusal, not a crash
            raise PublicKeyFetchError(
                f"fetching the public key from {url!r} failed: {type(exc).__name__}",
                reason="key_fetch_failed",
            ) from exc

    async def _read_capped(self, url: str, chunks: AsyncIterator[bytes]) -> bytes:
        data = bytearray()
        async for chunk in chunks:
            data += chunk
            if len(data) > self.max_key_size:
                raise self._too_large(url)
        return bytes(data)

    def _fetch_sync(self, url: str) -> bytes:
        logger.debug("fetching OSS callback public key from %s", url)
        deadline = time.monotonic() + self.fetch_timeout
        try:
            with (
                httpx.Client(**self._client_options()) as client,
                client.stream("GET", url) as response,
            ):
                self._check_response(url, response)
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > self.max_key_size:
                        raise self._too_large(url)
                    if time.monotonic() > deadline:
                        raise TimeoutError
                return bytes(data)
        except PublicKeyFetchError:
            raise
        except Exception as exc:  # any fetch failure is a refusal, not a crash
            raise PublicKeyFetchError(
                f"fetching the public key from {url!r} failed: {type(exc).__name__}",
                reason="key_fetch_failed",
            ) from exc


@attrs.define
class _Prepared:
    method: str
    path: bytes
    query: bytes
    headers: _Headers
    body: bytes
    content_type: str
    signature: bytes
    key: rsa.RSAPublicKey | None
    key_url: str | None
    key_trusted: bool = True


def _b64_header(
    headers: _Headers, name: str, missing: Reason, malformed: Reason, *, max_b64: int,
    max_size: int,
) -> bytes:
    values = headers.getlist(name)
    if not values:
        raise CallbackSignatureError(f"the callback has no {name} header", reason=missing)
    if len(values) > 1:
        raise CallbackSignatureError(
            f"the callback has {len(values)} {name} headers", reason=malformed
        )
    text = values[0].strip()
    if len(text) > max_b64:  # checked before decoding (and before any fetch)
        raise CallbackSignatureError(
            f"the {name} header is longer than {max_b64} characters", reason=malformed
        )
    try:
        decoded = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CallbackSignatureError(f"the {name} header is not base64", reason=malformed) from None
    if not decoded:
        raise CallbackSignatureError(f"the {name} header is empty", reason=malformed)
    if len(decoded) > max_size:
        raise CallbackSignatureError(
            f"the {name} header decodes to more than {max_size} bytes", reason=malformed
        )
    return decoded


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


# --------------------------------------------------------------------------- ASGI / Starlette


async def _read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    text = (declared or "").strip()
    if text.isascii() and text.isdigit() and int(text) > limit:
        raise CallbackBodyError(
            f"callback body of {int(text)} bytes exceeds max_body_size ({limit})",
            reason="body_too_large",
        )
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise CallbackBodyError(
                f"callback body exceeds max_body_size ({limit})", reason="body_too_large"
            )
    return bytes(data)


def _scope_path(scope: Mapping[str, Any]) -> bytes:
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.partition(b"?")[0]
    return quote(str(scope.get("path", "/")), safe="/!$&'()*+,;=:@-._~").encode("ascii")


async def verify_asgi(
    verifier: CallbackVerifier,
    scope: Mapping[str, Any],
    receive: Callable[[], Any],
) -> VerifiedCallback:
    """Read the body of an ASGI HTTP request (at most ``max_body_size``) and verify it.

    For plain ASGI applications: call it from the app with its ``scope`` and ``receive``.
    The path is taken from ``raw_path`` (as received, percent-encoded).

    Args:
        verifier: the verifier to use.
        scope: the ASGI HTTP scope.
        receive: the ASGI receive callable (the body is consumed).

    Returns:
        The verified callback.

    Raises:
        CallbackSignatureError: as :meth:`CallbackVerifier.verify`; a body over the limit
            raises :class:`CallbackBodyError` without being read to the end.
    """
    headers = _normalize_headers(scope.get("headers", ()))

    async def chunks() -> AsyncGenerator[bytes, None]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise CallbackBodyError("the client disconnected", reason="malformed_body")
            yield bytes(message.get("body", b""))
            if not message.get("more_body", False):
                return

    async with contextlib.aclosing(chunks()) as body_chunks:  # closed even when refused early
        body = await _read_body(body_chunks, headers.get("content-length"),
                                verifier.max_body_size)
    return await verifier.verify(
        str(scope.get("method", "")),
        _scope_path(scope),
        scope.get("query_string", b""),
        headers,
        body,
    )


async def verify_starlette_request(verifier: CallbackVerifier, request: Any) -> VerifiedCallback:
    """Read a Starlette (or FastAPI) request's body, at most ``max_body_size``, and verify it.

    The body is streamed (a request over the limit is refused without reading it all) and
    then cached on the request, so ``await request.body()`` still works afterwards::

        async def on_upload(request: Request) -> Response:
            try:
                cb = await verify_starlette_request(verifier, request)
            except CallbackSignatureError:
                return JSONResponse({"error": "invalid OSS callback"}, status_code=400)
            return JSONResponse({"Status": "OK"})

    Args:
        verifier: the verifier to use.
        request: a ``starlette.requests.Request``.

    Returns:
        The verified callback.

    Raises:
        CallbackSignatureError: as :meth:`CallbackVerifier.verify`.
    """
    scope = request.scope
    try:
        body = await _read_body(
            request.stream(), request.headers.get("content-length"), verifier.max_body_size
        )
    except CallbackSignatureError:
        raise
    except Exception as exc:  # ClientDisconnect and the like: nothing to verify
        raise CallbackBodyError(
            f"reading the callback body failed: {type(exc).__name__}", reason="malformed_body"
        ) from exc
    request._body = body  # what Request.body() caches; keeps the body readable afterwards
    return await verifier.verify(
        request.method,
        _scope_path(scope),
        scope.get("query_string", b""),
        cast("Iterable[tuple[bytes, bytes]]", scope.get("headers", ())),
        body,
    )
