"""The application-server side of upload callbacks: verify what OSS POSTs to you.

After storing an object, OSS POSTs the callback body to your server, signed with RSA
(MD5withRSA) and carrying the URL of its public key. Verify it before trusting it::

    from oss_callback.server import CallbackSignatureError, CallbackVerifier

    verifier = CallbackVerifier()          # keys from gosspublic.alicdn.com, cached

    try:
        cb = await verifier.verify(method, raw_path, query_string, headers, body)
        head = await cb.confirm(bucket)    # about an object stored in YOUR bucket?
    except CallbackSignatureError:
        ...                                # answer 400: OSS reports a callback failure
    cb.fields["object"], head.size, head.etag   # the body, and the stored object's metadata

Why ``confirm``: the signature proves OSS sent the body, not that it is about your bucket.
OSS signs every customer's callbacks with the same key and a body template may hold
constants, so anyone can upload to *their own* bucket with a body saying
``bucket=yours&object=videos/paid.mp4&size=1048576``, capture the signed POST and replay it
to you: it verifies. :meth:`VerifiedCallback.confirm` (``confirm_sync`` with a sync
``Bucket``) HEADs the named object with your credentials and checks that the bucket is
yours and that ``size``/``etag``/``crc64`` (those the body has) match; the other option is
a per-upload secret, :meth:`VerifiedCallback.check_secret`.

Answer a verified callback with HTTP 200 and a JSON body: OSS hands that JSON back to the
uploader (``PutObjectResult.callback_body``). Anything else makes the upload raise
:class:`oss_callback.CallbackError` on the uploader's side (the object is stored anyway).

FastAPI users: :mod:`oss_callback.fastapi`. Starlette and plain ASGI:
:func:`verify_starlette_request`, :func:`verify_asgi`. WSGI and other blocking servers:
:meth:`CallbackVerifier.verify_sync`.

The errors (all of them are :class:`oss_callback.ClientError`, so :class:`oss_callback.OSSError`)::

    CallbackSignatureError          not authentic, or can't be checked (.reason says why)
    ├── PublicKeyFetchError         the public key could not be fetched or loaded
    ├── CallbackBodyError           the body is too large, or not the form/JSON it claims
    └── CallbackNotConfirmedError   authentic, but not about an object in your bucket

Needs ``cryptography``: ``pip install 'oss-callback[server]'``.
"""

from __future__ import annotations

from oss_callback.server._asgi import verify_asgi, verify_starlette_request
from oss_callback.server._body import BodyType
from oss_callback.server._errors import (
    CallbackBodyError,
    CallbackNotConfirmedError,
    CallbackSignatureError,
    PublicKeyFetchError,
    Reason,
)
from oss_callback.server._key_policy import DEFAULT_KEY_HOSTS
from oss_callback.server._rsa import callback_string_to_sign
from oss_callback.server._verified import CONFIRMABLE_FIELDS, VerifiedCallback
from oss_callback.server._verifier import CallbackVerifier

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
