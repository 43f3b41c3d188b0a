"""One test body, two APIs: ``Api`` awaits AsyncBucket methods directly and runs the
synchronous Bucket's methods in a worker thread (as a script would call them)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread


class Api:
    """Awaitable view of a bucket: ``await api.put_object(...)`` for either facade."""

    def __init__(self, bucket: Any, *, is_async: bool) -> None:
        self.bucket = bucket
        self.is_async = is_async

    @property
    def name(self) -> str:
        return str(self.bucket.name)

    def __getattr__(self, method: str) -> Callable[..., Awaitable[Any]]:
        target = getattr(self.bucket, method)
        if self.is_async:
            return target  # type: ignore[no-any-return]

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await anyio.to_thread.run_sync(functools.partial(target, *args, **kwargs))

        return call
