"""Introspection shared by our connection pools (:mod:`._pool`, :mod:`._lean`)."""

from __future__ import annotations

from collections.abc import Sized

__all__ = ["PoolStats"]


class PoolStats:
    """Read-only counters of a slot-accounted pool (for tests and diagnostics).

    The pool sets ``_max`` (the limit), ``_total`` (slots in use), ``_n_idle``,
    ``_waiters`` (a sized queue), ``_created`` and ``_closed``.
    """

    _max: int
    _total: int
    _n_idle: int
    _waiters: Sized
    _created: int
    _closed: bool

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
