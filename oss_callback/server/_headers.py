"""The request headers, and the two that carry the signature: their decoding and size caps.

Headers arrive as a mapping (``dict``, ``httpx.Headers``, Starlette ``Headers``) or as ASGI
``(name, value)`` pairs; :class:`_Headers` is the case-insensitive, read-only view the
verifier works on (and :attr:`VerifiedCallback.headers
<oss_callback.server.VerifiedCallback.headers>` is). The signature headers must each appear
exactly once, be standard base64 and decode to at most a bounded size, all checked before
anything is decoded further or fetched::

    authorization       the RSA signature, at most 512 bytes (a 4096-bit RSA signature;
                        OSS's key is 512 bits, so its signatures are 64 bytes)
    x-oss-pub-key-url   the key's URL, ASCII, at most 2048 characters (where it may point
                        is the key policy's business, _key_policy)
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping
from typing import TypeAlias

from oss_callback.server._errors import CallbackSignatureError, Reason
from oss_callback.server._key_policy import _MAX_KEY_URL

#: What ``headers`` may be: a mapping, or ``(name, value)`` pairs (ASGI raw headers).
HeadersInput: TypeAlias = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]

#: A 4096-bit RSA signature: the longest accepted (OSS's key is 512 bits: 64 bytes).
_MAX_SIGNATURE = 512
#: The longest base64 text that can decode to ``n`` bytes.
_MAX_SIGNATURE_B64 = 4 * ((_MAX_SIGNATURE + 2) // 3)
_MAX_KEY_URL_B64 = 4 * ((_MAX_KEY_URL + 2) // 3)


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


def _signature(headers: _Headers) -> bytes:
    """The RSA signature in ``authorization`` (refused over 512 bytes, before decoding)."""
    return _b64_header(
        headers, "authorization", "missing_signature", "malformed_signature",
        max_b64=_MAX_SIGNATURE_B64, max_size=_MAX_SIGNATURE,
    )


def _key_url(headers: _Headers) -> str:
    """The public key's URL in ``x-oss-pub-key-url`` (not yet checked against the policy)."""
    url_bytes = _b64_header(
        headers, "x-oss-pub-key-url", "missing_key_url", "malformed_key_url",
        max_b64=_MAX_KEY_URL_B64, max_size=_MAX_KEY_URL,
    )
    try:
        return url_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise CallbackSignatureError(
            "x-oss-pub-key-url is not an ASCII URL", reason="malformed_key_url"
        ) from None


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
