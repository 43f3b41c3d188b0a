"""list_objects, copy_object, delete_objects and append_object against the emulator.

Most bodies run for ``AsyncBucket`` and the synchronous ``Bucket`` (the ``api`` fixture),
on asyncio and trio. The emulator's side of each operation (its answers to raw requests)
is checked at the end.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import io
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio.to_thread
import httpx
import pytest
from support.emulator_helpers import error_code, oss_request
from support.facades import Api

from oss_callback import (
    AppendObjectResult,
    AsyncBucket,
    AsyncClient,
    Client,
    CommonPrefix,
    CopyObjectResult,
    DeleteObjectsResult,
    InconsistentError,
    ObjectInfo,
    RequestError,
    RetryPolicy,
    ServiceError,
)
from oss_callback.protocol._crc64 import crc64
from oss_callback.testing import OSSEmulator

KiB = 1024
PART = 100 * KiB


async def listed(api: Api, *args: Any, **kwargs: Any) -> list[Any]:
    """Every entry of ``list_objects``: ``async for``, or a plain ``for`` in a thread."""
    if api.is_async:
        return [entry async for entry in api.bucket.list_objects(*args, **kwargs)]
    return await anyio.to_thread.run_sync(lambda: list(api.bucket.list_objects(*args, **kwargs)))


def operations(emu: OSSEmulator, name: str) -> list[Any]:
    return [r for r in emu.requests if r.operation == name]


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


# --------------------------------------------------------------------------- list_objects


async def test_list_objects_follows_pages_in_key_order(api: Api, oss_emulator: OSSEmulator,
                                                       ) -> None:
    keys = [f"logs/{i:02d}" for i in range(7)] + ["a", "zz/top", "é/x"]
    puts = {k: await api.put_object(k, k.encode() * 3) for k in keys}
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    oss_emulator.clear_records()
    entries = await listed(api, max_keys=3)
    assert [e.key for e in entries] == sorted(keys)
    assert len(operations(oss_emulator, "ListObjectsV2")) == 4  # 10 keys, 3 a page
    for entry in entries:
        assert isinstance(entry, ObjectInfo) and not entry.is_prefix
        assert entry.size == 3 * len(entry.key.encode())
        assert entry.etag == puts[entry.key].etag
        assert entry.last_modified.tzinfo is not None
        assert before <= entry.last_modified <= datetime.now(timezone.utc) + timedelta(seconds=5)
        assert (entry.storage_class, entry.object_type) == ("Standard", "Normal")
    only_logs = await listed(api, "logs/", start_after="logs/04")
    assert [e.key for e in only_logs] == ["logs/05", "logs/06"]


async def test_list_objects_with_a_delimiter_reports_common_prefixes(api: Api) -> None:
    for key in ("a/1", "a/2", "a/b/3", "b", "c/d/e", "c/f", "d-e"):
        await api.put_object(key, b"x")
    entries = await listed(api, delimiter="/", max_keys=1)
    assert [(e.key, e.is_prefix) for e in entries] == [
        ("a/", True), ("b", False), ("c/", True), ("d-e", False)]
    assert entries[0] == CommonPrefix("a/") and entries[0].prefix == "a/"
    inner = await listed(api, "a/", "/")
    assert [(type(e).__name__, e.key) for e in inner] == [
        ("ObjectInfo", "a/1"), ("ObjectInfo", "a/2"), ("CommonPrefix", "a/b/")]
    assert await listed(api, "nothing/") == []


@pytest.mark.parametrize("key", ["sp ace/+plus%25&amp;<x>", "杭州/😀", "tab\there", "ctl\x01\x1f",
                                 " lead", "trail "])
async def test_list_objects_keys_round_trip(api: Api, key: str) -> None:
    await api.put_object(key, b"v")
    assert [e.key for e in await listed(api)] == [key]  # encoding-type=url, decoded
    assert [e.key for e in await listed(api, key[:3])] == [key]


async def test_list_objects_errors_come_from_the_iteration(client: AsyncClient) -> None:
    missing = client.get_bucket("no-such-bucket")
    entries = missing.list_objects()  # no request yet
    with pytest.raises(ServiceError) as info:
        await entries.__anext__()
    assert (info.value.status, info.value.code) == (404, "NoSuchBucket")
    for bad in (0, 1001, True, "5"):
        with pytest.raises(ValueError, match="max_keys"):
            missing.list_objects(max_keys=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prefix"):
        missing.list_objects(prefix=b"a")  # type: ignore[call-overload]


async def test_breaking_out_early_fetches_no_more_and_leaves_nothing(
    bucket: AsyncBucket, oss_emulator: OSSEmulator
) -> None:
    for i in range(10):
        await bucket.put_object(f"k{i}", b"x")
    oss_emulator.clear_records()
    async for entry in bucket.list_objects(max_keys=2):
        assert entry.key == "k0"
        break
    gc.collect()  # a dropped lister has nothing to finalize (filterwarnings=error)
    assert len(operations(oss_emulator, "ListObjectsV2")) == 1


def test_sync_listing_is_a_plain_iterator_run_on_the_loop(oss_emulator: OSSEmulator,
                                                          oss_bucket: str) -> None:
    with Client(oss_emulator.endpoint, oss_emulator.access_key_id,
                oss_emulator.access_key_secret, region=oss_emulator.region,
                retry=RetryPolicy.no_wait()) as client:
        bucket = client.get_bucket(oss_bucket)
        for i in range(9):
            bucket.put_object(f"k{i}", b"x")
        oss_emulator.clear_records()
        entries = bucket.list_objects(max_keys=4)
        assert isinstance(entries, Iterator) and iter(entries) is entries
        assert not operations(oss_emulator, "ListObjectsV2")  # nothing until asked
        first = next(entries)
        assert first.key == "k0"
        assert len(operations(oss_emulator, "ListObjectsV2")) == 1
        threads = threading.active_count()
        for entry in bucket.list_objects(max_keys=2):  # left early
            if entry.key == "k2":
                break
        assert threading.active_count() == threads
        assert [e.key for e in entries] == [f"k{i}" for i in range(1, 9)]  # resumes
        assert len(operations(oss_emulator, "ListObjectsV2")) == 1 + 2 + 2
    with pytest.raises(RuntimeError, match="closed"):
        next(bucket.list_objects())


# --------------------------------------------------------------------------- copy_object


async def test_copy_object_keeps_bytes_and_metadata(api: Api,
                                                    oss_emulator: OSSEmulator) -> None:
    data = os.urandom(5000)
    put = await api.put_object("src.bin", data, headers={
        "Content-Type": "application/x-src", "x-oss-meta-owner": "alice",
        "Cache-Control": "no-cache"})
    result = await api.copy_object("src.bin", "dst/copy.bin")
    assert isinstance(result, CopyObjectResult)
    assert (result.key, result.etag, result.crc64, result.size) == (
        "dst/copy.bin", put.etag, put.crc64, len(data))
    assert result.upload_id is None and result.last_modified is not None
    assert await api.get_object("dst/copy.bin") == data
    head = await api.head_object("dst/copy.bin")
    assert head.content_type == "application/x-src"
    assert head.metadata == {"owner": "alice"}
    assert head.headers["cache-control"] == "no-cache"
    [copy] = operations(oss_emulator, "CopyObject")
    assert copy.headers["x-oss-copy-source"] == f"/{api.name}/src.bin"
    assert copy.headers["x-oss-copy-source-if-match"] == put.etag  # what was looked up
    assert copy.headers["x-oss-metadata-directive"] == "COPY"


async def test_copy_object_replaces_metadata(api: Api) -> None:
    await api.put_object("src", b"data", headers={"x-oss-meta-a": "1"})
    await api.copy_object("src", "dst", metadata={"b": "2"},
                          headers={"Content-Type": "text/plain"})
    head = await api.head_object("dst")
    assert (head.metadata, head.content_type) == ({"b": "2"}, "text/plain")
    await api.copy_object("src", "dst2", metadata_directive="REPLACE")
    assert (await api.head_object("dst2")).metadata == {}
    with pytest.raises(ValueError, match="REPLACE"):
        await api.copy_object("src", "dst3", metadata={"c": "3"}, metadata_directive="COPY")
    with pytest.raises(ValueError, match="REPLACE"):
        await api.copy_object("src", "dst3", metadata_directive="COPY",
                              headers={"x-oss-meta-c": "3"})
    with pytest.raises(ValueError, match="metadata_directive"):
        await api.copy_object("src", "dst3", metadata_directive="MOVE")
    with pytest.raises(ValueError, match="x-oss-copy-source"):
        await api.copy_object("src", "dst3", headers={"x-oss-copy-source": "/b/k"})
    assert not await api.object_exists("dst3")


async def test_copy_onto_itself_updates_metadata_only(api: Api, oss_emulator: OSSEmulator,
                                                      ) -> None:
    put = await api.put_object("k.txt", b"payload", headers={"x-oss-meta-a": "1"})
    files = oss_emulator.head_object(api.name, "k.txt")
    assert files is not None
    await api.copy_object("k.txt", "k.txt", metadata={"b": "2"},
                          headers={"Content-Type": "text/x-new"})
    head = await api.head_object("k.txt")
    assert (head.metadata, head.content_type, head.etag) == ({"b": "2"}, "text/x-new", put.etag)
    after = oss_emulator.head_object(api.name, "k.txt")
    assert after is not None and after.data_file == files.data_file  # no bytes were copied
    # COPY onto itself: OSS would apply the request's (empty) metadata; the SDK sends the
    # current metadata, so it is kept (a storage class change, say, loses nothing).
    await api.copy_object("k.txt", "k.txt", headers={"x-oss-storage-class": "Standard"})
    head = await api.head_object("k.txt")
    assert (head.metadata, head.content_type) == ({"b": "2"}, "text/x-new")
    assert await api.get_object("k.txt") == b"payload"


async def test_copy_between_buckets(client: AsyncClient, oss_emulator: OSSEmulator,
                                    bucket: AsyncBucket) -> None:
    oss_emulator.create_bucket("other-bucket")
    other = client.get_bucket("other-bucket")
    await other.put_object("dir/ü k+y", b"from elsewhere")
    result = await bucket.copy_object("dir/ü k+y", "here", src_bucket="other-bucket")
    assert result.crc64 == crc64(b"from elsewhere")
    assert await bucket.get_object("here") == b"from elsewhere"
    with pytest.raises(ServiceError) as info:
        await bucket.copy_object("k", "x", src_bucket="no-such-bucket")
    assert (info.value.status, info.value.code) == (404, "NoSuchBucket")
    with pytest.raises(ValueError, match="bucket"):
        await bucket.copy_object("k", "x", src_bucket="Bad_Name")


async def test_copy_errors(api: Api, oss_emulator: OSSEmulator) -> None:
    with pytest.raises(ServiceError) as info:
        await api.copy_object("missing", "dst")
    assert (info.value.status, info.value.code) == (404, "NoSuchKey")
    await api.put_object("src", b"1")
    await api.put_object("dst", b"old")
    with pytest.raises(ServiceError) as info:
        await api.copy_object("src", "dst", headers={"x-oss-forbid-overwrite": "true"})
    assert (info.value.status, info.value.code) == (409, "FileAlreadyExists")
    with pytest.raises(ServiceError) as info:  # the source changed since it was looked up
        await api.copy_object("src", "dst", headers={"x-oss-copy-source-if-match": "0" * 32})
    assert (info.value.status, info.value.code) == (412, "PreconditionFailed")
    assert await api.get_object("dst") == b"old"
    oss_emulator.faults.add(operation="CopyObject", corrupt_crc=True)
    with pytest.raises(InconsistentError) as crc_info:
        await api.copy_object("src", "dst")
    assert crc_info.value.client_crc == crc64(b"1")


async def test_multipart_copy_for_large_sources(api: Api, oss_emulator: OSSEmulator) -> None:
    data = os.urandom(3 * PART + 12345)
    put = await api.put_object("big/src", data, headers={
        "Content-Type": "video/mp4", "x-oss-meta-kind": "clip"})
    result = await api.copy_object("big/src", "big/dst", multipart_threshold=len(data) - 1,
                                   part_size=PART, concurrency=3)
    assert result.upload_id is not None
    assert result.crc64 == put.crc64 == crc64(data)  # checked against the source's
    assert result.etag.endswith("-4") and result.size == len(data)
    assert await api.get_object("big/dst") == data
    head = await api.head_object("big/dst")
    assert head.object_type == "Multipart"
    assert (head.content_type, head.metadata) == ("video/mp4", {"kind": "clip"})  # COPY
    parts = operations(oss_emulator, "UploadPartCopy")
    assert sorted(r.headers["x-oss-copy-source-range"] for r in parts) == sorted(
        f"bytes={s}-{min(s + PART, len(data)) - 1}" for s in range(0, len(data), PART))
    assert {r.headers["x-oss-copy-source-if-match"] for r in parts} == {put.etag}
    assert oss_emulator.list_uploads() == []
    replaced = await api.copy_object("big/src", "big/dst2", multipart_threshold=0,
                                     part_size=PART, metadata={"new": "yes"})
    assert replaced.upload_id is not None
    assert (await api.head_object("big/dst2")).metadata == {"new": "yes"}


async def test_failed_multipart_copy_is_aborted(api: Api, oss_emulator: OSSEmulator) -> None:
    data = os.urandom(2 * PART + 1)
    await api.put_object("src", data)
    oss_emulator.faults.add(operation="UploadPartCopy", nth=2, status=500, times=None)
    with pytest.raises(ServiceError) as info:
        await api.copy_object("src", "dst", multipart_threshold=0, part_size=PART,
                              concurrency=1)
    assert info.value.status == 500
    assert [r.operation for r in oss_emulator.requests][-1] == "AbortMultipartUpload"
    assert oss_emulator.list_uploads() == []  # aborted: no parts left behind
    assert not await api.object_exists("dst")


# --------------------------------------------------------------------------- delete_objects


async def test_delete_objects_batches_by_a_thousand(api: Api, oss_emulator: OSSEmulator) -> None:
    existing = [f"k/{i:04d}" for i in range(0, 2345, 97)]
    for key in existing:
        await api.put_object(key, b"x")
    await api.put_object("keep", b"x")
    keys = [f"k/{i:04d}" for i in range(2345)]  # most never existed: deleted all the same
    oss_emulator.clear_records()
    result = await api.delete_objects(keys)
    assert isinstance(result, DeleteObjectsResult)
    assert result.deleted == tuple(keys) and result.errors == ()
    batches = operations(oss_emulator, "DeleteMultipleObjects")
    assert [r.status for r in batches] == [200, 200, 200]
    assert all(r.headers["content-md5"] for r in batches)
    assert oss_emulator.list_keys(api.name) == ["keep"]


async def test_delete_objects_verbose_and_awkward_keys(api: Api, oss_emulator: OSSEmulator,
                                                       ) -> None:
    keys = ["a<b>&'\"", "sp ace", "杭州/😀", "ctl\x01key", " lead", "tab\tkey"]
    for key in keys:
        await api.put_object(key, b"x")
    await api.put_object("keep", b"x")
    oss_emulator.clear_records()
    result = await api.delete_objects([*keys, "never-existed"], quiet=False)
    assert sorted(result.deleted) == sorted([*keys, "never-existed"])
    assert oss_emulator.list_keys(api.name) == ["keep"]
    # XML 1.0 can't carry \x01: that key went by DeleteObject, the rest in one batch
    assert [r.operation for r in oss_emulator.requests] == [
        "DeleteMultipleObjects", "DeleteObject"]


async def test_delete_objects_arguments(api: Api, oss_emulator: OSSEmulator) -> None:
    assert await api.delete_objects([]) == DeleteObjectsResult()
    with pytest.raises(TypeError, match="single key"):
        await api.delete_objects("abc")
    with pytest.raises(ValueError, match="empty"):
        await api.delete_objects(["ok", ""])
    assert operations(oss_emulator, "DeleteMultipleObjects") == []
    await api.put_object("g1", b"x")
    result = await api.delete_objects(k for k in ["g1", "g2"])  # any iterable
    assert result.deleted == ("g1", "g2")


# --------------------------------------------------------------------------- append_object


async def test_append_chains_positions_and_crc64(api: Api, oss_emulator: OSSEmulator) -> None:
    first = await api.append_object("log.txt", 0, b"hello ",
                                    headers={"Content-Type": "text/plain",
                                             "x-oss-meta-src": "app"})
    assert isinstance(first, AppendObjectResult)
    assert (first.next_position, first.crc64) == (6, crc64(b"hello "))
    second = await api.append_object("log.txt", first.next_position, "wörld",
                                     init_crc=first.crc64)
    assert second.next_position == 6 + len("wörld".encode())
    assert second.crc64 == crc64("hello wörld".encode())
    oss_emulator.clear_records()
    third = await api.append_object("log.txt", second.next_position, io.BytesIO(b"!"))
    assert [r.operation for r in oss_emulator.requests] == ["HeadObject", "AppendObject"]
    whole = "hello wörld!".encode()
    assert (third.next_position, third.crc64, third.recovered) == (len(whole), crc64(whole),
                                                                   False)
    assert await api.get_object("log.txt") == whole
    head = await api.head_object("log.txt")
    assert (head.object_type, head.size, head.crc64) == ("Appendable", len(whole), crc64(whole))
    assert head.headers["x-oss-next-append-position"] == str(len(whole))
    assert (head.content_type, head.metadata) == ("text/plain", {"src": "app"})
    [entry] = await listed(api)
    assert entry.object_type == "Appendable"
    same = await api.append_object("log.txt", len(whole), b"", init_crc=third.crc64)
    assert (same.next_position, same.crc64) == (len(whole), crc64(whole))


async def test_append_errors(api: Api) -> None:
    first = await api.append_object("a", 0, b"12345")
    with pytest.raises(ServiceError) as info:
        await api.append_object("a", 3, b"x", init_crc=first.crc64)
    assert (info.value.status, info.value.code) == (409, "PositionNotEqualToLength")
    with pytest.raises(ServiceError) as info:
        await api.append_object("a", 0, b"x")
    assert info.value.code == "PositionNotEqualToLength"
    await api.put_object("normal", b"x")
    with pytest.raises(ServiceError) as info:
        await api.append_object("normal", 1, b"x")
    assert (info.value.status, info.value.code) == (409, "ObjectNotAppendable")
    with pytest.raises(ServiceError) as info:
        await api.append_object("new", 5, b"x")
    assert info.value.code == "PositionNotEqualToLength"
    with pytest.raises(InconsistentError):  # a wrong previous CRC-64 can't chain to OSS's
        await api.append_object("a", 5, b"678", init_crc=(first.crc64 or 0) ^ 1)
    assert await api.get_object("a") == b"12345678"  # appended, but flagged
    for position, init in ((-1, None), (1.5, None), (True, None), (0, 7), (3, -1), (3, 1 << 64)):
        with pytest.raises(ValueError, match=r"position|init_crc"):
            await api.append_object("a", position, b"x", init_crc=init)


async def test_append_crc_mismatch_is_not_retried(api: Api, oss_emulator: OSSEmulator) -> None:
    oss_emulator.faults.add(operation="AppendObject", corrupt_crc=True)
    with pytest.raises(InconsistentError):
        await api.append_object("a", 0, b"data")
    assert len(operations(oss_emulator, "AppendObject")) == 1
    assert await api.get_object("a") == b"data"


class _Flaky(httpx.AsyncBaseTransport):
    """The real transport, except that chosen AppendObject requests fail: before reaching
    the emulator (``before``), or after it answered (``lose``: the answer is lost)."""

    def __init__(self, before: Callable[[int], bool], lose: Callable[[int], bool]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.before, self.lose = before, lose
        self.appends = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if "append" not in request.url.params:
            return await self.inner.handle_async_request(request)
        self.appends += 1
        if self.before(self.appends):
            raise httpx.ConnectError("refused", request=request)
        response = await self.inner.handle_async_request(request)
        if self.lose(self.appends):
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("connection reset", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextlib.asynccontextmanager
async def _flaky_bucket(emu: OSSEmulator, transport: _Flaky) -> AsyncIterator[AsyncBucket]:
    async with AsyncClient(emu.endpoint, emu.access_key_id, emu.access_key_secret,
                           region=emu.region, retry=RetryPolicy.no_wait(),
                           transport=transport) as client:
        yield client.get_bucket("test-bucket")


async def test_append_retry_after_a_lost_answer_does_not_append_twice(
    oss_emulator: OSSEmulator, oss_bucket: str
) -> None:
    transport = _Flaky(before=lambda n: False, lose=lambda n: n == 2)
    async with _flaky_bucket(oss_emulator, transport) as bucket:
        first = await bucket.append_object("log", 0, b"one,")
        second = await bucket.append_object("log", 4, b"two,", init_crc=first.crc64)
        assert second.recovered is True  # the retry found its own bytes already there
        assert (second.next_position, second.crc64) == (8, crc64(b"one,two,"))
        assert oss_emulator.get_object(oss_bucket, "log") == b"one,two,"
        assert [r.status for r in operations(oss_emulator, "AppendObject")] == [200, 200, 409]


async def test_append_retries_what_never_arrived(oss_emulator: OSSEmulator,
                                                 oss_bucket: str) -> None:
    transport = _Flaky(before=lambda n: n == 1, lose=lambda n: n == 3)
    async with _flaky_bucket(oss_emulator, transport) as bucket:
        result = await bucket.append_object("log", 0, b"abc")
        assert (result.next_position, result.recovered) == (3, False)

        def chunks() -> Iterator[bytes]:
            yield b"d"

        with pytest.raises(RequestError):  # an iterable can't be sent again: no retry
            await bucket.append_object("log", 3, chunks(), init_crc=result.crc64)
        assert oss_emulator.get_object(oss_bucket, "log") == b"abcd"


# --------------------------------------------------------------------------- the emulator


def test_emulator_copy_object_and_part_copy_answers(oss_emulator: OSSEmulator,
                                                    oss_bucket: str) -> None:
    data = os.urandom(300 * KiB)
    oss_request(oss_emulator, "PUT", oss_bucket, "s p/ü", body=data)
    r = oss_request(oss_emulator, "PUT", oss_bucket, "dst",
                    headers={"x-oss-copy-source": f"/{oss_bucket}/s%20p%2F%C3%BC"})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{hashlib.md5(data).hexdigest().upper()}"'
    assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(data))
    assert b"<CopyObjectResult>" in r.content and b"<LastModified>" in r.content
    for source, status, code in [
        ("nonsense", 400, "InvalidArgument"),
        (f"/{oss_bucket}/missing", 404, "NoSuchKey"),
        (f"/{oss_bucket}/dst?versionId=CAEQ", 404, "NoSuchVersion"),
    ]:
        r = oss_request(oss_emulator, "PUT", oss_bucket, "x", headers={"x-oss-copy-source": source})
        assert (r.status_code, error_code(r)) == (status, code), source
    r = oss_request(oss_emulator, "PUT", oss_bucket, "x", headers={
        "x-oss-copy-source": f"/{oss_bucket}/dst", "x-oss-copy-source-if-none-match":
        hashlib.md5(data).hexdigest().upper()})
    assert r.status_code == 304
    r = oss_request(oss_emulator, "PUT", oss_bucket, "x", headers={
        "x-oss-copy-source": f"/{oss_bucket}/dst",
        "x-oss-copy-source-if-unmodified-since": "Thu, 01 Jan 1970 00:00:00 GMT"})
    assert (r.status_code, error_code(r)) == (412, "PreconditionFailed")
    init = oss_request(oss_emulator, "POST", oss_bucket, "mp", query=[("uploads", "")])
    upload_id = init.text.split("<UploadId>")[1].split("<")[0]
    r = oss_request(oss_emulator, "PUT", oss_bucket, "mp",
                    query=[("partNumber", "1"), ("uploadId", upload_id)],
                    headers={"x-oss-copy-source": f"/{oss_bucket}/dst",
                             "x-oss-copy-source-range": "bytes=10-109"})
    assert r.status_code == 200, r.text
    assert b"<CopyPartResult>" in r.content
    assert r.headers["etag"] == f'"{hashlib.md5(data[10:110]).hexdigest().upper()}"'
    for bad, status in (("bytes=5-1", 400), ("bytes=0-999999999", 416), ("10-20", 400)):
        r = oss_request(oss_emulator, "PUT", oss_bucket, "mp",
                        query=[("partNumber", "2"), ("uploadId", upload_id)],
                        headers={"x-oss-copy-source": f"/{oss_bucket}/dst",
                                 "x-oss-copy-source-range": bad})
        assert r.status_code == status, bad


def test_emulator_copy_object_size_limit(oss_emulator: OSSEmulator, oss_bucket: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from oss_callback.testing import _copy_append

    oss_request(oss_emulator, "PUT", oss_bucket, "src", body=b"0123456789")
    monkeypatch.setattr(_copy_append, "MAX_COPY_SIZE", 9)
    r = oss_request(oss_emulator, "PUT", oss_bucket, "dst",
                    headers={"x-oss-copy-source": f"/{oss_bucket}/src"})
    assert (r.status_code, error_code(r)) == (400, "EntityTooLarge")
    r = oss_request(oss_emulator, "PUT", oss_bucket, "src",  # onto itself: no bytes copied
                    headers={"x-oss-copy-source": f"/{oss_bucket}/src"})
    assert r.status_code == 200


def test_emulator_append_answers(oss_emulator: OSSEmulator, oss_bucket: str) -> None:
    def append(position: int | str, body: bytes) -> httpx.Response:
        return oss_request(oss_emulator, "POST", oss_bucket, "ap",
                           query=[("append", ""), ("position", str(position))], body=body)

    r = append(0, b"abc")
    assert r.status_code == 200
    assert (r.headers["x-oss-next-append-position"], r.headers["x-oss-hash-crc64ecma"]) == (
        "3", str(crc64(b"abc")))
    r = append(1, b"x")
    assert (r.status_code, error_code(r)) == (409, "PositionNotEqualToLength")
    assert r.headers["x-oss-next-append-position"] == "3"
    r = append("x", b"x")
    assert (r.status_code, error_code(r)) == (400, "InvalidArgument")
    r = append(3, b"def")
    assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(b"abcdef"))
    r = oss_request(oss_emulator, "POST", oss_bucket, "ap",
                    query=[("append", ""), ("position", "6")], body=b"g",
                    headers={"Content-MD5": md5_b64(b"other")})
    assert (r.status_code, error_code(r)) == (400, "InvalidDigest")
    assert oss_emulator.get_object(oss_bucket, "ap") == b"abcdef"
    oss_request(oss_emulator, "PUT", oss_bucket, "ap", body=b"normal now")  # overwrites
    assert error_code(append(10, b"x")) == "ObjectNotAppendable"


def test_emulator_delete_multiple_objects_needs_content_md5(oss_emulator: OSSEmulator,
                                                           oss_bucket: str) -> None:
    oss_request(oss_emulator, "PUT", oss_bucket, "k", body=b"x")
    body = b"<Delete><Quiet>true</Quiet><Object><Key>k</Key></Object></Delete>"
    r = oss_request(oss_emulator, "POST", oss_bucket, query=[("delete", "")], body=body)
    assert (r.status_code, error_code(r)) == (400, "InvalidRequest")
    assert oss_emulator.list_keys(oss_bucket) == ["k"]
    r = oss_request(oss_emulator, "POST", oss_bucket, query=[("delete", "")], body=body,
                    headers={"Content-MD5": md5_b64(body + b" ")})
    assert (r.status_code, error_code(r)) == (400, "InvalidDigest")
    r = oss_request(oss_emulator, "POST", oss_bucket, query=[("delete", "")], body=body,
                    headers={"Content-MD5": md5_b64(body)})
    assert r.status_code == 200 and b"<Deleted>" not in r.content  # quiet
    assert oss_emulator.list_keys(oss_bucket) == []


# --------------------------------------------------------------------------- the README


async def test_readme_section_runs(bucket: AsyncBucket, oss_emulator: OSSEmulator) -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Listing, copying, deleting", 1)[1]
    code = section.split("```py\n", 1)[1].split("```", 1)[0]
    await bucket.put_object("uploads/a.mp4", b"video", headers={"x-oss-meta-by": "me"})
    for i in range(3):
        await bucket.put_object(f"tmp/{i}", b"x")
    namespace: dict[str, Any] = {}
    body = "".join(f"    {line}\n" for line in code.splitlines())
    exec(f"async def readme(bucket):\n{body}", namespace)  # our own README
    await namespace["readme"](bucket)
    head = await bucket.head_object("archive/a.mp4")
    assert (head.metadata, head.content_type) == ({"state": "archived"}, "video/mp4")
    assert [e.key async for e in bucket.list_objects("tmp/")] == []
    assert await bucket.get_object("logs/today.txt") == b"started\ndone\n"
