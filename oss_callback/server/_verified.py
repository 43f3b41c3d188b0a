"""A callback whose signature checked out, and confirming that it is about *your* object.

The signature proves OSS sent the body, not that the body talks about your bucket: OSS
signs every customer's callbacks with the same key, and a body template may hold constants.
:meth:`VerifiedCallback.confirm` (``confirm_sync`` with a sync ``Bucket``) closes that gap
by HEADing the named object with the application's own credentials;
:meth:`VerifiedCallback.check_secret` is the alternative, for a per-upload secret.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio
import attrs

from oss_callback.protocol._errors import OSSError, ServiceError
from oss_callback.server._errors import CallbackNotConfirmedError

if TYPE_CHECKING:
    from oss_callback.client._client import AsyncBucket
    from oss_callback.client._sync import Bucket
    from oss_callback.protocol._models import HeadObjectResult

__all__ = ["CONFIRMABLE_FIELDS", "VerifiedCallback"]

#: The body fields :meth:`VerifiedCallback.confirm` checks against the stored object.
CONFIRMABLE_FIELDS: Final = ("object", "bucket", "size", "etag", "crc64")


@attrs.frozen(kw_only=True)
class VerifiedCallback:
    """A callback whose signature checked out, with its body parsed.

    Attributes:
        method: the HTTP method (always ``"POST"``).
        path: the request path as OSS signed it (percent-decoded).
        query_string: the raw query string (``""`` when there is none).
        query: the query string parsed into ``{name: value}`` (the last value wins).
        headers: the request headers, case-insensitive and read-only.
        body: the raw bytes that were verified.
        fields: the parsed body: form fields (``{name: value}``, the last value wins) or the
            JSON object. Values of a form body are strings (``fields["size"] == "1024"``).
        content_type: the media type of the body, lower-case, without parameters
            (``"application/x-www-form-urlencoded"`` or ``"application/json"``; ``""``
            when the request had none).
        key_url: the public-key URL the key was fetched from (``https://`` for OSS's own
            key host, whatever the header said), or ``None`` when the key is pinned.
        confirmed: the stored object's metadata when the callback was confirmed by the
            FastAPI dependency (``callback_dependency(..., confirm_with=bucket)``), else
            ``None``. :meth:`confirm` returns the same thing.

    Warning:
        The signature proves that OSS sent this body, **not** that it is about your bucket:
        OSS signs every customer's callbacks with one key, and a body template may hold
        constants, so anyone can make OSS sign ``bucket=yours&object=paid.mp4&size=1``
        for an upload to *their* bucket and replay it to you. Before trusting ``bucket``,
        ``object``, ``size`` or ``etag``, call :meth:`confirm` (or use a per-upload secret,
        :meth:`check_secret`).
    """

    method: str
    path: str
    query_string: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes
    fields: dict[str, Any]
    content_type: str
    key_url: str | None = None
    confirmed: HeadObjectResult | None = None

    def get(self, name: str, default: Any = None) -> Any:
        """Return body field ``name``, or ``default`` when the body has no such field."""
        return self.fields.get(name, default)

    def __getitem__(self, name: str) -> Any:
        """Return body field ``name``; ``KeyError`` if the body has no such field."""
        return self.fields[name]

    def __contains__(self, name: object) -> bool:
        """Whether the body has a field ``name``."""
        return name in self.fields

    # ------------------------------------------------------------------ confirmation

    async def confirm(
        self, bucket: AsyncBucket | Bucket, *, require: Iterable[str] = ()
    ) -> HeadObjectResult:
        """Check, with your own credentials, that this callback is about your stored object.

        Defeats the cross-account replay (see the class's warning): it HEADs the object
        named in the body's ``object`` field in ``bucket`` and checks, before and after::

            object   required: a non-empty string naming an object that exists in bucket
            bucket   if the body has it: equal to bucket.name (refused before any request)
            size     if the body has it: equal to the stored object's size
            etag     if the body has it: equal to its ETag (quotes and case ignored)
            crc64    if the body has it: equal to its CRC-64

        Put the fields in your ``Callback`` body template
        (``"bucket=${bucket}&object=${object}&size=${size}&etag=${etag}"``) and list the
        ones your template always has in ``require``: a callback without them did not
        come from your template. ``etag`` pins the exact upload (an attacker can't know
        it for an object they can't read). Other fields (``mimeType``, custom
        ``${x:...}`` variables) are **not** checked: they are whatever the signed body
        says; use :meth:`check_secret` to tie them to an upload you authorised.

        Args:
            bucket: your bucket: an :class:`~oss_callback.AsyncBucket` used on this event
                loop, or a sync :class:`~oss_callback.Bucket` (its HEAD then runs in a
                worker thread).
            require: body fields that must be present besides ``object`` (any of
                ``"bucket"``, ``"size"``, ``"etag"``, ``"crc64"``).

        Returns:
            The stored object's metadata (``size``, ``etag``, ``crc64``, ``metadata``...):
            prefer these values to the body's.

        Raises:
            CallbackNotConfirmedError: ``reason="not_confirmed"``: a required field is
                missing, the body names another bucket or no object, the object doesn't
                exist, or a field differs; ``reason="confirm_failed"``: the HEAD failed
                (network, permissions; the OSS error is the ``__cause__``).
            ValueError: ``require`` names a field that can't be checked.
        """
        from oss_callback.client._sync import Bucket

        if isinstance(bucket, Bucket):
            confirm = functools.partial(self.confirm_sync, bucket, require=require)
            return await anyio.to_thread.run_sync(confirm)
        key = self._confirm_target(bucket.name, require)
        try:
            head = await bucket.head_object(key)
        except (OSSError, ValueError) as exc:
            raise _head_failed(bucket.name, key, exc) from exc
        self._check_head(bucket.name, head)
        return head

    def confirm_sync(self, bucket: Bucket, *, require: Iterable[str] = ()) -> HeadObjectResult:
        """The blocking twin of :meth:`confirm`, with a sync :class:`~oss_callback.Bucket`.

        For WSGI apps and plain ``def`` handlers (which FastAPI runs in a worker thread).
        Same checks, result and errors as :meth:`confirm`.

        Raises:
            TypeError: ``bucket`` is an :class:`~oss_callback.AsyncBucket` (``await
                cb.confirm(bucket)`` instead).
        """
        from oss_callback.client._client import AsyncBucket

        given: object = bucket  # a runtime check for callers without a type checker
        if isinstance(given, AsyncBucket):
            raise TypeError(
                "confirm_sync() needs a sync oss_callback.Bucket; with an AsyncBucket use "
                "'await cb.confirm(bucket)'"
            )
        key = self._confirm_target(bucket.name, require)
        try:
            head = bucket.head_object(key)
        except (OSSError, ValueError) as exc:
            raise _head_failed(bucket.name, key, exc) from exc
        self._check_head(bucket.name, head)
        return head

    def check_secret(self, field: str, expected: str | None) -> None:
        """Check a per-upload secret: the other defence against cross-account replays.

        When the application authorises an upload it makes a random secret, remembers it
        for that object, and the uploader passes it as a callback variable that the body
        template echoes::

            secret = secrets.token_urlsafe(16)          # remembered for "uploads/a.jpg"
            Callback(url, body="object=${object}&size=${size}&nonce=${x:nonce}",
                     variables={"x:nonce": secret})

            cb.check_secret("nonce", pending.pop(cb["object"], None))   # in the handler

        Someone replaying a callback signed for *their* bucket can't know the secret. It
        proves the upload was one you authorised, not that the object is stored, nor that
        the uploader (who knows the secret) didn't lie about the rest: use :meth:`confirm`
        when you can.

        Args:
            field: the body field that carries the secret (``"nonce"`` above).
            expected: the secret issued for this upload; ``None`` or ``""`` (none was
                issued) is refused.

        Raises:
            CallbackNotConfirmedError: (``reason="not_confirmed"``) the field is missing
                or differs (compared in constant time).
        """
        value = self.fields.get(field)
        if (
            not expected
            or not isinstance(value, str)
            or not hmac.compare_digest(value.encode("utf-8"), expected.encode("utf-8"))
        ):
            raise CallbackNotConfirmedError(
                f"the callback's {field[:64]!r} field does not match the secret issued for "
                "this upload",
                reason="not_confirmed",
            )

    def _confirm_target(self, bucket_name: str, require: Iterable[str]) -> str:
        required = _required_fields(require)
        key = self.fields.get("object")
        if not isinstance(key, str) or not key:
            raise CallbackNotConfirmedError(
                "the callback body has no object field to confirm (put object=${object} in "
                "the Callback body)",
                reason="not_confirmed",
            )
        missing = [name for name in required if name not in self.fields]
        if missing:
            raise CallbackNotConfirmedError(
                f"the callback body lacks {', '.join(missing)} (required to confirm it)",
                reason="not_confirmed",
            )
        if "bucket" in self.fields and self.fields["bucket"] != bucket_name:
            raise CallbackNotConfirmedError(
                f"the callback is about bucket {_shown(self.fields['bucket'])}, not "
                f"{bucket_name!r}",
                reason="not_confirmed",
            )
        return key

    def _check_head(self, bucket_name: str, head: HeadObjectResult) -> None:
        mismatches: list[str] = []
        if "size" in self.fields and _as_int(self.fields["size"]) != head.size:
            mismatches.append(f"size {_shown(self.fields['size'])} (stored: {head.size})")
        claimed_etag = _etag(self.fields.get("etag"))
        if "etag" in self.fields and (claimed_etag is None or claimed_etag != _etag(head.etag)):
            mismatches.append(f"etag {_shown(self.fields['etag'])} (stored: {head.etag!r})")
        if "crc64" in self.fields and (
            head.crc64 is None or _as_int(self.fields["crc64"]) != head.crc64
        ):
            mismatches.append(f"crc64 {_shown(self.fields['crc64'])} (stored: {head.crc64})")
        if mismatches:
            raise CallbackNotConfirmedError(
                f"the callback does not match oss://{bucket_name}/{head.key}: "
                + "; ".join(mismatches),
                reason="not_confirmed",
            )


def _required_fields(require: Iterable[str]) -> tuple[str, ...]:
    names = (require,) if isinstance(require, str) else tuple(require)
    unknown = [name for name in names if name not in CONFIRMABLE_FIELDS]
    if unknown:
        raise ValueError(
            f"require: {unknown!r} can't be confirmed; choose from {CONFIRMABLE_FIELDS!r}"
        )
    return names


def _shown(value: Any) -> str:
    """An attacker-controlled value, safe and short for a message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isascii() and value.isdigit():
        return int(value)
    return None


def _etag(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip().strip('"'):
        return None
    return value.strip().strip('"').upper()


def _head_failed(bucket_name: str, key: str, exc: Exception) -> CallbackNotConfirmedError:
    where = f"oss://{bucket_name}/{_shown(key)[1:-1]}"
    if isinstance(exc, ValueError):
        return CallbackNotConfirmedError(
            f"the callback names {where}, which is not a valid object key",
            reason="not_confirmed",
        )
    if isinstance(exc, ServiceError) and exc.status == 404:
        return CallbackNotConfirmedError(
            f"the callback names {where}, which does not exist", reason="not_confirmed"
        )
    return CallbackNotConfirmedError(
        f"could not HEAD {where} to confirm the callback: {type(exc).__name__}: {exc}",
        reason="confirm_failed",
    )
