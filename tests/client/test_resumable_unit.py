"""Part planning and checkpoint files: pure logic, property-tested."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import pickle
import stat
from email.utils import formatdate
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oss_callback import (
    CallbackUnknownError,
    CheckpointError,
    ClientError,
    OSSError,
    PutObjectResult,
)
from oss_callback.client._checkpoint import (
    FORMAT,
    VERSION,
    Checkpoint,
    FileIdentity,
    PartRecord,
    _checksum,
    default_checkpoint_path,
    read_checkpoint,
    write_checkpoint,
)
from oss_callback.client._parts import (
    DEFAULT_PART_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    choose_part_size,
    plan_parts,
)
from oss_callback.client._recovery import _written_after, multipart_etag
from oss_callback.client._resume import VERIFY_UNIT, _file_crcs, _verify_units
from oss_callback.protocol._crc64 import crc64
from oss_callback.protocol._models import HeadObjectResult

TB = 10**12
MAX_OBJECT = int(48.8 * TB)


@settings(max_examples=500)
@given(st.integers(min_value=0, max_value=MAX_OBJECT))
def test_auto_part_size_never_needs_more_than_10000_parts(size: int) -> None:
    part = choose_part_size(size)
    assert MIN_PART_SIZE <= part <= MAX_PART_SIZE
    assert math.ceil(size / part) <= MAX_PARTS


@pytest.mark.parametrize(
    "size",
    [0, 1, DEFAULT_PART_SIZE * MAX_PARTS, DEFAULT_PART_SIZE * MAX_PARTS + 1,
     10_000 * 9_999_999 + 1, MAX_OBJECT, MAX_PARTS * MAX_PART_SIZE],
)
def test_auto_part_size_edges(size: int) -> None:
    part = choose_part_size(size)
    assert math.ceil(size / part) <= MAX_PARTS
    assert part >= DEFAULT_PART_SIZE


@settings(max_examples=300)
@given(st.integers(min_value=0, max_value=50 * 1024 * 1024),
       st.integers(min_value=MIN_PART_SIZE, max_value=8 * 1024 * 1024))
def test_plan_covers_every_byte_exactly_once(size: int, part_size: int) -> None:
    plan = plan_parts(size, part_size)
    assert [n for n, _, _ in plan] == list(range(1, len(plan) + 1))
    position = 0
    for _, offset, length in plan:
        assert offset == position
        assert 0 < length <= part_size
        position += length
    assert position == size
    # every part but the last is full-size (OSS's 100 KB minimum holds for non-last parts)
    assert all(length == part_size for _, _, length in plan[:-1])


def test_given_part_size_is_validated() -> None:
    with pytest.raises(ValueError, match="between 100 KiB"):
        choose_part_size(10, 1000)
    with pytest.raises(ValueError, match="between 100 KiB"):
        choose_part_size(10, MAX_PART_SIZE + 1)
    with pytest.raises(ValueError, match="use part_size >= "):
        choose_part_size(MAX_PARTS * MIN_PART_SIZE + 1, MIN_PART_SIZE)
    with pytest.raises(TypeError, match="int"):
        choose_part_size(10, 1.5e6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more than OSS allows"):
        choose_part_size(MAX_PARTS * MAX_PART_SIZE + 1)


def _checkpoint(tmp_path: Path, parts: int = 3) -> Checkpoint:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 10)
    ckpt = Checkpoint(
        endpoint="http://127.0.0.1:9", bucket="bkt", key="k/é", upload_id="UPLOAD",
        file=FileIdentity.of(str(src)), part_size=MIN_PART_SIZE,
        headers_digest="h" * 64, callback_digest=None,
    )
    for n in range(1, parts + 1):
        ckpt.parts[n] = PartRecord(number=n, offset=(n - 1) * MIN_PART_SIZE, size=MIN_PART_SIZE,
                                   etag=f"ETAG{n}", crc64=2**64 - n)
    return ckpt


def test_checkpoint_round_trip_and_mode_0600(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    path = str(tmp_path / "state" / "c.json")
    write_checkpoint(path, ckpt)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = read_checkpoint(path)
    assert loaded == ckpt
    # no temp files left behind
    assert os.listdir(tmp_path / "state") == ["c.json"]


def test_checkpoint_holds_no_secret(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    text = ckpt.encode().decode()
    doc = json.loads(text)
    assert set(doc) == {"format", "version", "checksum", "payload"}
    for word in ("secret", "token", "authorization", "access_key"):
        assert word not in text.lower()


FIXED = Checkpoint(
    endpoint="http://127.0.0.1:9", bucket="bkt", key="k", upload_id="UPLOAD",
    file=FileIdentity(path="/data/src.bin", size=300_000, mtime_ns=1_700_000_000_000_000_000,
                      inode=42),
    part_size=MIN_PART_SIZE, headers_digest="h" * 64, callback_digest="c" * 64,
    parts={1: PartRecord(number=1, offset=0, size=MIN_PART_SIZE, etag="E1", crc64=123),
           2: PartRecord(number=2, offset=MIN_PART_SIZE, size=MIN_PART_SIZE, etag="E2",
                         crc64=2**63)},
)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_byte_corruption_is_detected(data: st.DataObject) -> None:
    encoded = bytearray(FIXED.encode())
    index = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    new = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != encoded[index]))
    original = bytes(encoded)
    encoded[index] = new
    try:
        decoded = Checkpoint.decode(bytes(encoded))
    except CheckpointError:
        return
    # JSON-insignificant changes (whitespace swaps) may still decode; then nothing changed
    assert decoded == Checkpoint.decode(original)


def test_newer_version_and_foreign_files_are_refused(tmp_path: Path) -> None:
    doc = json.loads(_checkpoint(tmp_path).encode())
    doc["version"] = 99
    with pytest.raises(CheckpointError, match="newer oss_callback"):
        Checkpoint.decode(json.dumps(doc).encode())
    with pytest.raises(CheckpointError, match="not an oss_callback"):
        Checkpoint.decode(b'{"hello": "world"}')
    with pytest.raises(CheckpointError, match="not JSON"):
        Checkpoint.decode(b"\x00\x01garbage")


def test_read_checkpoint_missing_is_none(tmp_path: Path) -> None:
    assert read_checkpoint(str(tmp_path / "none.json")) is None
    with pytest.raises(CheckpointError, match="directory"):
        read_checkpoint(str(tmp_path))


def test_default_checkpoint_path_is_outside_the_source_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OSS_CALLBACK_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    src = tmp_path / "data" / "file.bin"
    a = default_checkpoint_path("bkt", "key", str(src))
    b = default_checkpoint_path("bkt", "other", str(src))
    assert a != b
    assert Path(a).parent == tmp_path / "xdg" / "oss_callback" / "checkpoints"
    monkeypatch.setenv("OSS_CALLBACK_STATE_DIR", str(tmp_path / "override"))
    assert Path(default_checkpoint_path("bkt", "key", str(src))).parent == (
        tmp_path / "override"
    )


# --------------------------------------------------------------------------- format 2


def _document(payload: dict[str, Any], version: int) -> bytes:
    return json.dumps({"format": FORMAT, "version": version, "checksum": _checksum(payload),
                       "payload": payload}).encode()


def test_checkpoint_format_2_records_ctime_and_the_initiate_time(tmp_path: Path) -> None:
    ckpt = attrs.evolve(_checkpoint(tmp_path), initiated_ms=1_700_000_000_123)
    src = tmp_path / "src.bin"
    assert ckpt.file.ctime_ns == os.stat(src).st_ctime_ns
    doc = json.loads(ckpt.encode())
    assert VERSION == doc["version"] == 2
    assert doc["payload"]["file"]["ctime_ns"] == os.stat(src).st_ctime_ns
    assert doc["payload"]["initiated_ms"] == 1_700_000_000_123
    assert Checkpoint.decode(ckpt.encode()) == ckpt


def test_format_1_checkpoint_is_read_with_ctime_and_initiate_time_unknown(
    tmp_path: Path,
) -> None:
    ckpt = _checkpoint(tmp_path)
    payload = ckpt.to_payload()
    del payload["file"]["ctime_ns"], payload["initiated_ms"]  # as format 1 wrote it
    loaded = Checkpoint.decode(_document(payload, 1))
    assert loaded.file.ctime_ns is None and loaded.initiated_ms is None
    assert loaded.parts == ckpt.parts and loaded.upload_id == ckpt.upload_id
    # an unknown ctime never equals a real file's identity: the parts get re-verified
    assert loaded.file != FileIdentity.of(str(tmp_path / "src.bin"))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p["file"].pop("ctime_ns"),
        lambda p: p.pop("initiated_ms"),
        lambda p: p["file"].update(ctime_ns=-1),
        lambda p: p["file"].update(ctime_ns="1"),
        lambda p: p.update(initiated_ms=1.5),
        lambda p: p.update(initiated_ms=True),
    ],
    ids=["no-ctime", "no-initiated", "negative-ctime", "string-ctime", "float-initiated",
         "bool-initiated"],
)
def test_format_2_checkpoint_without_its_new_fields_is_malformed(
    tmp_path: Path, mutate: Any
) -> None:
    payload = attrs.evolve(_checkpoint(tmp_path), initiated_ms=1).to_payload()
    mutate(payload)
    with pytest.raises(CheckpointError, match="malformed"):
        Checkpoint.decode(_document(payload, 2), "c.json")


@pytest.mark.parametrize("version", [0, -1])
def test_unknown_old_format_version_is_refused(tmp_path: Path, version: int) -> None:
    with pytest.raises(CheckpointError, match="unknown format version"):
        Checkpoint.decode(_document(_checkpoint(tmp_path).to_payload(), version))


# --------------------------------------------------------------------------- proof helpers


def test_multipart_etag_is_the_md5_of_the_parts_md5s_and_their_count() -> None:
    parts = [os.urandom(1000 + n) for n in range(3)]
    etags = [hashlib.md5(p).hexdigest().upper() for p in parts]
    expected = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    assert multipart_etag(etags) == expected.upper() + "-3"
    assert multipart_etag([e.lower() for e in etags]) == expected.upper() + "-3"
    # an ETag that isn't a hex MD5 makes the object's ETag unpredictable: no proof
    assert multipart_etag([*etags[:2], "Z" * 32]) is None
    assert multipart_etag([*etags[:2], etags[2] + "-1"]) is None


NOW = 1_700_000_000.4  # the local clock when the Initiate was sent


def _head(last_modified: str | None, date: str | None) -> HeadObjectResult:
    return HeadObjectResult(key="k", size=1, etag="E", last_modified=last_modified,
                            headers={"date": date} if date else {})


@pytest.mark.parametrize("server_ahead", [0.0, 3600.0, -3600.0, 0.7])
def test_written_after_the_initiate_measures_the_clock_offset(server_ahead: float) -> None:
    answered = NOW + 100  # local time when the HeadObject was answered, 100 s later
    date = formatdate(answered + server_ahead, usegmt=True)

    def written(seconds_after_initiate: float) -> bool:
        lm = formatdate(NOW + server_ahead + seconds_after_initiate, usegmt=True)
        return _written_after(_head(lm, date), NOW, answered)

    assert written(1)  # completed after the Initiate, on OSS's clock
    assert written(0)  # in the same second (Last-Modified has whole seconds)
    assert not written(-60)  # an object from a minute before this upload began
    assert not written(-3600 * 24)


def test_written_after_without_a_date_header_allows_the_skew_oss_tolerates() -> None:
    answered = NOW + 100

    def written(seconds_after_initiate: float) -> bool:
        lm = formatdate(NOW + seconds_after_initiate, usegmt=True)
        return _written_after(_head(lm, None), NOW, answered)

    assert written(1) and written(-600)  # within 15 minutes: can't tell, allowed
    assert not written(-1000)


@pytest.mark.parametrize("last_modified", [None, "", "yesterday"])
def test_no_usable_last_modified_is_no_proof(last_modified: str | None) -> None:
    assert not _written_after(_head(last_modified, formatdate(NOW, usegmt=True)), NOW, NOW)


@settings(max_examples=200)
@given(st.integers(0, 3 * VERIFY_UNIT), st.integers(MIN_PART_SIZE, VERIFY_UNIT + 1),
       st.data())
def test_verify_units_cover_each_range_once_in_contiguous_bounded_hops(
    size: int, part_size: int, data: st.DataObject
) -> None:
    plan = plan_parts(size, part_size)
    chosen = data.draw(st.lists(st.sampled_from(plan), unique=True) if plan else st.just([]))
    units = _verify_units(chosen)
    flat = [r for unit in units for r in unit]
    assert sorted(flat) == sorted(chosen)
    assert [o for _, o, _ in flat] == sorted(o for _, o, _ in chosen)  # file order
    for unit in units:
        assert unit
        assert len(unit) == 1 or sum(n for _, _, n in unit) <= VERIFY_UNIT
        assert all(a[1] + a[2] == b[1] for a, b in itertools.pairwise(unit))


def test_file_crcs_are_the_crcs_of_the_ranges(tmp_path: Path) -> None:
    data = os.urandom(3 * MIN_PART_SIZE + 17)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    plan = plan_parts(len(data), MIN_PART_SIZE)
    assert _file_crcs(str(src), plan) == {
        n: crc64(data[o:o + length]) for n, o, length in plan}
    src.write_bytes(data[:-1])  # shorter than planned: the last CRC can't match
    assert _file_crcs(str(src), plan[-1:])[4] != crc64(data[-17:])


def test_callback_unknown_error_is_a_client_error_carrying_the_result() -> None:
    result = PutObjectResult(key="k", etag="E-2", upload_id="U", recovered=True)
    error = CallbackUnknownError("object 'k' is stored; callback unknown", result=result)
    assert isinstance(error, ClientError) and isinstance(error, OSSError)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is CallbackUnknownError
    assert again.result == result and str(again) == str(error)
    assert result.callback_status is None and result.callback_body is None
    assert not PutObjectResult(key="k", etag="E").recovered  # the default
