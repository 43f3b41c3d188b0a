"""The emulator's file lifecycle: replaced objects' files are recycled for the next large
bodies (written over, then truncated), a GET keeps the bytes it started with while the
object is overwritten or deleted, and the allocator tuning of the emulator command."""

from __future__ import annotations

import os
import platform
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from support.emulator_helpers import oss_request

from oss_callback.protocol._crc64 import crc64
from oss_callback.protocol._credentials import Credentials
from oss_callback.protocol._signing import sign_v4
from oss_callback.testing import OSSEmulator, _recycling
from oss_callback.testing._cli import keep_heap
from oss_callback.testing._store import Store

B = "recycle-bucket"
MiB = 1024 * 1024


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[OSSEmulator]:
    with OSSEmulator(data_dir=tmp_path / "data", buckets=[B]) as emulator:
        yield emulator


def _store_of(emulator: OSSEmulator) -> Store:
    return emulator._require_running().store


def _spares(emulator: OSSEmulator) -> list[Path]:
    return sorted((emulator.data_dir / "spare").iterdir())


def _put(emulator: OSSEmulator, key: str, data: bytes) -> None:
    r = oss_request(emulator, "PUT", B, key, body=data)
    assert r.status_code == 200, r.text
    assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(data))


def _multipart(emulator: OSSEmulator, key: str, parts: list[bytes]) -> None:
    r = oss_request(emulator, "POST", B, key, query=[("uploads", "")])
    upload_id = ET.fromstring(r.content).findtext("UploadId") or ""
    xml = ""
    for n, data in enumerate(parts, 1):
        q = [("partNumber", str(n)), ("uploadId", upload_id)]
        r = oss_request(emulator, "PUT", B, key, query=q, body=data)
        assert r.status_code == 200, r.text
        xml += f"<Part><PartNumber>{n}</PartNumber><ETag>{r.headers['etag']}</ETag></Part>"
    body = f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode()
    r = oss_request(emulator, "POST", B, key, query=[("uploadId", upload_id)], body=body)
    assert r.status_code == 200, r.text


def _all_files(emulator: OSSEmulator) -> list[Path]:
    return [p for p in emulator.data_dir.rglob("*") if p.is_file()]


# --------------------------------------------------------------------------- recycling


def test_overwritten_file_is_recycled_and_truncated_to_the_new_body(emu: OSSEmulator) -> None:
    first = os.urandom(3 * MiB)
    _put(emu, "a.bin", first)
    assert _spares(emu) == []
    _put(emu, "a.bin", os.urandom(3 * MiB))
    [spare] = _spares(emu)  # the replaced 3 MiB file, kept for reuse
    assert spare.stat().st_size == 3 * MiB
    inode = spare.stat().st_ino

    # A 2 MiB body is written over the 3 MiB spare, which must end at 2 MiB exactly.
    smaller = os.urandom(2 * MiB + 5)
    _put(emu, "b.bin", smaller)
    assert _spares(emu) == []
    assert emu.get_object(B, "b.bin") == smaller
    obj = emu.head_object(B, "b.bin")
    assert obj is not None
    data_file = emu.data_dir / obj.data_file
    assert data_file.stat().st_ino == inode  # the same file, reused
    assert data_file.stat().st_size == len(smaller)
    assert oss_request(emu, "GET", B, "b.bin").content == smaller


def test_small_bodies_and_oversized_spares_are_not_recycled(emu: OSSEmulator) -> None:
    _put(emu, "big.bin", os.urandom(5 * MiB))
    _put(emu, "big.bin", b"tiny")  # the 5 MiB file becomes a spare
    assert [p.stat().st_size for p in _spares(emu)] == [5 * MiB]
    _put(emu, "tiny.bin", b"x" * 1000)  # under 1 MiB: a fresh file
    _put(emu, "two.bin", os.urandom(2 * MiB))  # 5 MiB > 2 x 2 MiB: kept for a larger body
    assert [p.stat().st_size for p in _spares(emu)] == [5 * MiB]
    _put(emu, "tiny.bin", b"y")  # replacing a small file keeps no spare of it
    assert [p.stat().st_size for p in _spares(emu)] == [5 * MiB]
    data = os.urandom(4 * MiB)
    _put(emu, "four.bin", data)
    assert _spares(emu) == []
    assert emu.get_object(B, "four.bin") == data


def test_multipart_parts_reuse_the_segments_of_a_replaced_object(emu: OSSEmulator) -> None:
    parts = [os.urandom(2 * MiB) for _ in range(3)]
    _multipart(emu, "m.bin", parts)
    assert oss_request(emu, "DELETE", B, "m.bin").status_code == 204
    assert [p.stat().st_size for p in _spares(emu)] == [2 * MiB] * 3
    again = [os.urandom(2 * MiB - 1) for _ in range(2)] + [b"end"]
    _multipart(emu, "m2.bin", again)
    assert len(_spares(emu)) == 1  # two were written over
    assert emu.get_object(B, "m2.bin") == b"".join(again)


def test_aborted_upload_and_replaced_part_are_recycled(emu: OSSEmulator) -> None:
    r = oss_request(emu, "POST", B, "u.bin", query=[("uploads", "")])
    upload_id = ET.fromstring(r.content).findtext("UploadId") or ""
    q = [("partNumber", "1"), ("uploadId", upload_id)]
    assert oss_request(emu, "PUT", B, "u.bin", query=q, body=os.urandom(MiB)).status_code == 200
    assert oss_request(emu, "PUT", B, "u.bin", query=q, body=os.urandom(MiB)).status_code == 200
    assert len(_spares(emu)) == 1  # the replaced part 1
    r = oss_request(emu, "DELETE", B, "u.bin", query=[("uploadId", upload_id)])
    assert r.status_code == 204
    assert len(_spares(emu)) == 2
    assert not (emu.data_dir / "uploads" / upload_id).exists()


def test_spares_expire_and_are_capped(emu: OSSEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_recycling, "_SPARE_FILES", 2)
    for key in ("a", "b", "c"):
        _put(emu, key, os.urandom(MiB))
    for key in ("a", "b", "c"):
        assert oss_request(emu, "DELETE", B, key).status_code == 204
    assert len(_spares(emu)) == 2  # the third was deleted
    monkeypatch.setattr(_recycling, "_SPARE_SECONDS", 0.0)
    _put(emu, "d", b"small")
    assert oss_request(emu, "DELETE", B, "d").status_code == 204  # retiring expires them
    assert _spares(emu) == []


def test_spares_are_cleared_on_stop_restart_and_reset(tmp_path: Path) -> None:
    with OSSEmulator(data_dir=tmp_path, buckets=[B]) as emulator:
        _put(emulator, "k", os.urandom(MiB))
        _put(emulator, "k", os.urandom(MiB))
        assert len(_spares(emulator)) == 1
    assert list((tmp_path / "spare").iterdir()) == []  # stopping deleted it
    (tmp_path / "spare" / "left-by-a-crash").write_bytes(b"x" * MiB)
    with OSSEmulator(data_dir=tmp_path) as emulator:
        assert _spares(emulator) == []
        _put(emulator, "k", os.urandom(MiB))
        assert len(_spares(emulator)) == 1
        emulator.reset()
        assert _spares(emulator) == []


def test_object_path_handed_out_is_never_recycled(emu: OSSEmulator) -> None:
    data = os.urandom(2 * MiB)
    _put(emu, "p.bin", data)
    path = emu.object_path(B, "p.bin")
    assert path is not None
    with open(path, "rb") as held:
        _put(emu, "p.bin", os.urandom(2 * MiB))  # replaced: the handed-out file is deleted
        assert _spares(emu) == []
        assert not path.exists()
        _put(emu, "q.bin", os.urandom(2 * MiB))
        assert held.read() == data  # what the caller holds is unchanged


def test_body_that_fails_leaves_no_file(emu: OSSEmulator) -> None:
    _put(emu, "k", os.urandom(2 * MiB))
    _put(emu, "k", os.urandom(2 * MiB))
    assert len(_spares(emu)) == 1
    wrong_md5 = "1B2M2Y8AsgTpgAmY7PhCfg=="  # the MD5 of b""
    body = os.urandom(2 * MiB)
    r = oss_request(emu, "PUT", B, "bad", body=body, headers={"Content-MD5": wrong_md5})
    assert r.status_code == 400
    assert _spares(emu) == []  # the spare was taken for the body, which was then deleted
    assert list((emu.data_dir / "tmp").iterdir()) == []
    assert emu.head_object(B, "bad") is None


# --------------------------------------------------------------------------- reads keep their bytes


def _stream_first(
    emulator: OSSEmulator, key: str
) -> tuple[httpx.Client, httpx.Response, Iterator[bytes], bytes]:
    """Start a GET of ``key`` over a real socket and read its first chunk only."""
    headers: dict[str, str] = {}
    creds = Credentials(
        access_key_id=emulator.access_key_id, access_key_secret=emulator.access_key_secret
    )
    sign_v4("GET", B, key, [], headers, creds, datetime.now(timezone.utc), emulator.region)
    http = httpx.Client(trust_env=False, timeout=30)
    request = http.build_request("GET", f"{emulator.endpoint}/{B}/{key}", headers=headers)
    response = http.send(request, stream=True)
    assert response.status_code == 200
    chunks = response.iter_raw(64 * 1024)
    return http, response, chunks, next(chunks)


@pytest.mark.parametrize("change", ["overwrite", "delete"])
def test_get_finishes_with_the_bytes_it_started_with(emu: OSSEmulator, change: str) -> None:
    parts = [os.urandom(8 * MiB), os.urandom(8 * MiB), os.urandom(MiB)]
    whole = b"".join(parts)
    _multipart(emu, "m.bin", parts)
    http, response, chunks, first = _stream_first(emu, "m.bin")
    try:
        if change == "overwrite":
            _put(emu, "m.bin", os.urandom(8 * MiB))
            # More large bodies that could take recycled files: none of the read's.
            for n in range(3):
                _put(emu, f"other{n}", os.urandom(8 * MiB))
            assert len(emu.get_object(B, "m.bin")) == 8 * MiB
        else:
            assert oss_request(emu, "DELETE", B, "m.bin").status_code == 204
            assert emu.head_object(B, "m.bin") is None
        rest = b"".join(chunks)
    finally:
        response.close()
        http.close()
    assert first + rest == whole


def test_files_of_a_deleted_object_go_when_its_last_read_ends(emu: OSSEmulator) -> None:
    data = os.urandom(3 * MiB)
    _put(emu, "d.bin", data)
    store = _store_of(emu)
    obj = store.get(B, "d.bin")
    assert obj is not None
    reader = store.read(obj)
    second = store.read(obj)
    got = next(reader)
    got2 = next(second)
    assert oss_request(emu, "DELETE", B, "d.bin").status_code == 204
    data_file = emu.data_dir / obj.data_file
    assert data_file.exists()  # two reads still going
    assert _spares(emu) == []
    got += b"".join(reader)
    assert data_file.exists()
    got2 += b"".join(second)
    assert got == got2 == data
    assert not data_file.exists()  # the last read retired it (recycled)
    assert len(_spares(emu)) == 1


def test_read_of_a_replaced_object_raises_not_found(emu: OSSEmulator) -> None:
    _put(emu, "r.bin", b"old")
    store = _store_of(emu)
    old = store.get(B, "r.bin")
    assert old is not None
    _put(emu, "r.bin", b"new")
    with pytest.raises(FileNotFoundError):
        next(store.read(old))
    with pytest.raises(FileNotFoundError):
        store.materialize(old)
    assert store._readers == {}


# --------------------------------------------------------------------------- allocator


def test_keep_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1")
    assert keep_heap() is False  # the environment already decides
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    for name in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    # It changes this process's malloc settings: only thresholds, no behaviour to undo.
    assert keep_heap() is True


def test_concurrent_reads_never_see_mixed_or_recycled_bytes(emu: OSSEmulator) -> None:
    # A writer overwrites and deletes one key (every body can take a recycled file) while
    # slow readers stream it: each GET must be a 404 or exactly one version, never a mix.
    versions = [os.urandom(8 * MiB + n) for n in range(3)]
    known = {len(v): v for v in versions}
    stop = threading.Event()
    errors: list[str] = []
    seen = {"ok": 0, "missing": 0}

    def writer() -> None:
        n = 0
        with httpx.Client(trust_env=False, timeout=30) as http:
            while not stop.is_set():
                n += 1
                if n % 5 == 0:
                    oss_request(emu, "DELETE", B, "hot", client=http)
                else:
                    r = oss_request(emu, "PUT", B, "hot", body=versions[n % 3], client=http)
                    if r.status_code != 200:
                        errors.append(f"PUT {r.status_code}")

    def reader() -> None:
        with httpx.Client(trust_env=False, timeout=30) as http:
            while not stop.is_set():
                headers: dict[str, str] = {}
                creds = Credentials(
                    access_key_id=emu.access_key_id, access_key_secret=emu.access_key_secret
                )
                now = datetime.now(timezone.utc)
                sign_v4("GET", B, "hot", [], headers, creds, now, emu.region)
                url = f"{emu.endpoint}/{B}/hot"
                try:
                    with http.stream("GET", url, headers=headers) as response:
                        if response.status_code == 404:
                            seen["missing"] += 1
                            continue
                        body = []
                        for chunk in response.iter_raw(64 * 1024):
                            body.append(chunk)  # slowly: the server reads the file meanwhile
                            time.sleep(0.0005)
                except httpx.HTTPError as exc:  # e.g. a body cut short
                    errors.append(f"GET failed: {exc!r}")
                    continue
                data = b"".join(body)
                if response.status_code != 200 or known.get(len(data)) != data:
                    diag = []
                    for i in range(0, len(data), MiB):
                        piece = data[i : i + MiB]
                        src = [k for k, v in enumerate(versions) if v[i : i + MiB] == piece]
                        diag.append(src[0] if src else "?")
                    errors.append(f"GET {response.status_code}, {len(data)} bytes, MiBs: {diag}")
                else:
                    seen["ok"] += 1

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == []
    assert seen["ok"] > 5  # the readers really raced the writer
    assert _store_of(emu)._readers == {}  # every lease was released
    assert list((emu.data_dir / "tmp").iterdir()) == []
