"""Part planning and checkpoint files: pure logic, property-tested."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oss_callback import CheckpointError
from oss_callback._checkpoint import (
    Checkpoint,
    FileIdentity,
    PartRecord,
    default_checkpoint_path,
    read_checkpoint,
    write_checkpoint,
)
from oss_callback._resumable import (
    DEFAULT_PART_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    choose_part_size,
    plan_parts,
)

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
    a = default_checkpoint_path("http://e", "bkt", "key", str(src))
    b = default_checkpoint_path("http://e", "bkt", "other", str(src))
    assert a != b
    assert Path(a).parent == tmp_path / "xdg" / "oss_callback" / "checkpoints"
    monkeypatch.setenv("OSS_CALLBACK_STATE_DIR", str(tmp_path / "override"))
    assert Path(default_checkpoint_path("http://e", "bkt", "key", str(src))).parent == (
        tmp_path / "override"
    )
