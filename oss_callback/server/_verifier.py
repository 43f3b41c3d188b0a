"""Verifying the callback POST that OSS sends to an application server (PROTOCOL.md §2).

What is checked, in order (the first failure raises, see :class:`CallbackSignatureError`),
and the module each rule lives in::

    method is POST
    len(body) <= max_body_size
    Content-Type is expected_body_type (when set)
    authorization: exactly one header, standard base64,     -> the RSA signature
        at most 512 bytes (a 4096-bit RSA signature)                             _headers
    x-oss-pub-key-url: exactly one header, standard base64  -> the key URL (unless pinned)
    the key URL is allowed                                  -> else no request is made at all
        under an allowed prefix, no query, no fragment; on gosspublic.alicdn.com only
        /callback_pub_key_v<N>.pem, always fetched over https                 _key_policy
    the key: pinned, cached (LRU + TTL), or fetched once    -> GET, no redirects, size-capped;
        a failed fetch is remembered for key_failure_ttl seconds
                                                              _keys, _key_cache, _key_fetch
    RSA PKCS#1 v1.5 over MD5 of
        unquote(path) [+ "?" + raw query] + "\\n" + body     (and unquote_plus(path))  _rsa
    the body parses as its content type says (form or JSON object), and a form body is
        not a JSON document (Content-Type is not signed)                            _body

A signature proves OSS sent the body, not that the body talks about *your* bucket: OSS
signs every customer's callbacks with the same key, and a body template may hold
constants. :meth:`VerifiedCallback.confirm` closes that gap (it HEADs the object with the
application's own credentials); :meth:`VerifiedCallback.check_secret` is the alternative
for a per-upload secret (both in _verified).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import attrs

from oss_callback.server._body import FORM_TYPE, JSON_TYPE, BodyType, _parse_body
from oss_callback.server._errors import CallbackBodyError, CallbackSignatureError
from oss_callback.server._headers import (
    HeadersInput,
    _Headers,
    _key_url,
    _normalize_headers,
    _signature,
    _text,
)
from oss_callback.server._key_policy import (
    DEFAULT_KEY_HOSTS,
    _key_fetch_url,
    _parse_allowed,
    _Prefix,
    _refused,
)
from oss_callback.server._keys import _KeySource
from oss_callback.server._rsa import _as_bytes, _key_repr, _load_public_key, _signed_path
from oss_callback.server._verified import VerifiedCallback

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["CallbackVerifier"]


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
    _keys: _KeySource = attrs.field(init=False, repr=False, eq=False)

    @_prefixes.default
    def _make_prefixes(self) -> tuple[_Prefix, ...]:
        return _parse_allowed(self.allowed_key_hosts)

    @_keys.default
    def _make_keys(self) -> _KeySource:
        return _KeySource(
            cache_size=self.key_cache_size,
            cache_ttl=float(self.key_cache_ttl),
            failure_ttl=float(self.key_failure_ttl),
            max_key_size=self.max_key_size,
            fetch_timeout=self.fetch_timeout,
        )

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
        self._keys.clear()

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
            prepared.key, prepared.key_trusted = await self._keys.get(prepared.key_url)
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
            prepared.key, prepared.key_trusted = self._keys.get_sync(prepared.key_url)
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
        signature = _signature(hdrs)
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
        key_url = _key_url(hdrs)
        fetch_url = _key_fetch_url(key_url, self._prefixes)
        if fetch_url is None:
            raise _refused(key_url, self._prefixes)
        prepared.key_url = fetch_url
        return prepared

    def _finish(self, prepared: _Prepared) -> VerifiedCallback:
        key = prepared.key
        assert key is not None
        signed_path = _signed_path(
            key, prepared.signature, prepared.path, prepared.query, prepared.body
        )
        if not prepared.key_trusted and prepared.key_url is not None:
            self._keys.promote(prepared.key_url, key)  # it verified a signature: keep it
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
