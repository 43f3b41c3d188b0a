"""The emulator's ingest path: pipelined hashing/writing of large bodies, multipart objects
kept as their parts' files (Complete copies nothing), and the opt-in ``etag="fast"`` mode."""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.emulator_helpers import error_code, oss_request

from oss_callback.protocol._crc64 import crc64, crc64_combine
from oss_callback.testing import OSSEmulator
from oss_callback.testing._cli import build_parser

B = "ingest-bucket"
MiB = 1024 * 1024
# Over several 1 MiB batches, not a multiple of anything: exercises the worker lanes.
BIG = 3 * MiB + 12345


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest().upper()


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _fast_etag(data: bytes) -> str:
    return f"{crc64(data):016X}{len(data):016X}"


@pytest.fixture(scope="module")
def fast_emulator() -> Iterator[OSSEmulator]:
    with OSSEmulator(buckets=[B], etag="fast") as emu:
        yield emu


@pytest.fixture
def default_emulator(oss_emulator: OSSEmulator) -> OSSEmulator:
    oss_emulator.create_bucket(B)
    return oss_emulator


def _multipart(emu: OSSEmulator, key: str, parts: list[bytes]) -> tuple[httpx.Response, list[str]]:
    r = oss_request(emu, "POST", B, key, query=[("uploads", "")])
    assert r.status_code == 200, r.text
    upload_id = ET.fromstring(r.content).findtext("UploadId") or ""
    etags = []
    for n, data in enumerate(parts, 1):
        r = oss_request(
            emu, "PUT", B, key, query=[("partNumber", str(n)), ("uploadId", upload_id)], body=data
        )
        assert r.status_code == 200, r.text
        assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(data))
        etags.append(r.headers["etag"])
    body = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        for n, etag in enumerate(etags, 1)
    )
    r = oss_request(
        emu,
        "POST",
        B,
        key,
        query=[("uploadId", upload_id)],
        body=f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode(),
    )
    assert r.status_code == 200, r.text
    return r, etags


def _combined_crc(parts: list[bytes]) -> int:
    crc = 0
    for part in parts:
        crc = crc64_combine(crc, crc64(part), len(part))
    return crc


def _files(emu: OSSEmulator, pattern: str) -> list[Path]:
    return sorted((emu.data_dir / "objects").rglob(pattern))


# --------------------------------------------------------------------------- default mode


def test_large_put_etag_is_md5_and_bytes_are_exact(default_emulator: OSSEmulator) -> None:
    emu = default_emulator
    data = os.urandom(BIG)
    r = oss_request(emu, "PUT", B, "big.bin", body=data)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{_md5_hex(data)}"'
    assert r.headers["content-md5"] == _md5_b64(data)
    assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(data))
    obj = emu.head_object(B, "big.bin")
    assert obj is not None and obj.size == BIG and obj.crc64 == crc64(data)
    assert obj.content_md5 == _md5_b64(data)
    assert emu.get_object(B, "big.bin") == data
    g = oss_request(emu, "GET", B, "big.bin")
    assert g.content == data
    assert g.headers["etag"] == f'"{_md5_hex(data)}"'
    assert list((emu.data_dir / "tmp").iterdir()) == []


@pytest.mark.parametrize("size", [0, 1, 1000, MiB - 1, MiB, MiB + 1, 2 * MiB])
def test_put_sizes_around_the_batch_size(default_emulator: OSSEmulator, size: int) -> None:
    data = os.urandom(size)
    r = oss_request(default_emulator, "PUT", B, f"s{size}", body=data)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == f'"{_md5_hex(data)}"'
    assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(data))
    assert default_emulator.get_object(B, f"s{size}") == data


def test_large_put_content_md5_is_verified(default_emulator: OSSEmulator) -> None:
    data = os.urandom(BIG)
    r = oss_request(
        default_emulator,
        "PUT",
        B,
        "bad.bin",
        body=data,
        headers={"Content-MD5": _md5_b64(data[:-1] + bytes([data[-1] ^ 1]))},
    )
    assert r.status_code == 400
    assert error_code(r) == "InvalidDigest"
    assert default_emulator.head_object(B, "bad.bin") is None
    assert list((default_emulator.data_dir / "tmp").iterdir()) == []
    r = oss_request(
        default_emulator, "PUT", B, "good.bin", body=data, headers={"Content-MD5": _md5_b64(data)}
    )
    assert r.status_code == 200
    assert default_emulator.get_object(B, "good.bin") == data


def test_multipart_object_is_kept_as_parts_and_reads_back_exactly(
    default_emulator: OSSEmulator,
) -> None:
    emu = default_emulator
    parts = [os.urandom(MiB + 7), os.urandom(2 * MiB + 3), os.urandom(100 * 1024 + 5)]
    whole = b"".join(parts)
    r, etags = _multipart(emu, "m.bin", parts)
    assert etags == [f'"{_md5_hex(p)}"' for p in parts]
    md5s = b"".join(hashlib.md5(p).digest() for p in parts)
    expected = f'"{_md5_hex(md5s)}-3"'
    assert ET.fromstring(r.content).findtext("ETag") == expected
    assert r.headers["x-oss-hash-crc64ecma"] == str(_combined_crc(parts)) == str(crc64(whole))

    obj = emu.head_object(B, "m.bin")
    assert obj is not None
    assert obj.size == len(whole) and obj.crc64 == crc64(whole) and obj.etag == expected[1:-1]
    assert [size for _, size in obj.segments] == [len(p) for p in parts]
    assert len(_files(emu, "*.seg")) == 3  # Complete renamed the part files: no copy
    assert _files(emu, "*.data") == []
    assert emu.list_uploads() == []

    g = oss_request(emu, "GET", B, "m.bin")
    assert g.content == whole
    assert g.headers["etag"] == expected
    assert g.headers["x-oss-hash-crc64ecma"] == str(crc64(whole))
    assert emu.get_object(B, "m.bin") == whole
    edge = len(parts[0])
    for start, end in [
        (0, 0),
        (edge - 10, edge + 10),  # across the first boundary
        (edge, edge),  # first byte of part 2
        (5, len(whole) - 5),  # spans all three
        (edge + len(parts[1]) - 1, len(whole) - 1),  # last byte of part 2 to the end
        (len(whole) - 1, len(whole) - 1),
    ]:
        rg = oss_request(emu, "GET", B, "m.bin", headers={"Range": f"bytes={start}-{end}"})
        assert rg.status_code == 206
        assert rg.content == whole[start : end + 1], (start, end)
        assert rg.headers["content-range"] == f"bytes {start}-{end}/{len(whole)}"
    rg = oss_request(emu, "GET", B, "m.bin", headers={"Range": "bytes=-100"})
    assert rg.content == whole[-100:]
    rg = oss_request(emu, "GET", B, "m.bin", headers={"Range": f"bytes={edge}-"})
    assert rg.content == whole[edge:]

    path = emu.object_path(B, "m.bin")  # assembled on request, inside the data dir
    assert path is not None and path.read_bytes() == whole
    assert path.resolve().is_relative_to(emu.data_dir.resolve())
    assert emu.object_path(B, "m.bin") == path

    # Overwriting deletes the segments and the assembled file.
    r = oss_request(emu, "PUT", B, "m.bin", body=b"small now")
    assert r.status_code == 200
    assert _files(emu, "*.seg") == []
    assert emu.get_object(B, "m.bin") == b"small now"
    _multipart(emu, "m2.bin", parts)
    assert len(_files(emu, "*.seg")) == 3
    assert oss_request(emu, "DELETE", B, "m2.bin").status_code == 204
    assert _files(emu, "*.seg") == []


def test_multipart_object_survives_a_restart(tmp_path: Path) -> None:
    parts = [os.urandom(MiB + 1), os.urandom(150 * 1024)]
    whole = b"".join(parts)
    with OSSEmulator(data_dir=tmp_path, buckets=[B]) as emu:
        _multipart(emu, "keep.bin", parts)
    with OSSEmulator(data_dir=tmp_path) as emu:
        obj = emu.head_object(B, "keep.bin")
        assert obj is not None and obj.object_type == "Multipart" and len(obj.segments) == 2
        assert oss_request(emu, "GET", B, "keep.bin").content == whole
        rg = oss_request(emu, "GET", B, "keep.bin", headers={"Range": "bytes=1048570-1048580"})
        assert rg.content == whole[1048570:1048581]


def test_upload_part_after_complete_is_refused(default_emulator: OSSEmulator) -> None:
    emu = default_emulator
    r = oss_request(emu, "POST", B, "late.bin", query=[("uploads", "")])
    upload_id = ET.fromstring(r.content).findtext("UploadId") or ""
    q = [("partNumber", "1"), ("uploadId", upload_id)]
    etag = oss_request(emu, "PUT", B, "late.bin", query=q, body=b"a" * 200_000).headers["etag"]
    body = f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part>"
    r = oss_request(
        emu,
        "POST",
        B,
        "late.bin",
        query=[("uploadId", upload_id)],
        body=(body + "</CompleteMultipartUpload>").encode(),
    )
    assert r.status_code == 200
    r = oss_request(emu, "PUT", B, "late.bin", query=q, body=b"b" * 200_000)
    assert r.status_code == 404 and error_code(r) == "NoSuchUpload"
    assert emu.get_object(B, "late.bin") == b"a" * 200_000


# --------------------------------------------------------------------------- fast mode


def test_fast_mode_etag_from_crc_and_size(fast_emulator: OSSEmulator) -> None:
    emu = fast_emulator
    assert emu.etag == "fast"
    for size in (0, 10, BIG):
        data = os.urandom(size)
        r = oss_request(emu, "PUT", B, f"f{size}", body=data)
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == f'"{_fast_etag(data)}"'
        assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(data))
        assert "content-md5" not in r.headers
        g = oss_request(emu, "GET", B, f"f{size}")
        assert g.content == data
        assert "content-md5" not in g.headers
        obj = emu.head_object(B, f"f{size}")
        assert obj is not None and obj.content_md5 is None


def test_fast_mode_still_verifies_content_md5(fast_emulator: OSSEmulator) -> None:
    emu = fast_emulator
    data = os.urandom(BIG)
    r = oss_request(emu, "PUT", B, "md5.bin", body=data, headers={"Content-MD5": _md5_b64(b"x")})
    assert r.status_code == 400 and error_code(r) == "InvalidDigest"
    assert emu.head_object(B, "md5.bin") is None
    r = oss_request(emu, "PUT", B, "md5.bin", body=data, headers={"Content-MD5": _md5_b64(data)})
    assert r.status_code == 200
    # With the MD5 at hand the ETag is the faithful one.
    assert r.headers["etag"] == f'"{_md5_hex(data)}"'
    assert r.headers["content-md5"] == _md5_b64(data)


def test_fast_mode_multipart(fast_emulator: OSSEmulator) -> None:
    emu = fast_emulator
    parts = [os.urandom(MiB + 100), os.urandom(200 * 1024)]
    r, etags = _multipart(emu, "fm.bin", parts)
    assert etags == [f'"{_fast_etag(p)}"' for p in parts]
    digests = b"".join(bytes.fromhex(_fast_etag(p)) for p in parts)
    expected = f'"{_md5_hex(digests)}-2"'
    assert ET.fromstring(r.content).findtext("ETag") == expected
    assert r.headers["x-oss-hash-crc64ecma"] == str(crc64(b"".join(parts)))
    assert oss_request(emu, "GET", B, "fm.bin").content == b"".join(parts)


def test_etag_option_validation_and_cli_flag() -> None:
    with pytest.raises(ValueError, match="etag"):
        OSSEmulator(etag="sha1")
    assert build_parser().parse_args([]).etag == "md5"
    assert build_parser().parse_args(["--etag", "fast"]).etag == "fast"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--etag", "crc"])


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no tmpfs at /dev/shm")
def test_large_puts_on_tmpfs() -> None:
    # where the benchmarks keep the emulator's data
    with (
        tempfile.TemporaryDirectory(dir="/dev/shm") as tmp,
        OSSEmulator(data_dir=tmp, buckets=[B]) as emu,
    ):
        data = os.urandom(BIG)
        r = oss_request(emu, "PUT", B, "shm.bin", body=data)
        assert r.status_code == 200, r.text
        assert r.headers["etag"] == f'"{_md5_hex(data)}"'
        assert emu.get_object(B, "shm.bin") == data
        _multipart(emu, "shm-m.bin", [data, data[:200_000]])
        assert emu.get_object(B, "shm-m.bin") == data + data[:200_000]
