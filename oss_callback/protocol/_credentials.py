"""Credentials: an access key pair, an optional STS token and its expiry, never shown in a repr.

Also the error raised when a credentials provider fails (:class:`CredentialsError`) and the
shape of a provider (:class:`CredentialsProvider`): see :mod:`oss_callback.client._providers` for
the providers shipped, and :mod:`oss_callback.client._credentials_cache` for how and when they
are asked.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Mapping
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import attrs

from oss_callback.protocol._errors import OSSError

__all__ = ["Credentials", "CredentialsError", "CredentialsProvider"]

ENV_ACCESS_KEY_ID = "OSS_ACCESS_KEY_ID"
ENV_ACCESS_KEY_SECRET = "OSS_ACCESS_KEY_SECRET"  # noqa: S105 - an environment variable name
ENV_SESSION_TOKEN = "OSS_SESSION_TOKEN"  # noqa: S105 - an environment variable name


def _nonempty(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string")
    if value != value.strip() or any(c in value for c in "\r\n"):
        raise ValueError(f"{attribute.name} must not contain whitespace or line breaks")


def _token(value: str | None) -> str | None:
    """An empty token is no token (as an unset ``OSS_SESSION_TOKEN``)."""
    return value or None


def _check_token(instance: object, attribute: attrs.Attribute[str | None],
                 value: str | None) -> None:
    if value is not None:
        _nonempty(instance, attribute, value)


def _check_expiration(instance: object, attribute: attrs.Attribute[datetime | None],
                      value: datetime | None) -> None:
    if value is None:
        return
    if not isinstance(value, datetime):
        raise TypeError(f"expiration must be a datetime or None, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            "expiration must be a timezone-aware datetime, e.g. "
            "datetime.now(timezone.utc) + timedelta(hours=1)"
        )


@attrs.frozen
class Credentials:
    """An AccessKey pair, with the STS token and its expiry for temporary credentials.

    ``Credentials(access_key_id, access_key_secret, security_token=None, expiration=None)``.
    The secret and the token never appear in ``repr``. ``expiration`` (a timezone-aware
    datetime) is when the credentials stop working; a client with a
    ``credentials_provider`` asks the provider for new ones shortly before (``None``: they
    don't expire).

    Raises:
        ValueError: an empty key id or secret, whitespace or line breaks in a value, or a
            naive ``expiration``.
    """

    access_key_id: str = attrs.field(validator=_nonempty)
    access_key_secret: str = attrs.field(validator=_nonempty, repr=False)
    security_token: str | None = attrs.field(default=None, converter=_token,
                                             validator=_check_token, repr=False)
    expiration: datetime | None = attrs.field(default=None, validator=_check_expiration)

    @classmethod
    def resolve(
        cls,
        access_key_id: str | None = None,
        access_key_secret: str | None = None,
        security_token: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Credentials:
        """Take each value from the arguments, else from the environment.

        Raises:
            ValueError: when the key id or secret is missing, naming the variable to set.
        """
        env = os.environ if environ is None else environ
        key_id = access_key_id if access_key_id is not None else env.get(ENV_ACCESS_KEY_ID)
        secret = (
            access_key_secret if access_key_secret is not None else env.get(ENV_ACCESS_KEY_SECRET)
        )
        token = security_token if security_token is not None else env.get(ENV_SESSION_TOKEN)
        missing = [
            f"{arg}= (or ${var})"
            for arg, var, value in (
                ("access_key_id", ENV_ACCESS_KEY_ID, key_id),
                ("access_key_secret", ENV_ACCESS_KEY_SECRET, secret),
            )
            if not value
        ]
        if missing:
            raise ValueError(
                "missing OSS credentials: pass " + " and ".join(missing)
                + " to the client, or set the environment variables"
            )
        assert key_id is not None
        assert secret is not None
        return cls(access_key_id=key_id, access_key_secret=secret, security_token=token or None)


class CredentialsError(OSSError):
    """The credentials provider failed, returned something unusable, or (for the
    synchronous signing helpers) no fresh credentials of the provider are cached.

    When the provider raised, that exception is chained (``__cause__``). The message says
    which provider and what happened; it never carries a secret.
    """


@runtime_checkable
class CredentialsProvider(Protocol):
    """Anything with ``async def get_credentials() -> Credentials`` or a plain
    ``def get_credentials() -> Credentials`` (run in a worker thread, so it may block)."""

    def get_credentials(self) -> Credentials | Awaitable[Credentials]:
        """The credentials to sign requests with from now on."""
        ...  # pragma: no cover - a protocol
