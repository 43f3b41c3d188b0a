"""What our connection pools (:mod:`._pool`, :mod:`._lean`) share: introspection and the
idle lists."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sized
from typing import Generic, TypeVar

__all__ = ["PoolStats"]

KeyT = TypeVar("KeyT", bound=Hashable)
ConnT = TypeVar("ConnT")


class PoolStats(Generic[KeyT, ConnT]):
    """Read-only counters of a slot-accounted pool (for tests and diagnostics).

    The pool sets ``_max`` (the limit), ``_total`` (slots in use), ``_idle`` (per origin,
    oldest first) and ``_n_idle``, ``_waiters`` (a sized queue), ``_created`` and
    ``_closed``.
    """

    _max: int
    _total: int
    _idle: dict[KeyT, deque[ConnT]]
    _n_idle: int
    _waiters: Sized
    _created: int
    _closed: bool

    def _pop_oldest_idle(self) -> ConnT:
        """Take the oldest idle connection of the first origin that has one."""
        for key in list(self._idle):
            idle = self._idle[key]
            if idle:
                self._n_idle -= 1
                conn = idle.popleft()
                if not idle:
                    del self._idle[key]
                return conn
            del self._idle[key]
        raise AssertionError("no idle connection although _n_idle > 0")  # pragma: no cover

    @property
    def max_connections(self) -> int:
        """The limit on open connections."""
        return self._max

    @property
    def num_connections(self) -> int:
        """Slots in use: idle, active and connecting connections (at most the limit)."""
        return self._total

    @property
    def num_idle(self) -> int:
        """Idle keep-alive connections."""
        return self._n_idle

    @property
    def num_waiting(self) -> int:
        """Requests waiting for a connection."""
        return len(self._waiters)

    @property
    def connections_created(self) -> int:
        """Connections opened over the pool's lifetime (reuse keeps this low)."""
        return self._created

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} connections={self._total}/{self._max} "
            f"idle={self._n_idle} waiting={len(self._waiters)}"
            f"{' closed' if self._closed else ''}>"
        )
