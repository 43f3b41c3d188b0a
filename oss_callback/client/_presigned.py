"""Requests signed for someone else to send, no request made: :class:`PresignMixin`, the
family of :class:`~oss_callback.AsyncBucket` operations behind ``sign_url`` (a presigned
URL, :mod:`oss_callback.protocol._presign`) and ``sign_post_policy`` (a browser's form
upload, :mod:`oss_callback.client._post_policy`); mixins: see
:mod:`oss_callback.client._base`.
"""

from __future__ import annotations

from collections.abc import Mapping

from oss_callback.client._base import BucketBase
from oss_callback.client._post_policy import PostPolicy, build_post_policy
from oss_callback.protocol._callback import Callback
from oss_callback.protocol._endpoint import validate_key
from oss_callback.protocol._presign import presign_url

__all__ = ["PresignMixin"]


class PresignMixin(BucketBase):
    """Presigned URLs and POST policies (see :class:`AsyncBucket`)."""

    def sign_post_policy(
        self,
        key: str | None = None,
        *,
        key_prefix: str | None = None,
        expires: float = 3600,
        callback: Callback | None = None,
        min_size: int = 0,
        max_size: int | None = None,
        content_type: str | None = None,
        success_action_status: int | None = None,
    ) -> PostPolicy:
        """Sign a form upload for a browser (PostObject): no request is made.

        The browser POSTs ``policy.fields`` and then the file, as the last field, named
        ``file``, to ``policy.url`` (``multipart/form-data``). OSS rejects the upload if the
        browser changes the key (or leaves ``key_prefix``), the callback or its variables,
        the Content-Type, or sends a file outside ``min_size``..``max_size`` bytes.

        Args:
            key: the exact object key; or
            key_prefix: a prefix: the browser's file name is appended (``${filename}``).
            expires: seconds the policy stays valid (at most 7 days).
            callback: OSS calls it after storing the file, as for :meth:`put_object`; the
                browser receives the callback server's answer (or a 203 if it fails).
            min_size: smallest file accepted, in bytes.
            max_size: largest file accepted, in bytes (``None``: up to OSS's 5 GB).
            content_type: the object's Content-Type (pinned in the policy).
            success_action_status: what OSS answers without a callback: 204 (OSS's
                default), 200, or 201 with an XML body.

        Raises:
            ValueError: both or neither of ``key``/``key_prefix``, a bad ``expires``,
                size range or status.
            CredentialsError: with a ``credentials_provider``, when no fresh credentials
                of it are cached (this method is synchronous and can't ask it): call
                ``await client.get_credentials()`` (or make any request) first.
        """
        if key is not None:
            validate_key(key)
        return build_post_policy(
            self._session, self.name, key=key, key_prefix=key_prefix, expires=expires,
            callback=callback, min_size=min_size, max_size=max_size,
            content_type=content_type, success_action_status=success_action_status,
        )

    def sign_url(
        self,
        method: str,
        key: str,
        expires: float,
        *,
        callback: Callback | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> str:
        """A presigned URL: anyone holding it can make this one request until it expires.

        No request is made. The URL is signed with the client's signature version (V1 or
        V4) and credentials; an STS token goes into it (``security-token`` for V1,
        ``x-oss-security-token`` for V4). With ``callback=`` a device can upload straight to
        OSS with a plain HTTP PUT: OSS stores the object, calls your callback server, and
        answers the PUT with the server's reply (or a 203 if the callback failed).

        Args:
            method: ``"GET"``, ``"PUT"``, ``"HEAD"``, ``"POST"`` or ``"DELETE"``.
            key: the object key.
            expires: seconds the URL stays valid (whole seconds; V4: at most 7 days).
            callback: for a PUT (or POST): sent as the ``callback``/``callback-var`` query
                parameters, signed, so the holder of the URL can't change it.
            headers: headers the request must be sent with, signed: ``Content-Type``,
                ``Content-MD5`` and ``x-oss-*`` (e.g. ``x-oss-meta-*``) always; with V4 any
                other (e.g. ``Cache-Control``) too, as an additional signed header. V1
                can't sign other headers: they are not part of the signature. The request
                fails with ``SignatureDoesNotMatch`` unless it sends exactly these values.
            params: query parameters to add (``""`` for a bare name, e.g.
                ``{"response-content-type": "text/plain"}``); V4 signs all of them, V1 only
                OSS's sub-resources (as OSS requires).

        Raises:
            ValueError: an unknown method, a bad key or ``expires`` (V4: over 7 days), a
                header or parameter the signature sets itself (``Date``,
                ``Authorization``, ``Expires``, ``x-oss-date``...), a callback on a
                GET/HEAD/DELETE, or a callback both in ``callback=`` and in
                ``headers``/``params``.
        """
        session = self._session
        return presign_url(
            method, self.name, key, expires,
            credentials=session.credentials,
            now=session.now(), endpoint=session.endpoint,
            signature_version=session.signature_version, region=session.region,
            headers=headers, params=params, callback=callback,
        )
