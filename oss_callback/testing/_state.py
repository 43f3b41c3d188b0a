"""What the emulator's operation handlers share: the store, the accepted credentials, the
settings, the records of requests and callbacks, and the client callbacks are POSTed with.

:class:`~oss_callback.testing.OSSEmulator` makes one per run (and changes its
``callback_timeout`` and ``endpoint``); :class:`~oss_callback.testing._app.EmulatorApp`
hands it to the handler of each request.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable

import httpx

from oss_callback.testing._auth import CredentialStore
from oss_callback.testing._callback_send import callback_client
from oss_callback.testing._callbacks import public_key_pem
from oss_callback.testing._records import CallbackRecord, RequestRecord
from oss_callback.testing._store import Store

__all__ = ["ETAG_MODES", "EmulatorState"]

#: How ETags are made: ``"md5"`` as OSS does (the default), or ``"fast"`` (see
#: :class:`OSSEmulator`): no MD5 unless the client sends ``Content-MD5``.
ETAG_MODES = ("md5", "fast")


class EmulatorState:
    """The shared state of one emulator run (the records are thread-safe)."""

    def __init__(
        self,
        store: Store,
        *,
        region: str,
        credentials: CredentialStore,
        callback_timeout: float = 5.0,
        max_records: int = 100_000,
        etag: str = "md5",
    ) -> None:
        if etag not in ETAG_MODES:
            raise ValueError(f"etag must be one of {ETAG_MODES}, not {etag!r}")
        self.store = store
        self.etag_mode = etag
        self.region = region
        self.credentials = credentials
        self.callback_timeout = callback_timeout
        self.endpoint = ""
        self.records_lock = threading.Lock()
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=max_records)
        self.callbacks: collections.deque[CallbackRecord] = collections.deque(maxlen=max_records)
        self._http: httpx.AsyncClient | None = None
        self.public_key_pem = public_key_pem()

    def callback_client(self) -> httpx.AsyncClient:
        """The client callbacks are POSTed with (made on first use, on the server's loop)."""
        if self._http is None:
            self._http = callback_client()
        return self._http

    async def aclose(self) -> None:
        """Close the callback HTTP client (call on the server's loop before it stops)."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def record_request(self, record: RequestRecord) -> None:
        """Keep a request's record."""
        with self.records_lock:
            self.requests.append(record)

    def record_callbacks(self, records: Iterable[CallbackRecord]) -> None:
        """Keep the records of an upload's callback attempts."""
        with self.records_lock:
            self.callbacks.extend(records)

    def clear_records(self) -> None:
        """Forget the recorded requests and callbacks."""
        with self.records_lock:
            self.requests.clear()
            self.callbacks.clear()
