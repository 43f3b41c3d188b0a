"""On-disk storage for the emulator: buckets, objects and multipart uploads.

Layout under the data directory (nothing is ever named after an object key, so any key,
``../x``, ``/etc/passwd``, 1023 bytes of anything, stays inside)::

    buckets/<bucket>.json              bucket marker (bucket names are validated first)
    objects/<h[:2]>/<h>.json           metadata sidecar, h = sha256(bucket NUL key)
    objects/<h[:2]>/<h>-<nonce>.data   the bytes (a new file per write; the sidecar names it)
    objects/<h[:2]>/<h>-<nonce>.<n>.seg   part n of a completed multipart object: its bytes
                                       are the segments in order (nothing is copied at
                                       Complete; ``.data`` is assembled only on request)
    uploads/<upload id>/upload.json    a multipart upload in progress
    uploads/<upload id>/<n>-<nonce>.part / <n>.json
    tmp/                               bodies being received
    spare/                             files of replaced objects, kept for reuse (see below)

An in-memory index mirrors the sidecars (and is rebuilt from them at start), so reads and
listings never touch the metadata files.

Files are recycled: the files of replaced objects move to ``spare/`` and the next large
bodies are written over them (:mod:`~oss_callback.testing._recycling`).  A file is never
recycled while a GET reads it (reads take a *lease* on every file of the object: the GET
finishes with the bytes it started with, as on OSS, even if the object is overwritten or
deleted meanwhile), nor after :meth:`Store.materialize` handed its path out.

"""

from __future__ import annotations

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

from oss_callback.testing._file_io import copy_bytes, iter_file
from oss_callback.testing._recycling import SPARE_MIN, SparePool
from oss_callback.testing._stored import PartInfo, StoredObject, Upload

__all__ = ["Store"]


def _object_hash(bucket: str, key: str) -> str:
    return hashlib.sha256(f"{bucket}\0{key}".encode("utf-8", "surrogatepass")).hexdigest()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


class Store:
    """Buckets, objects and uploads under one data directory (thread-safe)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.RLock()
        self.buckets: dict[str, float] = {}
        self.objects: dict[str, dict[str, StoredObject]] = {}
        self.uploads: dict[str, Upload] = {}
        self._readers: dict[Path, int] = {}  # file -> reads in progress (leases)
        self._doomed: set[Path] = set()  # retired while read: retired again by the last reader
        self._exposed: set[Path] = set()  # handed out by materialize(): never recycled
        self._spares = SparePool(root / "spare")  # guarded by self._lock
        for sub in ("buckets", "objects", "uploads", "tmp", "spare"):
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
        for sub in ("tmp", "spare"):
            for leftover in (self.root / sub).iterdir():
                _unlink(leftover)

    def reset(self) -> None:
        """Delete every bucket, object and upload."""
        with self._lock:
            self.buckets.clear()
            self.objects.clear()
            self.uploads.clear()
            self._spares.take_all()  # their directory is removed below
            self._exposed.clear()
            for sub in ("buckets", "objects", "uploads", "spare"):
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

    def temp_path(self, size_hint: int | None = None) -> Path:
        """A new path in the temporary directory for a body of about ``size_hint`` bytes.

        For a body of at least ``SPARE_MIN`` bytes the path may hold a recycled file: write
        over it without truncating first, then truncate it to the body's size (as
        :class:`~oss_callback.testing._body_sink.BodySink` does).  Otherwise nothing exists
        at the path.
        """
        path = self.root / "tmp" / uuid.uuid4().hex
        if size_hint is None or size_hint < SPARE_MIN:
            return path
        with self._lock:
            expired = self._spares.reuse(path, size_hint)
        for old in expired:
            _unlink(old)
        return path

    # ------------------------------------------------------------------ file lifecycle

    def drop_spares(self) -> None:
        """Delete every recycled file kept for reuse (when the server stops)."""
        with self._lock:
            spares = self._spares.take_all()
        for path in spares:
            _unlink(path)

    def _retire(self, paths: list[Path]) -> None:
        """``paths`` no longer hold live data: recycle or delete them, unless being read.

        A file that a GET is reading is left in place until the last such read ends.
        """
        unlink: list[Path] = []
        with self._lock:
            unlink.extend(self._spares.expire())
            for path in paths:
                if self._readers.get(path):
                    self._doomed.add(path)
                elif path in self._exposed:
                    self._exposed.discard(path)
                    unlink.append(path)
                elif not self._spares.keep(path):
                    unlink.append(path)
        for path in unlink:
            _unlink(path)  # readers with it open (materialize()'d) keep the inode

    def _lease(self, obj: StoredObject) -> list[Path]:
        """Keep ``obj``'s files from being recycled or deleted until :meth:`_release`.

        Raises:
            FileNotFoundError: ``obj`` was overwritten or deleted (its files are gone).
        """
        with self._lock:
            current = self.objects.get(obj.bucket, {}).get(obj.key)
            if current is None or current.data_file != obj.data_file:
                raise FileNotFoundError(f"{obj.bucket}/{obj.key} was overwritten or deleted")
            files = self._files(obj)
            for path in files:
                self._readers[path] = self._readers.get(path, 0) + 1
        return files

    def _release(self, files: list[Path]) -> None:
        """End a :meth:`_lease`; files retired meanwhile are retired now."""
        retire: list[Path] = []
        with self._lock:
            for path in files:
                left = self._readers[path] - 1
                if left:
                    self._readers[path] = left
                    continue
                del self._readers[path]
                if path in self._doomed:
                    self._doomed.discard(path)
                    retire.append(path)
        if retire:
            self._retire(retire)

    def get(self, bucket: str, key: str) -> StoredObject | None:
        """The object's metadata, or ``None``."""
        return self.objects.get(bucket, {}).get(key)

    def data_path(self, obj: StoredObject) -> Path:
        """Where the object's bytes are as one file (see :meth:`materialize` for multipart)."""
        return self.root / obj.data_file

    def sorted_keys(self, bucket: str) -> list[str]:
        """Every key of the bucket, sorted (by code point, as OSS sorts UTF-8)."""
        with self._lock:
            return sorted(self.objects.get(bucket, {}))

    def _new_data_file(self, bucket: str, key: str) -> tuple[str, Path]:
        """The sidecar hash and a fresh ``.data`` path for ``bucket/key``."""
        digest = _object_hash(bucket, key)
        directory = self.root / "objects" / digest[:2]
        directory.mkdir(exist_ok=True)
        return digest, directory / f"{digest}-{uuid.uuid4().hex[:12]}.data"

    def _files(self, obj: StoredObject) -> list[Path]:
        """Every file holding ``obj``'s bytes (the ``.data`` file may not exist)."""
        return [self.root / obj.data_file, *(self.root / path for path, _ in obj.segments)]

    def _install(self, obj: StoredObject, digest: str) -> None:
        """Record ``obj`` (sidecar and index) and delete the files of what it replaces.

        If the bucket was deleted meanwhile (e.g. :meth:`reset`), ``obj``'s files are
        deleted instead.
        """
        with self._lock:
            if obj.bucket not in self.buckets:
                stale = self._files(obj)
            else:
                old = self.objects[obj.bucket].get(obj.key)
                sidecar = self.root / "objects" / digest[:2] / f"{digest}.json"
                _write_json(sidecar, attrs.asdict(obj))
                self.objects[obj.bucket][obj.key] = obj
                stale = self._files(old) if old is not None else []
        self._retire(stale)

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
        digest, data_file = self._new_data_file(bucket, key)
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
        self._install(obj, digest)
        return obj

    def commit_multipart(
        self, upload: Upload, parts: list[PartInfo], *, etag: str, crc: int
    ) -> StoredObject:
        """Make ``parts`` (in order) the object ``upload.bucket/upload.key``.

        The part files are renamed into the object store as the object's segments: no
        byte is copied, so this is O(number of parts) whatever the size.  Parts not in
        ``parts`` stay in the upload (:meth:`drop_upload` deletes them).

        Raises:
            FileNotFoundError: a part file is gone (the upload was aborted meanwhile).
        """
        digest, data_file = self._new_data_file(upload.bucket, upload.key)
        base = str(data_file.relative_to(self.root)).removesuffix(".data")
        moved: list[tuple[Path, Path]] = []
        with self._lock:  # commit_part() cannot swap a part file while they move
            try:
                for part in parts:
                    source = self.root / part.data_file
                    target = self.root / f"{base}.{part.number}.seg"
                    os.replace(source, target)
                    moved.append((target, source))
            except BaseException:
                for target, source in moved:
                    os.replace(target, source)
                raise
        obj = StoredObject(
            bucket=upload.bucket,
            key=upload.key,
            size=sum(p.size for p in parts),
            etag=etag,
            crc64=crc,
            content_md5=None,
            last_modified=time.time(),
            content_type=upload.content_type,
            metadata=dict(upload.metadata),
            headers=dict(upload.headers),
            object_type="Multipart",
            data_file=str(data_file.relative_to(self.root)),
            segments=tuple((f"{base}.{p.number}.seg", p.size) for p in parts),
        )
        self._install(obj, digest)
        return obj

    def update_metadata(self, obj: StoredObject, **changes: Any) -> StoredObject:
        """Change ``obj``'s metadata fields (a CopyObject onto itself): its bytes and files
        stay as they are.

        Raises:
            FileNotFoundError: ``obj`` was overwritten or deleted meanwhile.
        """
        digest = _object_hash(obj.bucket, obj.key)
        with self._lock:
            current = self.objects.get(obj.bucket, {}).get(obj.key)
            if current is None or current.data_file != obj.data_file:
                raise FileNotFoundError(f"{obj.bucket}/{obj.key} was overwritten or deleted")
            new = attrs.evolve(current, **changes)
            sidecar = self.root / "objects" / digest[:2] / f"{digest}.json"
            _write_json(sidecar, attrs.asdict(new))
            self.objects[obj.bucket][obj.key] = new
        return new

    def delete(self, bucket: str, key: str) -> bool:
        """Delete an object; False if there was none."""
        digest = _object_hash(bucket, key)
        with self._lock:
            old = self.objects.get(bucket, {}).pop(key, None)
            if old is None:
                return False
            _unlink(self.root / "objects" / digest[:2] / f"{digest}.json")
        self._retire(self._files(old))
        return True

    def read(self, obj: StoredObject, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """``length`` bytes (default: to the end) of ``obj``'s content from ``start``, in chunks.

        A multipart object is read across its segments.  The object's files are leased
        when the iterator is first advanced (``FileNotFoundError`` if the object was
        overwritten or deleted by then), so the read ends with the bytes it started with
        even if the object is replaced meanwhile; the lease ends with the iterator.
        """
        if length is None:
            length = obj.size - start
        files = self._lease(obj)
        try:
            if not obj.segments:
                yield from iter_file(self.root / obj.data_file, start, length)
                return
            position = 0
            for path, size in obj.segments:
                if length <= 0:
                    return
                if start < position + size:
                    offset = max(start - position, 0)
                    n = min(size - offset, length)
                    yield from iter_file(self.root / path, offset, n)
                    length -= n
                position += size
        finally:
            self._release(files)

    def materialize(self, obj: StoredObject) -> Path:
        """``obj``'s content as one file (assembling a multipart object's segments once).

        The assembled file is the object's ``data_file``; it is deleted with the object
        (never recycled: the caller may still have it open).

        Raises:
            FileNotFoundError: ``obj`` was overwritten or deleted.
        """
        path = self.root / obj.data_file
        files = self._lease(obj)
        try:
            with self._lock:
                if not obj.segments or path.exists():
                    self._exposed.add(path)
                    return path
            temp = self.temp_path()
            try:
                with open(temp, "wb") as out:
                    for segment, size in obj.segments:
                        with open(self.root / segment, "rb") as src:
                            copy_bytes(src.fileno(), out, size)
                with self._lock:
                    self._exposed.add(path)
                    os.replace(temp, path)
            except BaseException:
                _unlink(temp)
                raise
            return path
        finally:
            self._release(files)

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
            if upload.completing or self.uploads.get(upload.upload_id) is not upload:
                self._retire([data_file])  # completed or aborted while this part was received
                raise FileNotFoundError(upload.upload_id)
            old = upload.parts.get(number)
            upload.parts[number] = part
            record = attrs.asdict(part)
            record["md5"] = md5.hex()
            _write_json(directory / f"{number}.json", record)
        if old is not None:
            self._retire([self.root / old.data_file])
        return part

    def drop_upload(self, upload_id: str) -> None:
        """Forget an upload and delete its parts (those not completed into an object)."""
        with self._lock:
            upload = self.uploads.pop(upload_id, None)
            if upload is not None:
                self._retire([self.root / part.data_file for part in upload.parts.values()])
        shutil.rmtree(self.root / "uploads" / upload_id, ignore_errors=True)

