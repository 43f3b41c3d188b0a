"""Endpoints: scheme, host, region derivation and bucket addressing (virtual-hosted/path-style)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import quote, urlsplit

import attrs

__all__ = [
    "Endpoint",
    "encode_key",
    "render_query",
    "validate_bucket_name",
    "validate_key",
    "validate_region",
]

# Names are always checked with fullmatch: "$" would also match before a trailing newline.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
#: A region id: cn-hangzhou, ap-southeast-1, ... (it goes into the V4 scope, "/"-separated).
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_KEY_BYTES = 1023


def validate_bucket_name(name: str) -> str:
    """Check an OSS bucket name (3-63 chars: lowercase letters, digits, hyphens)."""
    if not isinstance(name, str) or not _BUCKET.fullmatch(name):
        raise ValueError(
            f"invalid bucket name {name!r}: 3-63 characters, lowercase letters, digits and "
            "hyphens, starting and ending with a letter or digit"
        )
    return name


def validate_region(region: str) -> str:
    """Check a region id (``cn-hangzhou``): letters, digits, ``-``, ``.``, ``_``."""
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise ValueError(
            f"invalid region {region!r}: a region id such as 'cn-hangzhou' (letters, digits "
            "and hyphens, no spaces or line breaks)"
        )
    return region


def validate_key(key: str) -> str:
    """Check an object key: non-empty UTF-8, at most 1023 bytes, no leading ``/`` or ``\\``."""
    if not isinstance(key, str):
        raise TypeError(f"object key must be a str, got {type(key).__name__}")
    if not key:
        raise ValueError("object key must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("object key must be valid UTF-8 (no lone surrogates)") from None
    if size > MAX_KEY_BYTES:
        raise ValueError(f"object key is {size} bytes in UTF-8; OSS allows at most {MAX_KEY_BYTES}")
    if key[0] in "/\\":
        raise ValueError(f"object key {key[:50]!r} must not start with '/' or '\\'")
    if any(c in key for c in "\r\n\x00"):
        raise ValueError("object key must not contain CR, LF or NUL")
    return key


def encode_key(key: str) -> str:
    """Percent-encode a key for the request path, keeping ``/`` and protecting ``.``/``..``."""
    segments = quote(key, safe="/").split("/")
    return "/".join(s.replace(".", "%2E") if s in (".", "..") else s for s in segments)


def render_query(query: Sequence[tuple[str, str]]) -> str:
    """``?a=1&uploads`` from decoded pairs (a bare name for an empty value); ``""`` if none."""
    if not query:
        return ""
    return "?" + "&".join(
        f"{quote(k, safe='')}={quote(v, safe='')}" if v else quote(k, safe="") for k, v in query
    )


def _is_ip_or_local(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _derive_region(host: str) -> str | None:
    labels = host.lower().split(".")
    if labels[-2:] != ["aliyuncs", "com"]:
        return None  # a custom domain or proxy: the caller must say which region
    # oss-cn-hangzhou.aliyuncs.com, oss-cn-hangzhou-internal.aliyuncs.com
    for label in labels:
        if label.startswith("oss-") and label not in ("oss-accelerate", "oss-accelerate-overseas"):
            region = label[4:]
            for suffix in ("-internal",):
                region = region.removesuffix(suffix)
            return region or None
    # cn-hangzhou.oss.aliyuncs.com
    if len(labels) >= 4 and labels[-3:] == ["oss", "aliyuncs", "com"]:
        return labels[-4]
    return None


@attrs.frozen(kw_only=True)
class Endpoint:
    """A parsed endpoint: where requests go and how buckets are addressed."""

    scheme: str
    host: str  # hostname, lower-case, brackets for IPv6
    port: int | None
    region: str | None
    path_style: bool

    @classmethod
    def parse(
        cls, endpoint: str, *, region: str | None = None, path_style: bool | None = None
    ) -> Endpoint:
        """Parse ``https://host[:port]``, ``http://...`` or a bare host (https assumed).

        Raises:
            ValueError: the endpoint is not a usable URL.
        """
        if not isinstance(endpoint, str) or not endpoint.strip():
            raise ValueError("endpoint must be a non-empty URL such as https://oss-cn-hangzhou.aliyuncs.com")
        text = endpoint.strip()
        if any(c.isspace() or not c.isprintable() for c in text):
            # urlsplit would silently drop tabs and line breaks inside the host
            raise ValueError(
                f"endpoint {endpoint!r} contains whitespace or control characters"
            )
        if region is not None:
            validate_region(region)
        if "://" not in text:
            text = "https://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"endpoint {endpoint!r}: the scheme must be http or https")
        if not parts.hostname:
            raise ValueError(f"endpoint {endpoint!r} has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"endpoint {endpoint!r} must not have a path or query")
        if parts.username or parts.password:
            raise ValueError("endpoint must not contain credentials; pass access_key_id/secret")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"endpoint {endpoint!r} has an invalid port") from None
        host = parts.hostname.lower()
        if ":" in host:
            host = f"[{host}]"
        local = _is_ip_or_local(host)
        return cls(
            scheme=parts.scheme,
            host=host,
            port=port,
            region=region or _derive_region(host),
            path_style=local if path_style is None else path_style,
        )

    @property
    def netloc(self) -> str:
        """``host[:port]``."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def url(
        self, bucket: str | None, key: str | None = None, query: Sequence[tuple[str, str]] = ()
    ) -> str:
        """The request URL for a bucket/key with the (decoded) query pairs."""
        path_key = encode_key(key) if key else ""
        if bucket is None:
            return f"{self.scheme}://{self.netloc}/{render_query(query)}"
        if self.path_style:
            return f"{self.scheme}://{self.netloc}/{bucket}/{path_key}{render_query(query)}"
        return f"{self.scheme}://{bucket}.{self.netloc}/{path_key}{render_query(query)}"
