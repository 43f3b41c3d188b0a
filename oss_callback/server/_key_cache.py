"""What the verifier remembers about key URLs: the keys it fetched, and the fetches that failed.

Both are thread-safe (``verify_sync`` runs in many threads) and work across event loops, and
both are bounded: a forged callback can name any allowed URL, so neither junk keys nor junk
failures may push out the real key. Deciding when to use them, and when to fetch, is
:mod:`._keys`' business.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from oss_callback.server._errors import PublicKeyFetchError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

#: Failed key fetches remembered at once (the oldest is forgotten first).
_MAX_FAILURES = 256


class _KeyCache:
    """A thread-safe LRU of fetched keys; entries expire after ``ttl`` seconds.

    Two tiers of at most ``maxsize`` entries each: a key that has verified a callback
    (``trusted``), and a key only fetched so far (a forged callback can name any allowed
    URL, and the key there may be perfectly valid). Untrusted keys never evict trusted ones,
    so junk URLs can't flush the real key; :meth:`promote` moves a key up once it verified
    a signature. Expired trusted entries stay (until the LRU bound evicts them) so that a
    key can be used stale when refreshing it fails.
    """

    def __init__(
        self, maxsize: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._maxsize = maxsize
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, rsa.RSAPublicKey]] = OrderedDict()
        self._untrusted: OrderedDict[str, tuple[float, rsa.RSAPublicKey]] = OrderedDict()

    def lookup(self, url: str) -> tuple[rsa.RSAPublicKey, bool] | None:
        """``(key, trusted)`` for the fresh key for ``url``, or ``None``."""
        now = self._clock()
        with self._lock:
            for tier, trusted in ((self._entries, True), (self._untrusted, False)):
                entry = tier.get(url)
                if entry is not None and entry[0] > now:
                    tier.move_to_end(url)
                    return entry[1], trusted
            return None

    def get(self, url: str) -> rsa.RSAPublicKey | None:
        """The fresh key for ``url`` (trusted or not), or ``None``."""
        found = self.lookup(url)
        return None if found is None else found[0]

    def get_stale(self, url: str) -> rsa.RSAPublicKey | None:
        """The trusted key for ``url`` even if it expired, or ``None``."""
        with self._lock:
            entry = self._entries.get(url)
            return None if entry is None else entry[1]

    def put(self, url: str, key: rsa.RSAPublicKey, *, trusted: bool = True) -> None:
        """Remember ``key`` for ``url`` (evicting the least recently used of its tier)."""
        if self._maxsize <= 0 or self._ttl <= 0:
            return
        with self._lock:
            tier = self._entries if trusted else self._untrusted
            tier[url] = (self._clock() + self._ttl, key)
            tier.move_to_end(url)
            while len(tier) > self._maxsize:
                tier.popitem(last=False)
            if trusted:
                self._untrusted.pop(url, None)

    def promote(self, url: str, key: rsa.RSAPublicKey) -> None:
        """``key`` (fetched from ``url``) verified a callback: trust it."""
        with self._lock:
            entry = self._untrusted.pop(url, None)
            if entry is None or entry[1] is not key:
                return
            self._entries[url] = entry
            self._entries.move_to_end(url)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every key."""
        with self._lock:
            self._entries.clear()
            self._untrusted.clear()

    def __len__(self) -> int:
        """How many trusted keys are kept."""
        with self._lock:
            return len(self._entries)


class _FailureCache:
    """Failed key fetches, remembered for ``ttl`` seconds (at most ``maxsize`` of them).

    Without it every forged callback naming a dead URL would fetch it again. Failures live
    apart from the keys: they never evict one.
    """

    def __init__(
        self, ttl: float, maxsize: int = _MAX_FAILURES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._maxsize = maxsize
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, PublicKeyFetchError]] = OrderedDict()

    def get(self, url: str) -> PublicKeyFetchError | None:
        """The failure remembered for ``url`` (a fresh copy), or ``None``."""
        with self._lock:
            entry = self._entries.get(url)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[url]
                return None
            return _copy_error(entry[1])

    def put(self, url: str, error: PublicKeyFetchError) -> None:
        """Remember that fetching ``url`` failed with ``error``."""
        if self._ttl <= 0:
            return
        with self._lock:
            self._entries[url] = (self._clock() + self._ttl, error)
            self._entries.move_to_end(url)
            while len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def discard(self, url: str) -> None:
        """Forget the failure of ``url``, if any."""
        with self._lock:
            self._entries.pop(url, None)

    def clear(self) -> None:
        """Forget every failure."""
        with self._lock:
            self._entries.clear()


def _copy_error(error: PublicKeyFetchError) -> PublicKeyFetchError:
    return type(error)(str(error), reason=error.reason)
