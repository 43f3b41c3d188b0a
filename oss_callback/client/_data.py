"""What an upload's ``data`` may be: the :data:`Data` type of ``put_object``,
``upload_part`` and ``append_object``.

It names what :func:`~oss_callback.client._body.make_body` accepts, no more and no less, so
that a type checker catches a wrong argument before the request does: bytes-like objects,
``str`` (sent as UTF-8), a binary file object (anything with ``read(n) -> bytes``; seekable
ones are replayable on a retry), or a sync or async iterable of bytes (streamed once,
chunked). ``None`` (where the method allows it) is an empty body.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from typing import Protocol

__all__ = ["Data", "Readable"]


class Readable(Protocol):
    """A binary file object, as far as an upload needs one: ``read(n)`` returning bytes
    (``b""`` at the end). ``seekable()``, ``tell()`` and ``seek()`` are used when present."""

    def read(self, size: int, /) -> bytes: ...


#: An upload's body: bytes-like, ``str`` (UTF-8), a binary file object, or an iterable
#: (sync or async) of bytes.
Data = (
    bytes | bytearray | memoryview | str | Readable | Iterable[bytes] | AsyncIterable[bytes]
)
