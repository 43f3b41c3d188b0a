"""Ablations: switch one of the core's optimisations off inside a benchmark worker.

``oss_callback`` itself is not edited: each patch changes the imported modules of one worker
process (``"patches": [...]`` in its spec), so the ``ablations`` group can show what each
optimisation buys, against the unpatched code in the same interleaved rounds.

* ``no_wire``: file bodies (``put_object(file=...)``, resumable parts) streamed through the
  async HTTP stack in 2 MiB worker-thread reads, instead of one blocking job per request in
  a worker thread (:mod:`oss_callback._wire`). This was the code path before the wire.
* ``no_lean``: other requests through ``httpx.AsyncClient`` (with our O(1) pool,
  :mod:`oss_callback._pool`) instead of the lean asyncio/httptools pool
  (:mod:`oss_callback._lean`).
* ``httpcore_pool``: with ``no_lean``, httpx's default transport (httpcore's pool, whose
  request assignment is O(queued x connections)) instead of our O(1) pool.
* ``long_body_1m``: long bodies (put_object of a large file) read in 1 MiB pieces like
  parts, instead of 256 KiB (:data:`oss_callback._wire.LONG_SEND_BUFFER`).
* ``checkpoint_every_part``: write the checkpoint (two fsyncs) after every part, as before
  :data:`oss_callback._resumable.CHECKPOINT_INTERVAL` throttled it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["PATCHES", "apply"]


def _after_client_init(change: Callable[[Any, dict[str, Any]], None]) -> None:
    """Run ``change(client, kwargs)`` after every ``AsyncClient.__init__``."""
    from oss_callback import _client

    original = _client.AsyncClient.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        change(self, kwargs)

    _client.AsyncClient.__init__ = init  # type: ignore[method-assign]


def _no_wire() -> None:
    def change(client: Any, _: dict[str, Any]) -> None:
        if client._session.wire is not None:
            client._session.wire.close()
        client._session.wire = None

    _after_client_init(change)


def _no_lean() -> None:
    def change(client: Any, _: dict[str, Any]) -> None:
        client._session.lean = None

    _after_client_init(change)


def _httpcore_pool() -> None:
    import httpx

    from oss_callback import _client

    def change(client: Any, kwargs: dict[str, Any]) -> None:
        if kwargs.get("transport") is not None:
            return
        n = kwargs.get("max_connections", _client.DEFAULT_MAX_CONNECTIONS)
        old = client._session.http
        client._session.http = httpx.AsyncClient(
            timeout=old.timeout, follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))

    _after_client_init(change)


def _long_body_1m() -> None:
    from oss_callback import _wire

    _wire.LONG_SEND_BUFFER = _wire.SEND_BUFFER


def _checkpoint_every_part() -> None:
    from oss_callback import _resumable

    _resumable.CHECKPOINT_INTERVAL = 0.0


PATCHES: dict[str, Callable[[], None]] = {
    "no_wire": _no_wire,
    "no_lean": _no_lean,
    "httpcore_pool": _httpcore_pool,
    "long_body_1m": _long_body_1m,
    "checkpoint_every_part": _checkpoint_every_part,
}


def apply(names: list[str]) -> None:
    for name in names:
        PATCHES[name]()
