"""Upload callbacks as OSS does them (PROTOCOL.md §1-2): parse, fill in, sign.

Variable substitution (the choices this emulator makes where OSS's docs are loose):

* ``application/x-www-form-urlencoded`` bodies: every substituted value is URL-encoded
  with ``urllib.parse.quote(value, safe="")`` (so ``/`` becomes ``%2F`` and a space
  ``%20``; any form decoder reads both back), matching the doc example
  ``mimeType=text%2Fplain``.
* ``application/json`` bodies: values are substituted "in JSON format": a ``${var}``
  written *outside* a JSON string becomes a complete JSON string literal
  (``{"object":${object}}`` -> ``{"object":"a/b.txt"}``, as in the OSS docs), and a
  ``${var}`` *inside* a JSON string (``{"object":"${object}"}``) becomes the JSON-escaped
  string content, so both spellings give valid JSON.  The numeric system variables
  ``${size}`` and ``${crc64}`` are written as JSON numbers outside a string (as OSS does:
  callback servers decode them into integer fields).
* Unknown system variables and custom ``${x:name}`` variables missing from
  ``callback-var`` become empty.

Sending them (to each URL in turn, judged by OSS's rules) is ``_callback_send``'s part.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from oss_callback.testing._errors import OSSErrorResponse

__all__ = [
    "CallbackConfig",
    "callback_signing_key",
    "parse_callback",
    "public_key_pem",
    "render_body",
    "sign_callback",
    "system_variables",
]

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
MAX_PARAM_BYTES = 5 * 1024
MAX_URLS = 5

_VARIABLE = re.compile(r"\$\{([^{}]*)\}")
_VARIABLE_NAME = re.compile(r"x:[a-z0-9_\-.]+|[A-Za-z][A-Za-z0-9_.]*")
_CUSTOM_KEY = re.compile(r"x:[a-z0-9_\-.]+")
_NUMERIC = frozenset({"size", "crc64", "imageInfo.height", "imageInfo.width"})

_key_lock = threading.Lock()
_key: rsa.RSAPrivateKey | None = None


def callback_signing_key() -> rsa.RSAPrivateKey:
    """The RSA key callbacks are signed with: 1024 bits, made once per process."""
    global _key
    with _key_lock:
        if _key is None:
            # OSS itself signs with a 512-bit key; 1024 bits is plenty for a local test double.
            _key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
        return _key


def public_key_pem(key: rsa.RSAPrivateKey | None = None) -> bytes:
    """The PEM (SubjectPublicKeyInfo) of ``key`` (default :func:`callback_signing_key`)."""
    return (
        (key or callback_signing_key())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )



def system_variables(
    *,
    bucket: str,
    key: str,
    etag: str,
    size: int,
    mime_type: str,
    crc64: int,
    content_md5: str = "",
    operation: str = "PutObject",
    request_id: str = "",
    client_ip: str = "",
) -> dict[str, str]:
    """The system variables (``${bucket}``, ``${object}``...) of one upload, as strings."""
    return {
        "bucket": bucket,
        "object": key,
        "etag": etag,
        "size": str(size),
        "mimeType": mime_type,
        "crc64": str(crc64),
        "contentMd5": content_md5,
        "operation": operation,
        "reqId": request_id,
        "clientIp": client_ip,
        "vpcId": "",
        "imageInfo.height": "",
        "imageInfo.width": "",
        "imageInfo.format": "",
    }


@attrs.frozen(kw_only=True)
class CallbackConfig:
    """A validated ``x-oss-callback`` (+ ``x-oss-callback-var``)."""

    urls: tuple[str, ...]
    body: str
    body_type: str
    host: str | None
    sni: bool
    variables: Mapping[str, str]


def _invalid(message: str, name: str, value: str) -> OSSErrorResponse:
    return OSSErrorResponse(
        400, "InvalidArgument", message, [("ArgumentName", name), ("ArgumentValue", value)]
    )


def _decode_param(raw: str, name: str) -> Any:
    if len(raw.encode()) > MAX_PARAM_BYTES:
        raise _invalid(f"The {name} is too long (at most 5 KB).", name, raw[:256])
    try:
        decoded = base64.b64decode(raw.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _invalid(f"The {name} is not base64 encoded.", name, raw) from None
    try:
        return json.loads(decoded.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        text = decoded.decode("utf-8", "replace")
        raise _invalid(f"The {name} configuration is not json format.", name, text) from None


def _check_url(url: str, shown: str) -> str:
    if not url or any(c.isspace() for c in url):
        raise _invalid("The callback url is invalid.", "callback", shown)
    if "://" not in url:
        url = "http://" + url  # OSS accepts "host:port/path" without a scheme
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(f"The callback url {url!r} is invalid.", "callback", shown)
    try:
        _ = parts.port
    except ValueError:
        raise _invalid(
            f"The callback url {url!r} has an invalid port.", "callback", shown
        ) from None
    return url


def parse_callback(
    header: str | None,
    var_header: str | None,
    query_value: str | None,
    query_var: str | None,
) -> CallbackConfig | None:
    """Validate the callback parameters of an upload; ``None`` if there are none.

    Raises:
        OSSErrorResponse: 400 ``InvalidArgument`` naming the bad argument.
    """
    if header is not None and query_value is not None:
        raise _invalid(
            "The x-oss-callback header and the callback query parameter are both present.",
            "callback",
            header,
        )
    raw = header if header is not None else query_value
    raw_var = var_header if var_header is not None else query_var
    if raw is None:
        if raw_var is not None:
            raise _invalid("callback-var is given without a callback.", "callback-var", raw_var)
        return None
    config = _decode_param(raw, "callback")
    shown = json.dumps(config, ensure_ascii=False) if not isinstance(config, str) else config
    if not isinstance(config, dict):
        raise _invalid("The callback configuration is not json format.", "callback", shown)

    url_value = config.get("callbackUrl")
    if not isinstance(url_value, str) or not url_value.strip():
        raise _invalid("The callbackUrl is not specified.", "callback", shown)
    url_list = url_value.split(";")
    if len(url_list) > MAX_URLS:
        raise _invalid(f"The callbackUrl lists more than {MAX_URLS} urls.", "callback", shown)
    urls = tuple(_check_url(u.strip(), shown) for u in url_list)

    body = config.get("callbackBody")
    if not isinstance(body, str) or not body:
        raise _invalid("The callbackBody is empty.", "callback", shown)
    if body.count("${") != len(_VARIABLE.findall(body)):
        raise _invalid("The callbackBody has a variable not written as ${var}.", "callback", shown)
    for name in _VARIABLE.findall(body):
        if not _VARIABLE_NAME.fullmatch(name):
            raise _invalid(f"The callbackBody variable ${{{name}}} is invalid.", "callback", shown)

    body_type = config.get("callbackBodyType", FORM)
    if body_type not in (FORM, JSON):
        raise _invalid(
            f"The callbackBodyType {body_type!r} is invalid: use {FORM} or {JSON}.",
            "callback",
            shown,
        )
    host = config.get("callbackHost")
    if host is not None and (not isinstance(host, str) or not host):
        raise _invalid("The callbackHost is invalid.", "callback", shown)
    sni = config.get("callbackSNI", False)
    if not isinstance(sni, bool):
        raise _invalid("The callback sni is invalid.", "callback", shown)

    variables: dict[str, str] = {}
    if raw_var is not None:
        var_config = _decode_param(raw_var, "callback-var")
        var_shown = json.dumps(var_config, ensure_ascii=False)
        if not isinstance(var_config, dict):
            raise _invalid("The callback-var is not a json object.", "callback-var", var_shown)
        for name, value in var_config.items():
            if not _CUSTOM_KEY.fullmatch(name):
                raise _invalid(
                    f"The callback-var key {name!r} must start with 'x:' and be lowercase.",
                    "callback-var",
                    var_shown,
                )
            if not isinstance(value, str):
                raise _invalid(
                    f"The callback-var value of {name!r} must be a string.",
                    "callback-var",
                    var_shown,
                )
            variables[name] = value
    return CallbackConfig(
        urls=urls, body=body, body_type=body_type, host=host, sni=sni, variables=variables
    )


def _json_string_spans(template: str) -> list[tuple[int, int]]:
    """Spans ``[start, end)`` of the template that are inside JSON string literals."""
    spans: list[tuple[int, int]] = []
    start = -1
    i = 0
    while i < len(template):
        c = template[i]
        if start >= 0 and c == "\\":
            i += 2
            continue
        if c == '"':
            if start < 0:
                start = i
            else:
                spans.append((start, i))
                start = -1
        i += 1
    if start >= 0:
        spans.append((start, len(template)))
    return spans


def render_body(config: CallbackConfig, system: Mapping[str, str]) -> bytes:
    """Substitute the variables of the body template (see the module docstring)."""
    template = config.body
    spans = _json_string_spans(template) if config.body_type == JSON else []

    def value_of(name: str) -> str:
        if name.startswith("x:"):
            return config.variables.get(name, "")
        return system.get(name, "")

    def substitute(match: re.Match[str]) -> str:
        value = value_of(match.group(1))
        if config.body_type == FORM:
            return quote(value, safe="")
        literal = json.dumps(value, ensure_ascii=False)
        if any(a < match.start() < b for a, b in spans):
            return literal[1:-1]
        if match.group(1) in _NUMERIC and (value.isascii() and value.isdigit()):
            return value
        return literal

    return _VARIABLE.sub(substitute, template).encode("utf-8")


def sign_callback(url: str, body: bytes, key: rsa.RSAPrivateKey | None = None) -> str:
    """The ``authorization`` header: base64 RSA-MD5 over ``unquote(path)[?query]\\n body``,
    signed with ``key`` (default :func:`callback_signing_key`)."""
    parts = urlsplit(url)
    path = parts.path or "/"
    message = unquote(path).encode() + (b"?" + parts.query.encode() if parts.query else b"")
    signature = (key or callback_signing_key()).sign(
        message + b"\n" + body,
        padding.PKCS1v15(),
        hashes.MD5(),  # noqa: S303 - OSS's callback signature is MD5withRSA
    )
    return base64.b64encode(signature).decode()
