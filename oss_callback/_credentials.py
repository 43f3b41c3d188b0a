"""Credentials: an access key pair and an optional STS token, never shown in a repr."""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs

__all__ = ["Credentials"]

ENV_ACCESS_KEY_ID = "OSS_ACCESS_KEY_ID"
ENV_ACCESS_KEY_SECRET = "OSS_ACCESS_KEY_SECRET"  # noqa: S105 - an environment variable name
ENV_SESSION_TOKEN = "OSS_SESSION_TOKEN"  # noqa: S105 - an environment variable name


def _nonempty(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string")
    if value != value.strip() or any(c in value for c in "\r\n"):
        raise ValueError(f"{attribute.name} must not contain whitespace or line breaks")


@attrs.frozen(kw_only=True)
class Credentials:
    """An AccessKey pair (and STS token). The secret and token never appear in ``repr``."""

    access_key_id: str = attrs.field(validator=_nonempty)
    access_key_secret: str = attrs.field(validator=_nonempty, repr=False)
    security_token: str | None = attrs.field(default=None, repr=False)

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
