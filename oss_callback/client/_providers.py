"""Credentials providers: pass one as ``credentials_provider=`` for credentials that rotate.

A provider is any object with ``async def get_credentials() -> Credentials`` or a plain
``def get_credentials() -> Credentials`` (the client runs that one in a worker thread, so it
may block). The client asks it before its first request and again shortly before the
credentials' ``expiration`` (see :class:`~oss_callback.AsyncClient`), once for all the
requests that need them at the same time. Shipped here:

* :class:`StaticCredentialsProvider`: fixed credentials;
* :class:`EnvironmentCredentialsProvider`: ``OSS_ACCESS_KEY_ID``/``OSS_ACCESS_KEY_SECRET``/
  ``OSS_SESSION_TOKEN``, read again at every renewal;
* :class:`AlibabaCloudCredentialsProvider`: the official credential chain of
  `alibabacloud-credentials <https://pypi.org/project/alibabacloud-credentials/>`_
  (environment, config files, ECS RAM role, OIDC, RAM role ARN, ...):
  ``pip install 'oss-callback[credentials]'``.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from oss_callback.protocol._credentials import Credentials

__all__ = [
    "AlibabaCloudCredentialsProvider",
    "EnvironmentCredentialsProvider",
    "StaticCredentialsProvider",
]

_EXTRA_HINT = (
    "AlibabaCloudCredentialsProvider needs the alibabacloud-credentials package: "
    "pip install 'oss-callback[credentials]' (or pass client= yourself)"
)


class StaticCredentialsProvider:
    """Always the same credentials (what plain ``access_key_id=``/``access_key_secret=``
    amount to). Their ``expiration``, if any, is not renewed: when it passes, requests
    fail as OSS refuses them.

    Args:
        credentials: the :class:`Credentials` to hand out.
    """

    def __init__(self, credentials: Credentials) -> None:
        if not isinstance(credentials, Credentials):
            raise TypeError(
                f"credentials must be oss_callback.Credentials, not {type(credentials).__name__}"
            )
        self._credentials = credentials

    def __repr__(self) -> str:
        return f"StaticCredentialsProvider({self._credentials!r})"

    async def get_credentials(self) -> Credentials:
        """The credentials given to the constructor."""
        return self._credentials


class EnvironmentCredentialsProvider:
    """Credentials from ``OSS_ACCESS_KEY_ID``, ``OSS_ACCESS_KEY_SECRET`` and (optional)
    ``OSS_SESSION_TOKEN``, read again every time the client asks: at its first request,
    and again when OSS refuses the credentials (403 ``InvalidAccessKeyId``,
    ``SecurityTokenExpired``, ``InvalidSecurityToken``), so a process that updates
    ``os.environ`` with a new STS token goes on with it. (They carry no expiration, so
    nothing else makes the client ask again.)

    Args:
        environ: the mapping to read instead of ``os.environ``.

    ``get_credentials`` raises ``ValueError`` naming the missing variables (the client
    reports it as :class:`CredentialsError`).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    def __repr__(self) -> str:
        return "EnvironmentCredentialsProvider()"

    async def get_credentials(self) -> Credentials:
        """The credentials the environment variables hold now."""
        return Credentials.resolve(environ=os.environ if self._environ is None else self._environ)


class AlibabaCloudCredentialsProvider:
    """An adapter for the official `alibabacloud-credentials
    <https://pypi.org/project/alibabacloud-credentials/>`_ client: its default chain
    (environment variables, ``~/.alibabacloud/credentials``, ECS RAM role, OIDC role in
    ACK/RRSA, ...) or any client you build with it.

    ``client`` is anything shaped like ``alibabacloud_credentials.client.Client``: a
    ``get_credential()`` method (blocking; run in a worker thread) returning an object
    with ``access_key_id``, ``access_key_secret`` and ``security_token`` attributes (the
    package's ``CredentialModel``). ``None`` builds ``Client()`` (the default chain) the
    first time credentials are needed, in that worker thread.

    That client caches and renews its credentials itself, and never hands out ones with
    less than 15 minutes left, but doesn't say when they expire; so the credentials this
    adapter returns carry an ``expiration`` of ``refresh_interval`` seconds from then, and
    the client asks again halfway through that (every 5 minutes by default), or at once
    when OSS refuses them.

    Args:
        client: an ``alibabacloud_credentials.client.Client`` (or look-alike), or ``None``.
        refresh_interval: seconds the credentials are taken to be valid for (default 600,
            at most 900: the official client's own margin).

    Raises:
        ImportError: ``client=None`` and alibabacloud-credentials is not installed (the
            message names the ``credentials`` extra).
        ValueError: ``refresh_interval`` not in (0, 900].
    """

    def __init__(self, client: Any = None, *, refresh_interval: float = 600.0) -> None:
        if not 0 < refresh_interval <= 900:
            raise ValueError(
                f"refresh_interval must be in (0, 900] seconds, got {refresh_interval!r}"
            )
        self._factory: Any = None
        if client is None:
            try:
                module = importlib.import_module("alibabacloud_credentials.client")
            except ImportError as exc:
                raise ImportError(_EXTRA_HINT) from exc
            self._factory = module.Client
        elif not callable(getattr(client, "get_credential", None)):
            raise TypeError(
                "client must be an alibabacloud_credentials.client.Client (something with "
                f"get_credential()), not {type(client).__name__}"
            )
        self._client = client
        self._lock = threading.Lock()
        self.refresh_interval = float(refresh_interval)

    def __repr__(self) -> str:
        what = "default chain" if self._factory is not None else type(self._client).__name__
        return f"AlibabaCloudCredentialsProvider({what})"

    def get_credentials(self) -> Credentials:
        """Ask the official client (blocking: the client runs it in a worker thread).

        Raises:
            ValueError: it returned no access key pair (e.g. a bearer-token credential).
            Exception: whatever the official client raises (no credentials found, the
                metadata service unreachable, ...).
        """
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            client = self._client
        model = client.get_credential()
        key_id = getattr(model, "access_key_id", None)
        secret = getattr(model, "access_key_secret", None)
        if not key_id or not secret:
            kind = getattr(model, "type", None) or type(model).__name__
            raise ValueError(
                f"the alibabacloud-credentials client gave no access key pair (credential "
                f"type {kind!r}); OSS needs an AccessKey or STS credential"
            )
        return Credentials(
            key_id,
            secret,
            getattr(model, "security_token", None) or None,
            expiration=datetime.now(timezone.utc) + timedelta(seconds=self.refresh_interval),
        )
