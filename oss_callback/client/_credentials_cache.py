"""The credentials a client signs with, and their renewal from a ``credentials_provider``.

Credentials are fixed, or come from a provider (:meth:`CredentialsCache.request`): asked
before the first request, and again before a request once less than
:data:`REFRESH_MARGIN` (5 min), or half their lifetime if that is shorter, remains until
their ``expiration``; concurrent requests share one call (single flight). A request that
OSS answers 403 with one of :data:`REJECTED_CREDENTIALS` (credentials revoked early) asks
the provider once more (:meth:`CredentialsCache.refresh` with ``rejected=``) and, given
different credentials, is sent again once (the session decides that).

The cache also keeps the :class:`Redactor` of every secret it has handed out (the last
:data:`REDACT_HISTORY` sets), so an answer's text can be cleaned of credentials rotated
away since. The value itself, :class:`Credentials`, and the provider protocol live in
:mod:`oss_callback.protocol._credentials`.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable

import anyio
import anyio.to_thread

from oss_callback.protocol._credentials import Credentials, CredentialsError, CredentialsProvider
from oss_callback.protocol._redact import Redactor

__all__ = ["REFRESH_MARGIN", "REJECTED_CREDENTIALS", "CredentialsCache"]

logger = logging.getLogger("oss_callback")

#: A provider's credentials are renewed when less than this many seconds remain until
#: their expiration (or half their lifetime, when that is shorter: 3600 s STS tokens are
#: renewed 5 min before they expire, 4 s ones after 2 s).
REFRESH_MARGIN = 300.0
#: When renewing fails but the cached credentials have not expired yet, they keep being
#: used (with a warning), and the provider is asked again after this many seconds.
FAILED_REFRESH_PAUSE = 5.0
#: How many credential sets' secrets :attr:`CredentialsCache.redact` keeps removing after rotation
#: (each request's own are always removed from its answers, however old).
REDACT_HISTORY = 16
#: 403 codes that say the credentials are not (or no longer) accepted: with a provider, the
#: request asks it again and, given different credentials, is retried once.
REJECTED_CREDENTIALS = frozenset({"InvalidAccessKeyId", "SecurityTokenExpired",
                                  "InvalidSecurityToken"})


class CredentialsCache:
    """The credentials to sign with: fixed ones, or a provider's, renewed in time.

    ``clock`` gives UNIX seconds on the OSS-corrected clock (expirations are STS's, so
    OSS's, time); the session corrects it after ``RequestTimeTooSkewed``.
    """

    def __init__(
        self,
        credentials: Credentials | None,
        provider: CredentialsProvider | None,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.provider = provider
        self._clock = clock
        self._provider_is_async = provider is not None and (
            inspect.iscoroutinefunction(provider.get_credentials))
        #: the credentials requests are signed with; their refresh and expiry times (UNIX
        #: seconds on the OSS-corrected clock); until when a failed refresh is not retried.
        self._credentials: Credentials | None = None
        self._refresh_at = -math.inf
        self._expires_at = -math.inf
        self._pause_until = -math.inf
        self._refresh_lock = anyio.Lock()
        #: refreshes finished (a waiter that sees it move takes that refresh's outcome).
        self._refreshes = 0
        self._last_failure: CredentialsError | None = None
        self._secrets_used: list[str] = []
        self._redactor: Redactor | None = None
        if credentials is not None:
            self._adopt(credentials)

    @property
    def redact(self) -> Redactor:
        """Removes the secrets and STS tokens of the credentials used from a text (those
        of the last :data:`REDACT_HISTORY` credential sets, after rotations)."""
        if self._redactor is None:
            self._redactor = Redactor(self._secrets_used)
        return self._redactor

    def current(self) -> Credentials:
        """The credentials to sign with now, without asking the provider: for the
        synchronous signing helpers (POST policies, presigned URLs).

        Fixed credentials always; a provider's cached ones while they are fresh (not yet
        due for renewal).

        Raises:
            CredentialsError: with a provider, when none are cached yet, or they are due
                for renewal: the message says to make a request or call
                ``client.get_credentials()`` (which asks the provider) first.
        """
        creds = self._credentials
        if creds is not None and self._clock() < self._refresh_at:
            return creds
        name = type(self.provider).__name__
        state = ("has not been asked yet" if creds is None
                 else "gave credentials that are due for renewal")
        raise CredentialsError(
            f"no fresh credentials to sign with: the credentials provider ({name}) {state}, "
            "and signing here is synchronous, so it can't ask it; first call `await "
            "client.get_credentials()` (sync Client: `client.get_credentials()`) or make "
            "any request, then sign"
        )

    def cached(self) -> Credentials | None:
        """The credentials last used or obtained, fresh or not (``None``: none yet)."""
        return self._credentials

    def usable(self) -> Credentials | None:
        """The cached credentials if a request may use them without asking the provider:
        fresh, or (after a failed renewal, for a short pause) not yet expired."""
        creds = self._credentials
        if creds is None:
            return None
        now = self._clock()
        if now < self._refresh_at or (now < self._pause_until and now < self._expires_at):
            return creds
        return None

    async def request(self) -> Credentials:
        """The credentials for a request: the cached ones, or the provider's new ones
        when none are cached or they are due for renewal (one provider call for all the
        requests that need it at the same time).

        Raises:
            CredentialsError: the provider failed or returned something unusable.
        """
        creds = self.usable()
        if creds is not None:
            return creds
        return await self.refresh(rejected=None)

    async def refresh(self, rejected: Credentials | None) -> Credentials:
        """Ask the provider, once for all concurrent callers. ``rejected``: the credentials
        OSS just refused (renew unless another task already replaced them)."""
        seen = self._refreshes
        async with self._refresh_lock:
            if self._refreshes != seen:
                # A refresh ended while this task waited: share its outcome.
                usable = self.usable()
                if usable is not None:
                    return usable
                failure = self._last_failure
                if failure is not None:
                    raise CredentialsError(str(failure)) from failure.__cause__
                current = self._credentials
                assert current is not None
                return current
            current = self._credentials
            if rejected is not None and current is not None and current is not rejected:
                return current
            if rejected is None and (usable := self.usable()) is not None:
                return usable
            try:
                fresh = await self._ask_provider()
            except CredentialsError as exc:
                self._last_failure = exc
                self._refreshes += 1
                if rejected is None and current is not None and self._clock() < self._expires_at:
                    logger.warning("%s; using the cached credentials until they expire, and "
                                   "asking again in %g s", exc, FAILED_REFRESH_PAUSE)
                    self._pause_until = self._clock() + FAILED_REFRESH_PAUSE
                    return current
                raise
            self._last_failure = None
            self._refreshes += 1
            self._adopt(fresh)
            return fresh

    async def _ask_provider(self) -> Credentials:
        provider = self.provider
        assert provider is not None
        name = type(provider).__name__
        try:
            if self._provider_is_async:
                result: object = await provider.get_credentials()  # type: ignore[misc]
            else:
                result = await anyio.to_thread.run_sync(provider.get_credentials,
                                                        abandon_on_cancel=True)
                if inspect.isawaitable(result):
                    result = await result
        except CredentialsError:
            raise
        except Exception as exc:
            raise CredentialsError(
                f"asking the credentials provider ({name}) for credentials failed: "
                f"{type(exc).__name__}: {self.redact(str(exc))}"
            ) from exc
        if not isinstance(result, Credentials):
            raise CredentialsError(
                f"the credentials provider ({name}) returned {type(result).__name__}, not "
                "oss_callback.Credentials"
            )
        return result

    def _adopt(self, creds: Credentials) -> None:
        """Use ``creds`` from now on; schedule their renewal."""
        now = self._clock()
        self._credentials = creds
        self._pause_until = -math.inf
        if creds.expiration is None:
            self._refresh_at = self._expires_at = math.inf
        else:
            self._expires_at = creds.expiration.timestamp()
            lifetime = self._expires_at - now
            if lifetime <= 0:
                logger.warning(
                    "the credentials provider (%s) gave credentials (access key id %s) that "
                    "expired %.0f s ago (is the local clock right?); using them, and asking "
                    "again before the next request", type(self.provider).__name__,
                    creds.access_key_id, -lifetime)
                self._refresh_at = now
            else:
                self._refresh_at = self._expires_at - min(REFRESH_MARGIN, lifetime / 2)
        fresh = [s for s in (creds.access_key_secret, creds.security_token)
                 if s and s not in self._secrets_used]
        if fresh:
            self._secrets_used = [*self._secrets_used, *fresh][-2 * REDACT_HISTORY:]
            self._redactor = None
