"""Shared fixtures: emulator-backed buckets through both facades (the emulator and
callback receiver fixtures come from the package's pytest plugin)."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support.facades import Api

from oss_callback import AsyncBucket, AsyncClient, RetryPolicy

BACKENDS = ("asyncio", "trio")


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts a background job (`cmd &` without job control, nohup) with SIGINT
    # ignored, and Python then keeps it ignored: the tests that press Ctrl-C (a SIGINT to
    # the main thread) would wait forever. Give them what an interactive run has.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend", action="append", choices=BACKENDS, default=None,
        help="run async tests on this event loop only (repeatable; default: asyncio and trio)",
    )


@pytest.fixture(scope="module", params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on each event loop anyio supports (anyio's pytest plugin)."""
    backend: str = request.param
    return backend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    chosen = config.getoption("backend")
    if not chosen:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("anyio_backend") if callspec else None
        (drop if backend is not None and backend not in chosen else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


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
