"""Verifying the callback POST that OSS sends to an application server (PROTOCOL.md §2).

What is checked, in order (the first failure raises, see :class:`CallbackSignatureError`)::

    method is POST
    len(body) <= max_body_size
    authorization: exactly one header, standard base64      -> the RSA signature
    x-oss-pub-key-url: exactly one header, standard base64  -> the key URL (unless pinned)
    the key URL starts with an allowed prefix               -> else no request is made at all
    the key: pinned, cached (LRU + TTL), or fetched once    -> GET, no redirects, size-capped
    RSA PKCS#1 v1.5 over MD5 of
        unquote(path) [+ "?" + raw query] + "\\n" + body     (and unquote_plus(path), see below)
    the body parses as its content type says (form or JSON object)

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
from typing import Any, Literal, TypeAlias, cast
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlsplit

import anyio
import attrs
import httpx
from anyio.lowlevel import RunVar

from ._errors import ClientError
from ._http import closing_iter
from ._version import __version__

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
    "DEFAULT_KEY_HOSTS",
    "CallbackBodyError",
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
]

#: What ``headers`` may be: a mapping, or ``(name, value)`` pairs (ASGI raw headers).
HeadersInput: TypeAlias = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]
#: What ``public_key`` may be: PEM (or DER) text/bytes, or a loaded key.
PublicKeyInput: TypeAlias = str | bytes | rsa.RSAPublicKey

_MAX_KEY_URL = 2048
_MAX_FORM_FIELDS = 10_000
# Host or host:port, or a bracketed IPv6 literal with an optional port.
_HOST_ENTRY = re.compile(r"^(?:[a-z0-9](?:[a-z0-9.\-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$")


# --------------------------------------------------------------------------- errors


class CallbackSignatureError(ClientError):
    """The callback can't be trusted (or, once verified, can't be used).

    Every failure of :meth:`CallbackVerifier.verify` raises this class or a subclass, so a
    single ``except CallbackSignatureError`` (answering HTTP 400) covers them all::

        ClientError
        └── CallbackSignatureError   missing/malformed/wrong signature, tampered request,
            │                        key URL outside the allowed hosts, not a POST
            ├── PublicKeyFetchError  the public key could not be fetched or loaded
            └── CallbackBodyError    the body is too large, or is not the form/JSON it claims

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
    ``max_key_size``, or it was not an RSA public key in PEM.  Failures are not cached: the
    next callback tries again.
    """


class CallbackBodyError(CallbackSignatureError):
    """The body is bigger than ``max_body_size``, or (signature valid) does not parse.

    A form body must be UTF-8 ``application/x-www-form-urlencoded``; a JSON body must be a
    JSON object.
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
        key_url: the public-key URL the signature was checked against, or ``None`` when
            the key is pinned.
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

    def get(self, name: str, default: Any = None) -> Any:
        """Return body field ``name``, or ``default`` when the body has no such field."""
        return self.fields.get(name, default)

    def __getitem__(self, name: str) -> Any:
        """Return body field ``name``; ``KeyError`` if the body has no such field."""
        return self.fields[name]

    def __contains__(self, name: object) -> bool:
        """Whether the body has a field ``name``."""
        return name in self.fields


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
                or not _HOST_ENTRY.match(netloc)
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
            if not _HOST_ENTRY.match(host):
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


def _to_tuple(value: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


# --------------------------------------------------------------------------- key cache


class _KeyCache:
    """A thread-safe LRU of fetched keys; entries expire after ``ttl`` seconds.

    Expired entries stay (until the LRU bound evicts them) so that a key can be used stale
    when refreshing it fails.
    """

    def __init__(
        self, maxsize: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._maxsize = maxsize
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, rsa.RSAPublicKey]] = OrderedDict()

    def get(self, url: str) -> rsa.RSAPublicKey | None:
        """The fresh key for ``url``, or ``None``."""
        with self._lock:
            entry = self._entries.get(url)
            if entry is None or entry[0] <= self._clock():
                return None
            self._entries.move_to_end(url)
            return entry[1]

    def get_stale(self, url: str) -> rsa.RSAPublicKey | None:
        """The key for ``url`` even if it expired, or ``None``."""
        with self._lock:
            entry = self._entries.get(url)
            return None if entry is None else entry[1]

    def put(self, url: str, key: rsa.RSAPublicKey) -> None:
        """Remember ``key`` for ``url`` (evicting the least recently used beyond the bound)."""
        if self._maxsize <= 0 or self._ttl <= 0:
            return
        with self._lock:
            self._entries[url] = (self._clock() + self._ttl, key)
            self._entries.move_to_end(url)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@attrs.define
class _Flight:
    """One in-progress fetch that concurrent callbacks for the same URL wait on."""

    event: anyio.Event = attrs.field(factory=anyio.Event)
    key: rsa.RSAPublicKey | None = None
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

    A verifier holds no connections and needs no closing; share one per application (its
    key cache is thread-safe and works across event loops).

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
            parsed scheme, host and port must agree; anything else is refused **before**
            any request is made. ``()`` refuses every key URL.
        max_body_size: callbacks with a bigger body are refused (OSS sends at most 1 MB).
        max_key_size: a key response bigger than this many bytes is refused.
        fetch_timeout: seconds allowed for fetching a key, all of it (OSS waits 5 s for the
            whole callback).
        key_cache_size: how many fetched keys are kept (least recently used evicted).
        key_cache_ttl: seconds a fetched key is used before it is fetched again. If the
            refresh fails, the expired key keeps being used (and a warning is logged).
            ``0`` disables caching.

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

    _prefixes: tuple[_Prefix, ...] = attrs.field(init=False, repr=False, eq=False)
    _cache: _KeyCache = attrs.field(init=False, repr=False, eq=False)
    _flights: RunVar[dict[str, _Flight]] = attrs.field(init=False, repr=False, eq=False)
    _sync_lock: threading.Lock = attrs.field(init=False, repr=False, eq=False)

    @_prefixes.default
    def _make_prefixes(self) -> tuple[_Prefix, ...]:
        return _parse_allowed(self.allowed_key_hosts)

    @_cache.default
    def _make_cache(self) -> _KeyCache:
        return _KeyCache(self.key_cache_size, float(self.key_cache_ttl))

    @_flights.default
    def _make_flights(self) -> RunVar[dict[str, _Flight]]:
        return RunVar(f"oss_callback_key_fetches_{id(self)}")

    @_sync_lock.default
    def _make_sync_lock(self) -> threading.Lock:
        return threading.Lock()

    @property
    def key_url_prefixes(self) -> tuple[str, ...]:
        """The URL prefixes a key URL must start with (derived from ``allowed_key_hosts``)."""
        return tuple(p.text for p in self._prefixes)

    def is_key_url_allowed(self, url: str) -> bool:
        """Whether the verifier would fetch a public key from ``url`` (no I/O)."""
        return _allowed_prefix(url, self._prefixes) is not None

    def clear_key_cache(self) -> None:
        """Forget every fetched key (the next callback fetches again)."""
        self._cache.clear()

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
            prepared.key = await self._key_async(prepared.key_url)
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
            prepared.key = self._key_sync(prepared.key_url)
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
        signature = _b64_header(hdrs, "authorization", "missing_signature", "malformed_signature")
        prepared = _Prepared(
            method=method,
            path=raw_path,
            query=raw_query,
            headers=hdrs,
            body=body,
            signature=signature,
            key=self.public_key,
            key_url=None,
        )
        if self.public_key is not None:
            return prepared
        url_bytes = _b64_header(hdrs, "x-oss-pub-key-url", "missing_key_url", "malformed_key_url")
        try:
            key_url = url_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise CallbackSignatureError(
                "x-oss-pub-key-url is not an ASCII URL", reason="malformed_key_url"
            ) from None
        if _allowed_prefix(key_url, self._prefixes) is None:
            raise CallbackSignatureError(
                f"public key URL {key_url[:200]!r} is not under an allowed prefix "
                f"{self.key_url_prefixes!r}; nothing was fetched",
                reason="key_url_not_allowed",
            )
        prepared.key_url = key_url
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
        content_type = prepared.headers.get("content-type", "").split(";", 1)[0]
        content_type = content_type.strip().lower()
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

    async def _key_async(self, url: str) -> rsa.RSAPublicKey:
        key = self._cache.get(url)
        if key is not None:
            return key
        # Single flight: concurrent callbacks on this event loop share one fetch per URL.
        flights = self._flights.get(None)
        if flights is None:
            flights = {}
            self._flights.set(flights)
        flight = flights.get(url)
        if flight is not None:
            await flight.event.wait()
            if flight.key is not None:
                return flight.key
            error = flight.error
            assert error is not None
            raise type(error)(str(error), reason=error.reason)
        flight = flights[url] = _Flight()
        try:
            flight.key = await self._fetch_key_async(url)
            return flight.key
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

    async def _fetch_key_async(self, url: str) -> rsa.RSAPublicKey:
        try:
            with anyio.fail_after(self.fetch_timeout):
                data = await self._fetch_async(url)
            return self._accept(url, data)
        except TimeoutError:
            error = PublicKeyFetchError(
                f"fetching the public key from {url!r} timed out after {self.fetch_timeout} s",
                reason="key_fetch_failed",
            )
        except PublicKeyFetchError as exc:
            error = exc
        return self._stale_or_raise(url, error)

    def _key_sync(self, url: str) -> rsa.RSAPublicKey:
        key = self._cache.get(url)
        if key is not None:
            return key
        with self._sync_lock:
            key = self._cache.get(url)
            if key is not None:
                return key
            try:
                data = self._fetch_sync(url)
                return self._accept(url, data)
            except PublicKeyFetchError as exc:
                return self._stale_or_raise(url, exc)

    def _accept(self, url: str, data: bytes) -> rsa.RSAPublicKey:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise PublicKeyFetchError(
                f"the answer from {url!r} is not a PEM public key", reason="key_invalid"
            ) from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise PublicKeyFetchError(f"the key at {url!r} is not an RSA key", reason="key_invalid")
        self._cache.put(url, key)
        logger.info("fetched OSS callback public key from %s", url)
        return key

    def _stale_or_raise(self, url: str, error: PublicKeyFetchError) -> rsa.RSAPublicKey:
        stale = self._cache.get_stale(url)
        if stale is None:
            raise error
        logger.warning(
            "refreshing the public key from %s failed (%s); using the old one", url, error.reason
        )
        return stale

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
    signature: bytes
    key: rsa.RSAPublicKey | None
    key_url: str | None


def _b64_header(headers: _Headers, name: str, missing: Reason, malformed: Reason) -> bytes:
    values = headers.getlist(name)
    if not values:
        raise CallbackSignatureError(f"the callback has no {name} header", reason=missing)
    if len(values) > 1:
        raise CallbackSignatureError(
            f"the callback has {len(values)} {name} headers", reason=malformed
        )
    try:
        decoded = base64.b64decode(values[0].strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise CallbackSignatureError(f"the {name} header is not base64", reason=malformed) from None
    if not decoded:
        raise CallbackSignatureError(f"the {name} header is empty", reason=malformed)
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
