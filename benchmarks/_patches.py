"""Ablations: undo one of the SDK's tunings inside a benchmark worker.

``oss_callback`` itself is not edited: each patch changes the imported modules of one worker
process (``"patches": [...]`` in its spec), so the ``ablations`` group can show what each
tuning buys, against the unpatched code in the same interleaved rounds.

* ``no_gate``: no gate on requests in flight (``client._session.gate = None``): requests
  beyond the pool's connections queue inside httpcore's pool instead of on an
  ``anyio.Semaphore`` in front of it.
* ``pool_64``: the SDK-built client with 64 connections (``max_connections=64``, gate
  included) instead of the default 8 (:data:`oss_callback.client._engine.DEFAULT_MAX_CONNECTIONS`).
* ``keep_cookies``: httpx's default cookie jar instead of the SDK's no-cookies jar (httpx
  then parses every response for ``Set-Cookie`` and adds a ``Cookie`` header if any).
* ``file_chunk_1m``: files read (and CRC-64'd) in 1 MiB chunks instead of 2 MiB
  (:data:`oss_callback.client._body.FILE_CHUNK`, and the bodies' ``chunk_size`` defaults, which
  were bound when the module was imported).
* ``checkpoint_every_part``: write the checkpoint (two fsyncs) after every part, as before
  :data:`oss_callback.client._resume.CHECKPOINT_INTERVAL` throttled it.

(uvloop is not a patch: the worker's ``"loop": "uvloop"`` runs the async case on it.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["PATCHES", "apply"]


def _after_client_init(change: Callable[[Any, dict[str, Any]], None]) -> None:
    """Run ``change(client, kwargs)`` after every ``AsyncClient.__init__``."""
    from oss_callback.client import _client

    original = _client.AsyncClient.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        change(self, kwargs)

    _client.AsyncClient.__init__ = init  # type: ignore[method-assign]


def _no_gate() -> None:
    def change(client: Any, _: dict[str, Any]) -> None:
        client._session.gate = None

    _after_client_init(change)


def _pool_64() -> None:
    from oss_callback.client import _client

    original = _client.AsyncClient.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("http_client") is None and kwargs.get("max_connections") is None:
            kwargs["max_connections"] = 64
        original(self, *args, **kwargs)

    _client.AsyncClient.__init__ = init  # type: ignore[method-assign]


def _keep_cookies() -> None:
    def change(client: Any, _: dict[str, Any]) -> None:
        client._session.http.cookies = None  # httpx.Cookies(None): a fresh default jar

    _after_client_init(change)


def _set_default(func: Callable[..., Any], name: str, value: Any) -> None:
    """Change the default of the positional-or-keyword parameter ``name`` of ``func``."""
    params = [p for p in inspect.signature(func).parameters.values()
              if p.default is not inspect.Parameter.empty
              and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    names = [p.name for p in params]
    defaults = list(func.__defaults__ or ())
    assert len(defaults) == len(params) and name in names, (func, names)
    defaults[names.index(name)] = value
    func.__defaults__ = tuple(defaults)


def _file_chunk(chunk: int) -> Callable[[], None]:
    def patch() -> None:
        from oss_callback.client import _body

        _body.FILE_CHUNK = chunk
        _set_default(_body.FileRangeBody.__init__, "chunk_size", chunk)
        _set_default(_body.FileObjBody.__init__, "chunk_size", chunk)

    return patch


def _checkpoint_every_part() -> None:
    from oss_callback.client import _resume

    _resume.CHECKPOINT_INTERVAL = 0.0


PATCHES: dict[str, Callable[[], None]] = {
    "no_gate": _no_gate,
    "pool_64": _pool_64,
    "keep_cookies": _keep_cookies,
    "file_chunk_1m": _file_chunk(1024 * 1024),
    "checkpoint_every_part": _checkpoint_every_part,
}


def apply(names: list[str]) -> None:
    for name in names:
        PATCHES[name]()
