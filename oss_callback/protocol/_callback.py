"""The upload callback: what OSS POSTs to your server after storing an object."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import attrs

__all__ = ["FORM_BODY_TYPE", "JSON_BODY_TYPE", "Callback"]

FORM_BODY_TYPE = "application/x-www-form-urlencoded"
JSON_BODY_TYPE = "application/json"
_BODY_TYPES = (FORM_BODY_TYPE, JSON_BODY_TYPE)
DEFAULT_BODY = "bucket=${bucket}&object=${object}"
#: OSS rejects a base64 ``x-oss-callback``/``x-oss-callback-var`` longer than this.
MAX_ENCODED_SIZE = 5 * 1024
MAX_URLS = 5

# ${name}: system variables (bucket, object, etag, size, mimeType, imageInfo.height, crc64, ...)
# and custom ones (x:name).  Anything else between ${ and } is rejected, as OSS does.
_VARIABLE = re.compile(r"\$\{([^{}]*)\}")
_VARIABLE_NAME = re.compile(r"x:[a-z0-9_\-.]+|[A-Za-z][A-Za-z0-9_.]*")
_CUSTOM_KEY = re.compile(r"x:[a-z0-9_\-.]+")


def _to_str_map(value: Mapping[str, Any] | None) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping of str to str, got {type(value).__name__}")
    return MappingProxyType({str(k): _scalar(k, v) for k, v in value.items()})


def _map_repr(value: Mapping[str, str]) -> str:
    return repr(dict(value))


def _scalar(key: object, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise TypeError(f"value for {key!r} must be a str or a number, got {type(value).__name__}")
    return str(value)


def _encode_url(url: str) -> str:
    # Non-ASCII must be URL-encoded (OSS docs); encode only those characters.
    return quote(url, safe="".join(chr(i) for i in range(0x21, 0x7F)))


def _check_url(instance: Callback, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("Callback.url must be a non-empty http(s) URL")
    urls = value.split(";")
    if len(urls) > MAX_URLS:
        raise ValueError(f"Callback.url may list at most {MAX_URLS} URLs separated by ';'")
    for url in urls:
        if any(c.isspace() for c in url):
            raise ValueError(f"Callback.url {url!r} must not contain whitespace")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Callback.url {url!r} must be an absolute http:// or https:// URL")
        if parts.query or "?" in url:
            raise ValueError(
                f"Callback.url {url!r} must not contain a query string; "
                "pass the parameters as Callback(query={...}) instead"
            )
        if parts.fragment:
            raise ValueError(f"Callback.url {url!r} must not contain a #fragment")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"Callback.url {url!r} has an invalid port") from None


def _check_body(instance: Callback, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError("Callback.body must be a non-empty template string")
    for match in _VARIABLE.finditer(value):
        name = match.group(1)
        if not _VARIABLE_NAME.fullmatch(name):
            raise ValueError(
                f"Callback.body has an invalid variable ${{{name}}}: use system variables like "
                "${bucket}, ${object}, ${etag}, ${size}, ${mimeType} or custom ones like ${x:uid}"
            )
    leftover = _VARIABLE.sub("", value)
    if "${" in leftover:
        raise ValueError("Callback.body has an unterminated '${': write variables as ${name}")


def _check_body_type(instance: Callback, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _BODY_TYPES:
        raise ValueError(f"Callback.body_type must be one of {_BODY_TYPES}, got {value!r}")


def _check_host(
    instance: Callback, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and (
        not isinstance(value, str) or not value or any(c.isspace() or c in "/?#" for c in value)
    ):
        raise ValueError(
            f"Callback.host must be a bare host name (no scheme or path), got {value!r}"
        )


def _check_sni(
    instance: Callback, attribute: attrs.Attribute[bool | None], value: bool | None
) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"Callback.sni must be True, False or None, got {type(value).__name__}")


def _check_variables(
    instance: Callback, attribute: attrs.Attribute[Mapping[str, str]], value: Mapping[str, str]
) -> None:
    for key in value:
        if not _CUSTOM_KEY.fullmatch(key):
            raise ValueError(
                f"Callback.variables key {key!r} is invalid: custom variable names start with "
                "'x:' and are lowercase, e.g. 'x:uid'"
            )


@attrs.frozen
class Callback:
    """An upload callback: after storing the object, OSS POSTs ``body`` to ``url``.

    Args:
        url: the ``http(s)`` URL OSS calls; up to 5 separated by ``;`` (tried in order).
            No query string: pass ``query`` instead.
        query: parameters appended to the URL(s), URL-encoded.
        body: the body template; OSS substitutes ``${bucket}``, ``${object}``, ``${etag}``,
            ``${size}``, ``${mimeType}``, ``${crc64}``... and custom ``${x:name}`` variables.
        body_type: ``application/x-www-form-urlencoded`` (default) or ``application/json``.
        host: the ``Host`` header of the callback request (``callbackHost``).
        sni: send SNI when calling an https URL (``callbackSNI``). ``None`` (default): on
            when a URL is ``https://`` (HTTPS servers behind a CDN, a load balancer or a
            shared IP refuse handshakes without it), off (and not encoded) for ``http://``.
            ``False`` turns it off, as OSS does when ``callbackSNI`` is absent.
        variables: custom variables (``x-oss-callback-var``); keys ``x:`` + lowercase.

    Raises:
        ValueError: naming the field, for any value OSS would reject.

    Warning:
        OSS waits at most 5 seconds for the callback server, never retries, and requires a
        ``200`` with a JSON body; anything else makes the upload raise :class:`CallbackError`
        (the object is stored all the same).
    """

    url: str = attrs.field(validator=_check_url)
    query: Mapping[str, str] = attrs.field(
        factory=dict, converter=_to_str_map, kw_only=True, hash=False, repr=_map_repr
    )
    body: str = attrs.field(default=DEFAULT_BODY, validator=_check_body, kw_only=True)
    body_type: str = attrs.field(default=FORM_BODY_TYPE, validator=_check_body_type, kw_only=True)
    host: str | None = attrs.field(default=None, validator=_check_host, kw_only=True)
    sni: bool | None = attrs.field(default=None, validator=_check_sni, kw_only=True)
    variables: Mapping[str, str] = attrs.field(
        factory=dict, converter=_to_str_map, validator=_check_variables, kw_only=True, hash=False,
        repr=_map_repr,
    )

    def __attrs_post_init__(self) -> None:
        for name, encoded in (
            ("callback", self.encoded_callback),
            ("variables", self.encoded_variables or ""),
        ):
            if len(encoded) > MAX_ENCODED_SIZE:
                raise ValueError(
                    f"Callback.{'body/url/query' if name == 'callback' else 'variables'} too "
                    f"large: the encoded {name} is {len(encoded)} bytes, OSS allows "
                    f"{MAX_ENCODED_SIZE}"
                )

    @property
    def sends_sni(self) -> bool:
        """Whether OSS is asked to send SNI (``callbackSNI``): ``sni``, or when it is
        ``None``, whether a URL is ``https://``."""
        if self.sni is not None:
            return self.sni
        return any(urlsplit(u).scheme == "https" for u in self.url.split(";"))

    @property
    def full_url(self) -> str:
        """The ``callbackUrl`` value: each URL with ``query`` appended."""
        suffix = "?" + urlencode(dict(self.query)) if self.query else ""
        return ";".join(_encode_url(u) + suffix for u in self.url.split(";"))

    def to_json(self) -> dict[str, Any]:
        """The callback parameter as a JSON object, in the key order OSS's SDKs use."""
        d: dict[str, Any] = {
            "callbackUrl": self.full_url,
            "callbackBody": self.body,
            "callbackBodyType": self.body_type,
        }
        if self.host is not None:
            d["callbackHost"] = self.host
        if self.sends_sni:
            d["callbackSNI"] = True
        return d

    @property
    def encoded_callback(self) -> str:
        """Base64 of the compact JSON: the ``x-oss-callback`` header value."""
        raw = json.dumps(self.to_json(), separators=(",", ":"), ensure_ascii=False)
        return base64.b64encode(raw.encode()).decode()

    @property
    def encoded_variables(self) -> str | None:
        """Base64 of the custom variables: the ``x-oss-callback-var`` value, or ``None``."""
        if not self.variables:
            return None
        raw = json.dumps(dict(self.variables), separators=(",", ":"), ensure_ascii=False)
        return base64.b64encode(raw.encode()).decode()

    def to_headers(self) -> dict[str, str]:
        """``{"x-oss-callback": ..., "x-oss-callback-var": ...}`` for the upload request."""
        headers = {"x-oss-callback": self.encoded_callback}
        variables = self.encoded_variables
        if variables:
            headers["x-oss-callback-var"] = variables
        return headers

    def digest(self) -> str:
        """A stable SHA-256 of the encoded headers (recorded in checkpoints)."""
        return hashlib.sha256(json.dumps(self.to_headers(), sort_keys=True).encode()).hexdigest()
