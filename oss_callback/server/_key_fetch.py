"""Fetching a public key: one implementation, driven by an async and a blocking HTTP client.

:class:`_KeyFetch` is the fetch without the I/O: the HTTP client's options (no redirects, a
redirect could leave the allowed hosts; the SDK's User-Agent), the check of the response
(``200``, a declared length within ``max_key_size``), the size cap and the deadline while the
body arrives, loading the PEM, and turning whatever goes wrong into a
:class:`~oss_callback.server.PublicKeyFetchError` (a failed fetch is a refusal, not a crash).
Two thin shells only move the bytes: :func:`_fetch_key_async` (``httpx.AsyncClient``, the
whole fetch also under ``anyio.fail_after``) for ``verify``, :func:`_fetch_key_sync`
(``httpx.Client``) for ``verify_sync``.

Whether a URL may be fetched is decided before (:mod:`._key_policy`); whether it needs to
be, and by which of several concurrent callbacks, by :mod:`._keys`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import httpx

from oss_callback._version import __version__
from oss_callback.client._http import closing_iter
from oss_callback.server._errors import PublicKeyFetchError
from oss_callback.server._rsa import _load_fetched_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger("oss_callback.server")


@attrs.define
class _KeyFetch:
    """One fetch of the key at ``url``, everything but the I/O (use each one once).

    A shell calls :meth:`start` for the HTTP client's options, GETs ``url`` with them,
    hands the response to :meth:`check` and each piece of its body to :meth:`feed`, then
    takes :meth:`key`; any other exception on the way becomes :meth:`failure`.
    """

    url: str
    max_size: int
    timeout: float
    _data: bytearray = attrs.field(init=False, factory=bytearray)
    _deadline: float = attrs.field(init=False, default=0.0)

    def start(self) -> dict[str, Any]:
        """Start the clock; the options of the HTTP client to fetch with."""
        logger.debug("fetching OSS callback public key from %s", self.url)
        self._deadline = time.monotonic() + self.timeout
        return {
            "timeout": self.timeout,
            "follow_redirects": False,  # a redirect could leave the allowed hosts
            "headers": {"User-Agent": f"oss-callback/{__version__}"},
        }

    def check(self, response: httpx.Response) -> None:
        """Refuse an answer that is not ``200``, or declares more than ``max_size`` bytes."""
        if response.status_code != 200:
            raise PublicKeyFetchError(
                f"fetching the public key from {self.url!r} got HTTP {response.status_code}",
                reason="key_fetch_failed",
            )
        length = response.headers.get("content-length", "")
        if (length.isascii() and length.isdigit()) and int(length) > self.max_size:
            raise self._too_large()

    def feed(self, chunk: bytes) -> None:
        """Take the next piece of the body: over ``max_size`` or past the deadline, refuse."""
        self._data += chunk
        if len(self._data) > self.max_size:
            raise self._too_large()
        if time.monotonic() > self._deadline:
            raise TimeoutError

    def key(self) -> rsa.RSAPublicKey:
        """The RSA public key the body holds (``"key_invalid"`` when it holds none)."""
        return _load_fetched_key(self.url, bytes(self._data))

    def failure(self, exc: Exception) -> PublicKeyFetchError:
        """The refusal to raise (from ``exc``) for anything else that went wrong."""
        if isinstance(exc, TimeoutError):
            return PublicKeyFetchError(
                f"fetching the public key from {self.url!r} timed out after {self.timeout} s",
                reason="key_fetch_failed",
            )
        return PublicKeyFetchError(
            f"fetching the public key from {self.url!r} failed: {type(exc).__name__}",
            reason="key_fetch_failed",
        )

    def _too_large(self) -> PublicKeyFetchError:
        return PublicKeyFetchError(
            f"the answer from {self.url!r} is bigger than max_key_size ({self.max_size} bytes)",
            reason="key_too_large",
        )


async def _fetch_key_async(fetch: _KeyFetch) -> rsa.RSAPublicKey:
    """Run ``fetch`` with an ``httpx.AsyncClient``, all of it within ``fetch.timeout``."""
    try:
        with anyio.fail_after(fetch.timeout):
            async with (
                httpx.AsyncClient(**fetch.start()) as client,
                client.stream("GET", fetch.url) as response,
            ):
                fetch.check(response)
                async with closing_iter(response.aiter_bytes()) as chunks:
                    async for chunk in chunks:
                        fetch.feed(chunk)
        return fetch.key()
    except PublicKeyFetchError:
        raise
    except Exception as exc:  # any fetch failure is a refusal, not a crash
        raise fetch.failure(exc) from exc


def _fetch_key_sync(fetch: _KeyFetch) -> rsa.RSAPublicKey:
    """Run ``fetch`` with a blocking ``httpx.Client`` (the body read within the deadline)."""
    try:
        with (
            httpx.Client(**fetch.start()) as client,
            client.stream("GET", fetch.url) as response,
        ):
            fetch.check(response)
            for chunk in response.iter_bytes():
                fetch.feed(chunk)
        return fetch.key()
    except PublicKeyFetchError:
        raise
    except Exception as exc:  # any fetch failure is a refusal, not a crash
        raise fetch.failure(exc) from exc
