"""Checkpoint files for resumable uploads: versioned JSON with a checksum, written atomically.

A checkpoint holds no secret: bucket, key, upload id, when the upload was initiated, the
source file's identity (path, size, mtime, ctime, inode), the part size, per-part
number/offset/size/etag/crc64 (the etag is the part's MD5 as OSS returned it), and digests of
the callback and headers.  It is written to a temp file, fsynced, and ``os.replace``-d over
the old one, with mode 0600.  It also records the endpoint last used, for messages only: a
checkpoint belongs to the upload (bucket, key, file), not to the endpoint it went through.

Format versions: 2 (this one) added ``file.ctime_ns`` and ``initiated_ms``.  A version-1
checkpoint is still read, with both ``None`` (unknown): its parts are re-verified against the
file before they are kept, and a lost Complete is never recovered from it (see
:mod:`oss_callback.client._resumable`).  Versions above 2 are refused as "newer".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import attrs

from oss_callback.protocol._errors import CheckpointError

__all__ = [
    "FORMAT",
    "VERSION",
    "Checkpoint",
    "FileIdentity",
    "PartRecord",
    "adopt_legacy_checkpoint",
    "default_checkpoint_path",
    "legacy_checkpoint_path",
]

FORMAT = "oss_callback.resumable_upload"
VERSION = 2
#: Oldest format this version reads (older fields get ``None``: unknown, never trusted).
MIN_VERSION = 1
MAX_CHECKPOINT_BYTES = 8 * 1024 * 1024  # 10,000 parts fit comfortably


@attrs.frozen(kw_only=True)
class FileIdentity:
    """What suggests the source file is unchanged between runs (never proves it).

    ``ctime_ns`` is the inode change time: tools that rewrite a file and restore its mtime
    (``os.utime``, rsync, tar, backups) cannot restore it.  ``None`` means unknown (a
    format-1 checkpoint).  Timestamps are coarse on some file systems (1-2 s; jiffies on
    Linux), so an equal identity is still no proof: kept parts are re-verified by CRC-64.
    """

    path: str
    size: int
    mtime_ns: int
    inode: int
    ctime_ns: int | None = None

    @classmethod
    def of(cls, path: str) -> FileIdentity:
        st = os.stat(path)
        return cls(path=os.path.abspath(path), size=st.st_size, mtime_ns=st.st_mtime_ns,
                   inode=st.st_ino, ctime_ns=st.st_ctime_ns)


@attrs.frozen(kw_only=True)
class PartRecord:
    """One completed part."""

    number: int
    offset: int
    size: int
    etag: str
    crc64: int


@attrs.define(kw_only=True)
class Checkpoint:
    """The state of one resumable upload (mutable: parts are added as they complete)."""

    endpoint: str
    bucket: str
    key: str
    upload_id: str
    file: FileIdentity
    part_size: int
    headers_digest: str
    callback_digest: str | None
    parts: dict[int, PartRecord] = attrs.field(factory=dict)
    #: Unix time in ms (local clock) just before InitiateMultipartUpload was sent; ``None``
    #: if unknown (a format-1 checkpoint). A lost Complete is recovered only from an object
    #: written after it.
    initiated_ms: int | None = None

    def to_payload(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "bucket": self.bucket,
            "key": self.key,
            "upload_id": self.upload_id,
            "file": attrs.asdict(self.file),
            "part_size": self.part_size,
            "headers_digest": self.headers_digest,
            "callback_digest": self.callback_digest,
            "initiated_ms": self.initiated_ms,
            "parts": [
                {"number": p.number, "offset": p.offset, "size": p.size, "etag": p.etag,
                 "crc64": p.crc64}
                for _, p in sorted(self.parts.items())
            ],
        }

    def encode(self) -> bytes:
        """The file's bytes: ``{"format", "version", "checksum", "payload"}``."""
        return encode_payload(self.to_payload())

    @classmethod
    def decode(cls, data: bytes, path: str = "<checkpoint>") -> Checkpoint:
        """Parse and verify; :class:`CheckpointError` says what is wrong and what to do."""
        return _decode(cls, data, path)


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Encode a :meth:`Checkpoint.to_payload` snapshot (safe to call from a worker thread)."""
    return json.dumps(
        {"format": FORMAT, "version": VERSION, "checksum": _checksum(payload),
         "payload": payload},
        separators=(",", ":"),  # compact: json only uses its C encoder without indent
    ).encode()


def _decode(cls: type[Checkpoint], data: bytes, path: str) -> Checkpoint:
    delete_hint = f"delete {path} to start the upload over"
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CheckpointError(f"checkpoint {path} is corrupt (not JSON); {delete_hint}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an oss_callback resumable-upload checkpoint; pass another "
            "checkpoint_file= or delete it"
        )
    version = doc.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version < MIN_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has an unknown format version {version}; {delete_hint}"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
        raise CheckpointError(
            f"checkpoint {path} was written by a newer oss_callback (format version "
            f"{version}, this one reads {MIN_VERSION}..{VERSION}); upgrade oss_callback or "
            f"{delete_hint}"
        )
    payload = doc.get("payload")
    if not isinstance(payload, dict) or doc.get("checksum") != _checksum(payload):
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch); {delete_hint}")
    try:
        _check_types(payload, version)
        file = dict(payload["file"])
        if version < 2:
            file.pop("ctime_ns", None)  # not written by format 1: unknown
        return cls(
            endpoint=str(payload["endpoint"]),
            bucket=str(payload["bucket"]),
            key=str(payload["key"]),
            upload_id=str(payload["upload_id"]),
            file=FileIdentity(**file),
            part_size=int(payload["part_size"]),
            headers_digest=str(payload["headers_digest"]),
            callback_digest=payload["callback_digest"],
            parts={int(p["number"]): PartRecord(**p) for p in payload["parts"]},
            initiated_ms=payload["initiated_ms"] if version >= 2 else None,
        )
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"checkpoint {path} is malformed ({e}); {delete_hint}") from None


def _int(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer")


def _check_types(payload: dict[str, Any], version: int) -> None:
    _int(payload["part_size"], "part_size")
    for name in ("size", "mtime_ns", "inode"):
        _int(payload["file"][name], f"file.{name}")
    if version >= 2:
        # present in every format-2 checkpoint; None only when carried over from format 1
        if payload["file"]["ctime_ns"] is not None:
            _int(payload["file"]["ctime_ns"], "file.ctime_ns")
        if payload["initiated_ms"] is not None:
            _int(payload["initiated_ms"], "initiated_ms")
    if not isinstance(payload["parts"], list):
        raise ValueError("parts must be a list")
    for part in payload["parts"]:
        for name in ("number", "offset", "size", "crc64"):
            _int(part[name], f"part {name}")
        if not isinstance(part["etag"], str):
            raise ValueError("part etag must be a string")


def _checksum(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def state_dir() -> Path:
    """The per-user folder for checkpoints (``$OSS_CALLBACK_STATE_DIR`` overrides)."""
    override = os.environ.get("OSS_CALLBACK_STATE_DIR")
    if override:
        return Path(override)
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "oss_callback" / "checkpoints"
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "oss_callback" / "checkpoints"


def default_checkpoint_path(bucket: str, key: str, file_path: str) -> str:
    """A stable per-(bucket, key, file) path in :func:`state_dir`.

    Not per endpoint: the same upload resumes through any endpoint of its bucket.
    """
    return _state_file([bucket, key, os.path.abspath(file_path)])


def legacy_checkpoint_path(endpoint: str, bucket: str, key: str, file_path: str) -> str:
    """Where earlier versions kept the default checkpoint (keyed by the endpoint too)."""
    return _state_file([endpoint, bucket, key, os.path.abspath(file_path)])


def adopt_legacy_checkpoint(path: str, legacy: str) -> None:
    """Move a checkpoint from its old default ``legacy`` path to ``path`` (if there is one
    there and none at ``path``), so an upload begun by an earlier version resumes."""
    if not os.path.exists(path) and os.path.isfile(legacy):
        with contextlib.suppress(FileNotFoundError):  # another run took it first
            os.replace(legacy, path)


def _state_file(parts: list[str]) -> str:
    ident = "\n".join(parts)
    name = hashlib.sha256(ident.encode("utf-8", "surrogateescape")).hexdigest()[:40] + ".json"
    return str(state_dir() / name)


def read_checkpoint(path: str) -> Checkpoint | None:
    """The checkpoint at ``path``, ``None`` if there is none; :class:`CheckpointError` if bad."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CHECKPOINT_BYTES + 1)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint_file {path} is a directory; give a file path") from None
    except PermissionError:
        raise CheckpointError(f"checkpoint {path} is not readable; fix its permissions") from None
    if len(data) > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path} is too large to be a checkpoint; delete it or pass another")
    return Checkpoint.decode(data, path)


def write_checkpoint(path: str, checkpoint: Checkpoint | dict[str, Any]) -> None:
    """Atomically replace ``path`` (temp file + fsync + ``os.replace``), mode 0600.

    ``checkpoint`` may be a :meth:`Checkpoint.to_payload` snapshot (taken on the event loop,
    so that encoding in a worker thread never races with parts being added).
    """
    data = checkpoint.encode() if isinstance(checkpoint, Checkpoint) else encode_payload(checkpoint)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o600) if hasattr(os, "fchmod") else None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def remove_checkpoint(path: str) -> None:
    """Delete the checkpoint if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
