"""On-disk storage for the emulator: buckets, objects and multipart uploads.

Layout under the data directory (nothing is ever named after an object key, so any key,
``../x``, ``/etc/passwd``, 1023 bytes of anything, stays inside)::

    buckets/<bucket>.json              bucket marker (bucket names are validated first)
    objects/<h[:2]>/<h>.json           metadata sidecar, h = sha256(bucket NUL key)
    objects/<h[:2]>/<h>-<nonce>.data   the bytes (a new file per write; the sidecar names it)
    uploads/<upload id>/upload.json    a multipart upload in progress
    uploads/<upload id>/<n>-<nonce>.part / <n>.json
    tmp/                               bodies being received

An in-memory index mirrors the sidecars (and is rebuilt from them at start), so reads and
listings never touch the metadata files.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from .._crc64 import crc64, crc64_combine

__all__ = ["BodySink", "PartInfo", "Store", "StoredObject", "Upload"]

_FLUSH_BYTES = 1 << 20
_MAX_IN_FLIGHT = 8  # batches per body: bounds memory at ~8 MiB per upload
_COPY_BUFFER = 1 << 20


@attrs.frozen(kw_only=True)
class StoredObject:
    """An object's metadata.

    Attributes:
        bucket: The bucket.
        key: The object key.
        size: Size in bytes.
        etag: The ETag without quotes (upper-case hex MD5, or ``<hex>-<N>`` for multipart).
        crc64: The CRC-64/ECMA-182 of the content (``x-oss-hash-crc64ecma``).
        content_md5: Base64 MD5 of the content (``None`` for multipart objects).
        last_modified: Unix time of the last write.
        content_type: The stored ``Content-Type``.
        metadata: ``x-oss-meta-*`` headers, lower-case names.
        headers: Other stored headers (``cache-control``, ``content-disposition``, ...).
        object_type: ``"Normal"`` or ``"Multipart"``.
        data_file: The data file's path relative to the data directory.
    """

    bucket: str
    key: str
    size: int
    etag: str
    crc64: int
    content_md5: str | None
    last_modified: float
    content_type: str
    metadata: Mapping[str, str]
    headers: Mapping[str, str]
    object_type: str
    data_file: str


@attrs.frozen(kw_only=True)
class PartInfo:
    """One uploaded part of a multipart upload."""

    number: int
    etag: str
    md5: bytes
    size: int
    crc64: int
    last_modified: float
    data_file: str


@attrs.define(kw_only=True)
class Upload:
    """A multipart upload in progress."""

    upload_id: str
    bucket: str
    key: str
    initiated: float
    content_type: str
    metadata: dict[str, str]
    headers: dict[str, str]
    parts: dict[int, PartInfo] = attrs.field(factory=dict)
    completing: bool = False


def _object_hash(bucket: str, key: str) -> str:
    return hashlib.sha256(f"{bucket}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


class BodySink:
    """Streams a request body to a temporary file, hashing MD5 and CRC-64 on the way.

    Chunks are batched to about 1 MiB.  Each batch is written (``pwrite`` at its offset)
    and hashed (in order, chained after the previous batch) on worker threads, while the
    event loop goes on receiving: up to ``_MAX_IN_FLIGHT`` batches are in flight per
    body, so the socket keeps flowing during hashing (hashlib, fastcrc and file writes all
    release the GIL) and memory stays bounded.  The loop never blocks on the disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._md5 = hashlib.md5()  # noqa: S324 - OSS's ETag/Content-MD5 are MD5
        self._crc = 0
        self.size = 0
        self._offset = 0
        self._buffer = bytearray()
        self._hash_tail: asyncio.Future[None] | None = None
        self._in_flight: collections.deque[asyncio.Future[Any]] = collections.deque()

    def _hash(self, data: bytes | bytearray) -> None:
        self._md5.update(data)
        self._crc = crc64(data, self._crc)

    def _write_at(self, data: bytes | bytearray, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    async def _hash_after(self, previous: asyncio.Future[None] | None, data: bytearray) -> None:
        if previous is not None:
            await previous
        await asyncio.get_running_loop().run_in_executor(None, self._hash, data)

    async def write(self, chunk: bytes) -> None:
        """Add a chunk of the body."""
        self.size += len(chunk)
        self._buffer += chunk
        if len(self._buffer) >= _FLUSH_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        data, self._buffer = self._buffer, bytearray()
        offset, self._offset = self._offset, self._offset + len(data)
        loop = asyncio.get_running_loop()
        self._hash_tail = asyncio.ensure_future(self._hash_after(self._hash_tail, data))
        written = loop.run_in_executor(None, self._write_at, data, offset)
        self._in_flight.append(asyncio.gather(self._hash_tail, written))
        while len(self._in_flight) > _MAX_IN_FLIGHT:
            await self._in_flight.popleft()

    async def finish(self) -> tuple[int, bytes, int]:
        """Write what is left and close the file.

        Returns:
            ``(size, md5 digest, crc64)``.
        """
        try:
            if not self._in_flight:  # small body: not worth a thread hop
                self._hash(self._buffer)
                self._write_at(self._buffer, self._offset)
            else:
                await self._flush()
                while self._in_flight:
                    await self._in_flight.popleft()
        finally:
            os.close(self._fd)
        return self.size, self._md5.digest(), self._crc

    async def abort(self) -> None:
        """Discard the body and delete the file."""
        try:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        finally:
            os.close(self._fd)
            _unlink(self.path)


class Store:
    """Buckets, objects and uploads under one data directory (thread-safe)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        self.buckets: dict[str, float] = {}
        self.objects: dict[str, dict[str, StoredObject]] = {}
        self.uploads: dict[str, Upload] = {}
        for sub in ("buckets", "objects", "uploads", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._load()

    # ------------------------------------------------------------------ loading / reset

    def _load(self) -> None:
        for marker in (self.root / "buckets").glob("*.json"):
            info = json.loads(marker.read_text(encoding="utf-8"))
            self.buckets[info["name"]] = info["created"]
            self.objects.setdefault(info["name"], {})
        for sidecar in (self.root / "objects").glob("*/*.json"):
            obj = StoredObject(**json.loads(sidecar.read_text(encoding="utf-8")))
            if obj.bucket in self.objects:
                self.objects[obj.bucket][obj.key] = obj
        for upload_json in (self.root / "uploads").glob("*/upload.json"):
            data = json.loads(upload_json.read_text(encoding="utf-8"))
            upload = Upload(**data)
            for part_json in upload_json.parent.glob("[0-9]*.json"):
                p = json.loads(part_json.read_text(encoding="utf-8"))
                p["md5"] = bytes.fromhex(p["md5"])
                upload.parts[p["number"]] = PartInfo(**p)
            self.uploads[upload.upload_id] = upload
        for leftover in (self.root / "tmp").iterdir():
            _unlink(leftover)

    def reset(self) -> None:
        """Delete every bucket, object and upload."""
        with self._lock:
            self.buckets.clear()
            self.objects.clear()
            self.uploads.clear()
            for sub in ("buckets", "objects", "uploads"):
                shutil.rmtree(self.root / sub, ignore_errors=True)
                (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ buckets

    def create_bucket(self, name: str) -> bool:
        """Create a bucket; False if it already existed."""
        with self._lock:
            if name in self.buckets:
                return False
            created = time.time()
            _write_json(self.root / "buckets" / f"{name}.json", {"name": name, "created": created})
            self.buckets[name] = created
            self.objects[name] = {}
            return True

    def delete_bucket(self, name: str) -> None:
        """Delete an (empty) bucket."""
        with self._lock:
            self.buckets.pop(name, None)
            self.objects.pop(name, None)
            _unlink(self.root / "buckets" / f"{name}.json")

    def bucket_exists(self, name: str) -> bool:
        """Whether the bucket exists."""
        return name in self.buckets

    # ------------------------------------------------------------------ objects

    def temp_path(self) -> Path:
        """A fresh path in the temporary directory."""
        return self.root / "tmp" / uuid.uuid4().hex

    def get(self, bucket: str, key: str) -> StoredObject | None:
        """The object's metadata, or ``None``."""
        return self.objects.get(bucket, {}).get(key)

    def data_path(self, obj: StoredObject) -> Path:
        """Where the object's bytes are."""
        return self.root / obj.data_file

    def sorted_keys(self, bucket: str) -> list[str]:
        """Every key of the bucket, sorted (by code point, as OSS sorts UTF-8)."""
        with self._lock:
            return sorted(self.objects.get(bucket, {}))

    def commit_object(
        self,
        *,
        bucket: str,
        key: str,
        temp: Path,
        size: int,
        etag: str,
        crc: int,
        content_md5: str | None,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
        object_type: str,
    ) -> StoredObject:
        """Move a fully received temp file into place as ``bucket/key``."""
        digest = _object_hash(bucket, key)
        directory = self.root / "objects" / digest[:2]
        directory.mkdir(exist_ok=True)
        data_file = directory / f"{digest}-{uuid.uuid4().hex[:12]}.data"
        os.replace(temp, data_file)
        obj = StoredObject(
            bucket=bucket,
            key=key,
            size=size,
            etag=etag,
            crc64=crc,
            content_md5=content_md5,
            last_modified=time.time(),
            content_type=content_type,
            metadata=dict(metadata),
            headers=dict(headers),
            object_type=object_type,
            data_file=str(data_file.relative_to(self.root)),
        )
        with self._lock:
            if bucket not in self.buckets:  # deleted meanwhile (e.g. reset())
                _unlink(data_file)
                return obj
            old = self.objects[bucket].get(key)
            _write_json(directory / f"{digest}.json", attrs.asdict(obj))
            self.objects[bucket][key] = obj
        if old is not None:
            _unlink(self.root / old.data_file)  # readers with it open keep the inode
        return obj

    def delete(self, bucket: str, key: str) -> bool:
        """Delete an object; False if there was none."""
        digest = _object_hash(bucket, key)
        with self._lock:
            old = self.objects.get(bucket, {}).pop(key, None)
            if old is None:
                return False
            _unlink(self.root / "objects" / digest[:2] / f"{digest}.json")
        _unlink(self.root / old.data_file)
        return True

    # ------------------------------------------------------------------ multipart

    def create_upload(
        self,
        *,
        bucket: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
        headers: Mapping[str, str],
    ) -> Upload:
        """Start a multipart upload."""
        upload = Upload(
            upload_id=uuid.uuid4().hex.upper(),
            bucket=bucket,
            key=key,
            initiated=time.time(),
            content_type=content_type,
            metadata=dict(metadata),
            headers=dict(headers),
        )
        directory = self.root / "uploads" / upload.upload_id
        directory.mkdir()
        data = attrs.asdict(upload, filter=lambda a, _: a.name not in ("parts", "completing"))
        _write_json(directory / "upload.json", data)
        with self._lock:
            self.uploads[upload.upload_id] = upload
        return upload

    def commit_part(
        self, upload: Upload, number: int, temp: Path, size: int, md5: bytes, crc: int
    ) -> PartInfo:
        """Move a received part into the upload (replacing an earlier one of that number)."""
        directory = self.root / "uploads" / upload.upload_id
        data_file = directory / f"{number}-{uuid.uuid4().hex[:12]}.part"
        try:
            os.replace(temp, data_file)
        except FileNotFoundError:  # the upload was aborted/completed meanwhile
            _unlink(temp)
            raise
        part = PartInfo(
            number=number,
            etag=md5.hex().upper(),
            md5=md5,
            size=size,
            crc64=crc,
            last_modified=time.time(),
            data_file=str(data_file.relative_to(self.root)),
        )
        with self._lock:
            old = upload.parts.get(number)
            upload.parts[number] = part
            record = attrs.asdict(part)
            record["md5"] = md5.hex()
            _write_json(directory / f"{number}.json", record)
        if old is not None:
            _unlink(self.root / old.data_file)
        return part

    def drop_upload(self, upload_id: str) -> None:
        """Forget an upload and delete its parts."""
        with self._lock:
            self.uploads.pop(upload_id, None)
        shutil.rmtree(self.root / "uploads" / upload_id, ignore_errors=True)

    def assemble(self, parts: list[PartInfo], target: Path) -> None:
        """Concatenate part files into ``target`` (blocking: run it on a worker thread).

        Uses ``os.copy_file_range`` (in-kernel, no copy through Python) where available,
        else a 1 MiB buffered copy; nothing is ever held whole in memory.
        """
        with open(target, "wb") as out:
            for part in parts:
                with open(self.root / part.data_file, "rb") as src:
                    _copy(src.fileno(), out, part.size)


def _copy(src_fd: int, out: Any, size: int) -> None:
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is not None:
        out.flush()
        remaining = size
        try:
            while remaining:
                n = copy_range(src_fd, out.fileno(), remaining)
                if n == 0:
                    break
                remaining -= n
        except OSError:
            pass
        else:
            if remaining == 0:
                return
        os.lseek(src_fd, size - remaining, os.SEEK_SET)
        size = remaining
    while size:
        chunk = os.read(src_fd, min(_COPY_BUFFER, size))
        if not chunk:
            raise OSError("part file is shorter than recorded")
        out.write(chunk)
        size -= len(chunk)


def combined_part_checksums(parts: list[PartInfo]) -> tuple[str, int, int]:
    """The multipart ETag (no quotes), CRC-64 and size of the concatenated parts."""
    md5 = hashlib.md5(b"".join(p.md5 for p in parts)).hexdigest().upper()  # noqa: S324
    crc = 0
    for part in parts:
        crc = crc64_combine(crc, part.crc64, part.size)
    return f"{md5}-{len(parts)}", crc, sum(p.size for p in parts)


def iter_file(path: Path, start: int, length: int, chunk: int = 1 << 18) -> Iterator[bytes]:
    """Read ``length`` bytes of ``path`` from ``start``, in chunks."""
    with open(path, "rb") as f:
        f.seek(start)
        while length > 0:
            data = f.read(min(chunk, length))
            if not data:
                return
            length -= len(data)
            yield data
