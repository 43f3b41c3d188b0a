"""Shared fixtures: a real HTTP callback receiver, emulator-backed buckets, both facades."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest
from facades import Api
from helpers import CallbackReceiver, _make_handler

from oss_callback import AsyncBucket, AsyncClient, RetryPolicy


@pytest.fixture
def callback_server() -> Iterator[CallbackReceiver]:
    """A callback receiver: ``.url``, ``.received``, and ``.status/.reply/.delay`` to tweak."""
    box: list[CallbackReceiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(box))
    server.daemon_threads = True
    receiver = CallbackReceiver(server=server)
    box.append(receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def bucket_name() -> str:
    return "test-bucket"


@pytest.fixture
async def client(oss_emulator: Any) -> AsyncIterator[AsyncClient]:
    """An AsyncClient on the emulator (V4, no retry sleeps)."""
    async with AsyncClient(
        oss_emulator.endpoint,
        oss_emulator.access_key_id,
        oss_emulator.access_key_secret,
        region=oss_emulator.region,
        retry=RetryPolicy.no_wait(),
    ) as c:
        yield c


@pytest.fixture
def bucket(client: AsyncClient, oss_emulator: Any, bucket_name: str) -> AsyncBucket:
    """An AsyncBucket on the emulator, created empty."""
    oss_emulator.create_bucket(bucket_name)
    return client.get_bucket(bucket_name)


@pytest.fixture(params=["async", "sync"])
async def api(request: pytest.FixtureRequest, oss_emulator: Any, bucket_name: str,
              bucket: AsyncBucket) -> AsyncIterator[Api]:
    """The same bucket through ``AsyncBucket`` or the synchronous ``Bucket`` facade."""
    if request.param == "async":
        yield Api(bucket, is_async=True)
        return
    import oss_callback

    if not hasattr(oss_callback, "Client"):
        pytest.skip("the synchronous facade is not available")
    sync_client = oss_callback.Client(
        oss_emulator.endpoint, oss_emulator.access_key_id, oss_emulator.access_key_secret,
        region=oss_emulator.region, retry=RetryPolicy.no_wait(),
    )
    try:
        yield Api(sync_client.get_bucket(bucket_name), is_async=False)
    finally:
        sync_client.close()
