"""The RSA check: MD5withRSA over the string OSS signs, and loading RSA public keys.

OSS signs ``unquote(path) [+ "?" + raw query] + "\\n" + body`` with RSA PKCS#1 v1.5 over
MD5 (:func:`callback_string_to_sign`). This is the one module of the receiver that needs
``cryptography`` at run time, so it is where its absence is reported.

Why two decodings of the path: OSS signs ``url_decode(path)``, and whether its decoder turns
``+`` into a space (Ruby ``CGI.unescape``, PHP ``urldecode``) or keeps it (Python
``unquote``) is not documented.  A path without ``+`` has one decoding; one with ``+`` is
tried both ways.  Both strings are produced from the same bytes, so nothing an attacker
controls becomes signed that OSS did not sign.
"""

from __future__ import annotations

from typing import TypeAlias
from urllib.parse import unquote_to_bytes

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

from oss_callback.server._errors import CallbackSignatureError, PublicKeyFetchError

__all__ = ["callback_string_to_sign"]

#: What ``public_key`` may be: PEM (or DER) text/bytes, or a loaded key.
PublicKeyInput: TypeAlias = str | bytes | rsa.RSAPublicKey


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


def _signed_path(
    key: rsa.RSAPublicKey, signature: bytes, path: bytes, query: bytes, body: bytes
) -> bytes:
    """The decoding of the raw ``path`` that ``signature`` is over (:func:`_decoded_paths`).

    Raises:
        CallbackSignatureError: ``"bad_signature"`` when the signature matches no decoding
            (or not the query or body), ``"unsupported_algorithm"`` when this OpenSSL build
            refuses MD5.
    """
    tail = (b"?" + query if query else b"") + b"\n" + body
    for decoded_path in _decoded_paths(path):
        try:
            key.verify(
                signature,
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
        return decoded_path
    raise CallbackSignatureError(
        "callback signature does not match its path, query and body",
        reason="bad_signature",
    )


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


def _load_fetched_key(url: str, data: bytes) -> rsa.RSAPublicKey:
    """The RSA public key in ``data``, the PEM answer fetched from ``url``."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise PublicKeyFetchError(
            f"the answer from {url!r} is not a PEM public key", reason="key_invalid"
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise PublicKeyFetchError(f"the key at {url!r} is not an RSA key", reason="key_invalid")
    return key
