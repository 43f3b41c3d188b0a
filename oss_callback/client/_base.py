"""What every family of bucket operations stands on: :class:`BucketBase` (the bucket's
name, and the client whose session sends its requests) and :func:`merge_headers`.

:class:`~oss_callback.AsyncBucket` is one class composed of mixins, one per family of
operations, each in a module of its own: ``_objects`` (put, get, head, exists, delete),
``_multipart`` (the multipart primitives), ``_presigned`` (presigned URLs, POST policies),
``_listing``, ``_batch_delete``, ``_copy``, ``_append`` and ``_resumable``. Mixins rather
than functions that AsyncBucket's methods delegate to: an operation's signature and
docstring are the API (the sync facade copies them), and a mixin method is written once,
beside the code it documents, where a delegating method would repeat every signature and
keep the documentation apart from the code. A family that uses another's operations
inherits that family (``CopyMixin(MultipartMixin)``), so those calls are type-checked and
no family imports AsyncBucket, which imports them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from oss_callback.client._http import Session
from oss_callback.protocol._callback import Callback

__all__ = ["BucketBase", "ClientLike", "merge_headers"]


class ClientLike(Protocol):
    """What a bucket needs of its client; :class:`~oss_callback.AsyncClient` is one (a
    protocol: AsyncClient is defined with AsyncBucket, which imports every family)."""

    @property
    def endpoint(self) -> str: ...

    def _check_open(self) -> Session: ...


class BucketBase:
    """A bucket's ``name`` and ``client`` (AsyncBucket sets both), and the client's session
    for the bucket's requests (``RuntimeError`` once the client is closed)."""

    name: str
    client: ClientLike

    @property
    def _session(self) -> Session:
        return self.client._check_open()


def merge_headers(
    headers: Mapping[str, str] | None, callback: Callback | None
) -> dict[str, str]:
    merged = {k.lower(): str(v) for k, v in (headers or {}).items()}
    if callback is not None:
        if not isinstance(callback, Callback):
            raise TypeError(
                f"callback must be an oss_callback.Callback, got {type(callback).__name__}"
            )
        if "x-oss-callback" in merged:
            raise ValueError("pass the callback as callback=..., not as an x-oss-callback header")
        merged.update(callback.to_headers())
    return merged
