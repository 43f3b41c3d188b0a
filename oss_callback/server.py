"""The application-server side of upload callbacks: verify what OSS POSTs to you.

After storing an object, OSS POSTs the callback body to your server, signed with RSA
(MD5withRSA) and carrying the URL of its public key. Verify it before trusting it::

    from oss_callback.server import CallbackSignatureError, CallbackVerifier

    verifier = CallbackVerifier()          # keys from gosspublic.alicdn.com, cached

    try:
        cb = await verifier.verify(method, raw_path, query_string, headers, body)
    except CallbackSignatureError:
        ...                                # answer 400: OSS reports a callback failure
    cb.fields["object"], cb.fields["size"] # the parsed body (form fields or JSON object)

Answer a verified callback with HTTP 200 and a JSON body: OSS hands that JSON back to the
uploader (``PutObjectResult.callback_body``). Anything else makes the upload raise
:class:`oss_callback.CallbackError` on the uploader's side (the object is stored anyway).

FastAPI users: :mod:`oss_callback.fastapi`. Starlette and plain ASGI:
:func:`verify_starlette_request`, :func:`verify_asgi`. WSGI and other blocking servers:
:meth:`CallbackVerifier.verify_sync`.

The errors (all of them are :class:`oss_callback.ClientError`, so :class:`oss_callback.OSSError`)::

    CallbackSignatureError      not authentic, or can't be checked (.reason says why)
    ├── PublicKeyFetchError     the public key could not be fetched or loaded
    └── CallbackBodyError       the body is too large, or not the form/JSON it claims

Needs ``cryptography``: ``pip install 'oss-callback[server]'``.
"""

from __future__ import annotations

from ._verify import (
    DEFAULT_KEY_HOSTS,
    CallbackBodyError,
    CallbackSignatureError,
    CallbackVerifier,
    PublicKeyFetchError,
    Reason,
    VerifiedCallback,
    callback_string_to_sign,
    verify_asgi,
    verify_starlette_request,
)

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
