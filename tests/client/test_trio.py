"""The async API on trio: the same httpx client carries every request, file reads happen in
worker threads, and progress is delivered on trio's thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from oss_callback import AsyncClient, RetryPolicy

trio = pytest.importorskip("trio")


def make_client(emu: Any) -> AsyncClient:
    return AsyncClient(emu.endpoint, emu.access_key_id, emu.access_key_secret,
                       region=emu.region, retry=RetryPolicy.no_wait())


def test_bytes_requests_go_through_httpx_on_trio(oss_emulator: Any) -> None:
    trio.run(_bytes_requests, oss_emulator)
    assert oss_emulator.get_object("trio-bucket", "k") == b"hello trio"


async def _bytes_requests(oss_emulator: Any) -> None:
    import sniffio

    assert sniffio.current_async_library() == "trio"
    oss_emulator.create_bucket("trio-bucket")
    async with make_client(oss_emulator) as client:
        bucket = client.get_bucket("trio-bucket")
        result = await bucket.put_object("k", b"hello trio")
        assert await bucket.get_object("k") == b"hello trio"
        assert (await bucket.head_object("k")).etag == result.etag
        assert not client.http_client.is_closed
    assert client.http_client.is_closed  # the SDK-built client is closed with it


def test_file_uploads_and_progress_on_trio(oss_emulator: Any, tmp_path: Path) -> None:
    trio.run(_file_uploads, oss_emulator, tmp_path)


async def _file_uploads(oss_emulator: Any, tmp_path: Path) -> None:
    oss_emulator.create_bucket("trio-bucket")
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 4096 * 3 + b"tail")  # 3 MiB + 4 bytes
    size = src.stat().st_size
    trio_thread = threading.get_ident()
    seen: list[tuple[int, int | None, int]] = []
    async with make_client(oss_emulator) as client:
        bucket = client.get_bucket("trio-bucket")
        await bucket.put_object("put.bin", file=src,
                                progress=lambda d, t: seen.append((d, t, threading.get_ident())))
        result = await bucket.resumable_upload(
            "multi.bin", src, part_size=1024 * 1024, concurrency=2,
            checkpoint_file=tmp_path / "ckpt.json")
    assert seen[-1][:2] == (size, size)
    assert {tid for _, _, tid in seen} == {trio_thread}
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    assert result.size == size
    assert oss_emulator.get_object("trio-bucket", "put.bin") == src.read_bytes()
    assert oss_emulator.get_object("trio-bucket", "multi.bin") == src.read_bytes()
    assert not (tmp_path / "ckpt.json").exists()
