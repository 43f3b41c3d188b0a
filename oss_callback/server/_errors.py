"""Why a callback is refused: :class:`CallbackSignatureError`, its subclasses and reasons.

Every refusal of the receiver (not authentic, can't be checked, a bad body, not about your
bucket) raises one of these, so a single ``except CallbackSignatureError`` answering HTTP
400 covers them all; ``reason`` (:data:`Reason`) says why, for logs. They are
:class:`oss_callback.ClientError` (so :class:`oss_callback.OSSError`) and pickle with their
reason.
"""

from __future__ import annotations

from typing import Any, Literal

from oss_callback.protocol._errors import ClientError

__all__ = [
    "CallbackBodyError",
    "CallbackNotConfirmedError",
    "CallbackSignatureError",
    "PublicKeyFetchError",
    "Reason",
]

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
    "body_type_mismatch",
    "not_confirmed",
    "confirm_failed",
]


class CallbackSignatureError(ClientError):
    """The callback can't be trusted (or, once verified, can't be used).

    Every failure of :meth:`CallbackVerifier.verify` and :meth:`VerifiedCallback.confirm`
    raises this class or a subclass, so a single ``except CallbackSignatureError``
    (answering HTTP 400) covers them all::

        ClientError
        └── CallbackSignatureError         missing/malformed/wrong signature, tampered
            │                              request, key URL not allowed, not a POST
            ├── PublicKeyFetchError        the public key could not be fetched or loaded
            ├── CallbackBodyError          the body is too large, or is not the form/JSON
            │                              it claims (or not the expected_body_type)
            └── CallbackNotConfirmedError  signed by OSS, but not about an object stored in
                                           your bucket (confirm), or the wrong secret

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
    ``max_key_size``, or it was not an RSA public key in PEM.  A failure is remembered for
    ``key_failure_ttl`` seconds (60 by default): callbacks naming the same URL meanwhile are
    refused without another request (or verified with the previous key, if there was one).
    """


class CallbackBodyError(CallbackSignatureError):
    """The body is bigger than ``max_body_size``, or (signature valid) does not parse.

    A form body must be UTF-8 ``application/x-www-form-urlencoded`` and must not be a JSON
    document (reason ``"body_type_mismatch"``: ``Content-Type`` is not signed, so a JSON
    body replayed as a form could smuggle in fields); a JSON body must be a JSON object.
    With ``expected_body_type`` set, any other ``Content-Type`` is refused
    (``"body_type_mismatch"``) before the signature is checked.
    """


class CallbackNotConfirmedError(CallbackSignatureError):
    """A verified callback that does not describe an object stored in your bucket.

    Raised by :meth:`VerifiedCallback.confirm` (``confirm_sync``) and
    :meth:`VerifiedCallback.check_secret`. ``reason`` is ``"not_confirmed"`` when the
    callback names another bucket, no object, an object that doesn't exist, or one whose
    size/etag/crc64 differ, or when the secret is missing or wrong; ``"confirm_failed"``
    when the HEAD request itself failed (OSS unreachable, access denied: the callback may
    be genuine, but it could not be confirmed). The :class:`~oss_callback.OSSError` of a
    failed HEAD is the ``__cause__``.
    """
