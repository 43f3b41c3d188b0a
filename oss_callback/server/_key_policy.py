"""Which public-key URLs may be fetched at all: the allow-list and OSS's key host (no I/O).

``x-oss-pub-key-url`` is chosen by whoever sends the request, so the verifier makes no
request for a URL unless it passes every rule here (``allowed_key_hosts`` of
:class:`~oss_callback.server.CallbackVerifier`)::

    printable ASCII, at most 2048 characters, no "." or ".." path segments (raw or %2e)
    under an allowed prefix, compared exactly (trailing slash included), and the scheme,
        host and port the HTTP client will really connect to agree with the prefix's
    no query and no fragment (each would make another cache entry for the same file)
    on gosspublic.alicdn.com only /callback_pub_key_v<N>.pem, always fetched over https
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import attrs
import httpx

from oss_callback.server._errors import CallbackSignatureError

__all__ = ["DEFAULT_KEY_HOSTS"]

#: The host OSS serves its callback public keys from.
DEFAULT_KEY_HOSTS: tuple[str, ...] = ("gosspublic.alicdn.com",)

#: The longest key URL accepted.
_MAX_KEY_URL = 2048
# Host or host:port, or a bracketed IPv6 literal with an optional port (used with fullmatch).
_HOST_ENTRY = re.compile(r"(?:[a-z0-9](?:[a-z0-9.\-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
#: OSS's own key host, where only OSS's key paths are fetched, and only over https.
_OSS_KEY_HOST = "gosspublic.alicdn.com"
_OSS_KEY_URL = re.compile(r"https?://gosspublic\.alicdn\.com(/callback_pub_key_v(?:0|[1-9][0-9]{0,3})\.pem)")


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


def _refused(url: str, prefixes: tuple[_Prefix, ...]) -> CallbackSignatureError:
    """The error for a key URL :func:`_key_fetch_url` refused, naming the rule it broke."""
    if _allowed_prefix(url, prefixes) is None:
        why = f"is not under an allowed prefix {tuple(p.text for p in prefixes)!r}"
    elif "?" in url or "#" in url:
        why = "has a query or a fragment"
    else:
        why = f"is not OSS's key path on {_OSS_KEY_HOST} (/callback_pub_key_v<N>.pem)"
    return CallbackSignatureError(
        f"public key URL {url[:200]!r} {why}; nothing was fetched",
        reason="key_url_not_allowed",
    )
