"""Where the key for an allowed URL comes from: the cache, a remembered failure, or one fetch.

For a key URL the policy allowed, :class:`_KeySource` answers ``(key, trusted)``::

    a fresh cached key                  -> used (no request)
    a failure remembered for the URL    -> raised again (no request), or the expired key
                                           used instead when there is one (it verified before)
    else                                -> fetched (_key_fetch); concurrent callbacks needing
                                           the same URL share that one fetch and its outcome

The fetch is shared per event loop for ``verify`` (waiters wait on the leader's
:class:`_Flight`, kept in a ``RunVar``) and with one lock per URL for ``verify_sync``
(waiters then find the leader's key, or failure, in the caches), so a slow key server only
delays the callbacks that need its key. A fetched key is cached untrusted until it has
verified a signature (:meth:`_KeySource.promote`); a failed refresh of a trusted key falls
back on the expired one, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import anyio
import attrs
from anyio.lowlevel import RunVar

from oss_callback.server._errors import PublicKeyFetchError
from oss_callback.server._key_cache import _copy_error, _FailureCache, _KeyCache
from oss_callback.server._key_fetch import _fetch_key_async, _fetch_key_sync, _KeyFetch

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger("oss_callback.server")


class _UrlLocks:
    """One lock per key URL for the blocking fetches, made on demand and dropped when idle.

    A slow key server then delays only the callbacks that need *its* key.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, url: str) -> Iterator[None]:
        with self._guard:
            lock, users = self._locks.get(url) or (threading.Lock(), 0)
            self._locks[url] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._guard:
                lock, users = self._locks[url]
                if users <= 1:
                    del self._locks[url]
                else:
                    self._locks[url] = (lock, users - 1)

    def __len__(self) -> int:
        with self._guard:
            return len(self._locks)


@attrs.define
class _Flight:
    """One in-progress fetch that concurrent callbacks for the same URL wait on."""

    event: anyio.Event = attrs.field(factory=anyio.Event)
    key: rsa.RSAPublicKey | None = None
    trusted: bool = False
    error: PublicKeyFetchError | None = None


class _KeySource:
    """The keys of allowed URLs for one verifier (see the module's docstring).

    Thread-safe, and usable from any number of event loops.
    """

    def __init__(
        self,
        *,
        cache_size: int,
        cache_ttl: float,
        failure_ttl: float,
        max_key_size: int,
        fetch_timeout: float,
    ) -> None:
        self._cache = _KeyCache(cache_size, cache_ttl)
        self._failures = _FailureCache(failure_ttl)
        self._max_key_size = max_key_size
        self._fetch_timeout = fetch_timeout
        self._flights: RunVar[dict[str, _Flight]] = RunVar(f"oss_callback_key_fetches_{id(self)}")
        self._url_locks = _UrlLocks()

    def promote(self, url: str, key: rsa.RSAPublicKey) -> None:
        """``key`` (fetched from ``url``) verified a callback: trust it."""
        self._cache.promote(url, key)

    def clear(self) -> None:
        """Forget every fetched key and failed fetch."""
        self._cache.clear()
        self._failures.clear()

    def _known(self, url: str) -> tuple[rsa.RSAPublicKey, bool] | None:
        """``(key, trusted)`` without fetching, or ``None`` when a fetch is needed.

        Raises the remembered failure of ``url`` when there is no previous key to use.
        """
        found = self._cache.lookup(url)
        if found is not None:
            return found
        error = self._failures.get(url)
        if error is None:
            return None
        stale = self._cache.get_stale(url)
        if stale is None:
            raise error
        return stale, True

    async def get(self, url: str) -> tuple[rsa.RSAPublicKey, bool]:
        """``(key, trusted)`` for ``url``, fetching it if needed (on this event loop)."""
        known = self._known(url)
        if known is not None:
            return known
        # Single flight: concurrent callbacks on this event loop share one fetch per URL.
        flights = self._flights.get(None)
        if flights is None:
            flights = {}
            self._flights.set(flights)
        flight = flights.get(url)
        if flight is not None:
            await flight.event.wait()
            if flight.key is not None:
                return flight.key, flight.trusted
            error = flight.error
            assert error is not None
            raise _copy_error(error)
        flight = flights[url] = _Flight()
        try:
            flight.key, flight.trusted = await self._fetch(url)
            return flight.key, flight.trusted
        except PublicKeyFetchError as exc:
            flight.error = exc
            raise
        finally:
            if flight.key is None and flight.error is None:  # the leader was cancelled
                flight.error = PublicKeyFetchError(
                    f"fetching the public key from {url!r} was cancelled",
                    reason="key_fetch_failed",
                )
            del flights[url]
            flight.event.set()

    async def _fetch(self, url: str) -> tuple[rsa.RSAPublicKey, bool]:
        try:
            key = await _fetch_key_async(self._plan(url))
        except PublicKeyFetchError as exc:
            return self._failed(url, exc)
        return self._accept(url, key), False

    def get_sync(self, url: str) -> tuple[rsa.RSAPublicKey, bool]:
        """The blocking twin of :meth:`get`: one fetch per URL across threads."""
        known = self._known(url)
        if known is not None:
            return known
        with self._url_locks.hold(url):  # one fetch per URL; other URLs don't wait
            known = self._known(url)
            if known is not None:
                return known
            try:
                key = _fetch_key_sync(self._plan(url))
            except PublicKeyFetchError as exc:
                return self._failed(url, exc)
            return self._accept(url, key), False

    def _plan(self, url: str) -> _KeyFetch:
        return _KeyFetch(url, self._max_key_size, self._fetch_timeout)

    def _accept(self, url: str, key: rsa.RSAPublicKey) -> rsa.RSAPublicKey:
        self._cache.put(url, key, trusted=False)  # trusted once it verifies a callback
        self._failures.discard(url)
        logger.info("fetched OSS callback public key from %s", url)
        return key

    def _failed(self, url: str, error: PublicKeyFetchError) -> tuple[rsa.RSAPublicKey, bool]:
        """Remember the failure; use the expired key if there is one, else raise."""
        self._failures.put(url, error)
        stale = self._cache.get_stale(url)
        if stale is None:
            raise error
        logger.warning(
            "refreshing the public key from %s failed (%s); using the old one", url, error.reason
        )
        return stale, True
