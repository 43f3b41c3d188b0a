"""CRC-64 (``x-oss-hash-crc64ecma``): PROTOCOL.md §4.3 vectors and crcmod as the oracle."""

from __future__ import annotations

import random

import crcmod
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oss_callback.protocol._crc64 import CRC64, crc64, crc64_combine, crc64_combine_many

# PROTOCOL.md §4.3: CRC-64/XZ in crcmod terms.
_CRCMOD = crcmod.Crc(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF)


def reference(data: bytes) -> int:
    c = _CRCMOD.new()
    c.update(data)
    return c.crcValue


# --------------------------------------------------------------------------- vectors


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0),
        (b"123456789", 11051210869376104954),
        (b"hello world", 5981764153023615706),
        (b"test\0hello\1world\2!\3", 6745424696046691431),
        (b"Anything you're good at contributes to happiness.", 108247482078852440),
        (b"12345", 6748440630437108969),
        (b"67890", 6285347597771850461),
        (b"1234567890", 12811388247244714686),
    ],
)
def test_vectors(data: bytes, expected: int) -> None:
    assert crc64(data) == expected
    assert crc64(bytearray(data)) == expected
    assert crc64(memoryview(data)) == expected
    assert CRC64(data).value == expected
    assert reference(data) == expected  # the oracle agrees with the vectors too


def test_check_value_hex() -> None:
    assert crc64(b"123456789") == 0x995DC9BBDF1939FA


def test_ruby_combine_vector() -> None:
    # [RB] spec: crc_combine(crc(a), crc(b), len(b)) == crc(a + b) == crc(b, init=crc(a)).
    a, b = b"test\0hello\1world\2!\3", b"hello world"
    assert crc64_combine(6745424696046691431, 5981764153023615706, 11) == 13027479509578346683
    assert crc64(a + b) == 13027479509578346683
    assert crc64(b, 6745424696046691431) == 13027479509578346683


def test_combine_12345_67890() -> None:
    assert crc64_combine(6748440630437108969, 6285347597771850461, 5) == 12811388247244714686
    assert crc64(b"67890", 6748440630437108969) == 12811388247244714686


@pytest.mark.parametrize("crc", [0, 1, 5981764153023615706, 2**64 - 1])
@pytest.mark.parametrize("n", [1, 5, 11, 4096, 10**12])
def test_combine_with_zero_prefix(crc: int, n: int) -> None:
    # combine(0, c, n) == c: crc(b"") is 0, and "" + B == B.
    assert crc64_combine(0, crc, n) == crc


@pytest.mark.parametrize("crc1", [0, 1, 6745424696046691431, 2**64 - 1])
def test_combine_len2_zero_returns_crc1(crc1: int) -> None:
    assert crc64_combine(crc1, 0, 0) == crc1
    assert crc64_combine(crc1, crc64(b""), 0) == crc1


@pytest.mark.parametrize("len2", [-1, -(2**40)])
def test_combine_negative_len2(len2: int) -> None:
    with pytest.raises(ValueError, match="len2"):
        crc64_combine(1, 2, len2)


def test_combine_many_vs_ruby_vector() -> None:
    parts = [(6745424696046691431, 19), (5981764153023615706, 11)]
    assert crc64_combine_many(parts) == 13027479509578346683
    assert crc64_combine_many([]) == 0
    assert crc64_combine_many([(reference(b""), 0), (reference(b"123456789"), 9)]) == (
        11051210869376104954
    )


# --------------------------------------------------------------------------- vs crcmod

SIZES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 1000, 4095, 4096, 4097,
         65535, 65536, 65537, 1 << 20]


@pytest.mark.parametrize("size", SIZES)
def test_random_data_vs_crcmod(size: int) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    expected = reference(data)
    assert crc64(data) == expected
    assert crc64(memoryview(bytearray(data))) == expected
    # Non-contiguous-start views: a slice of a bigger buffer.
    big = b"\xff" * 3 + data + b"\x00" * 5
    assert crc64(memoryview(big)[3 : 3 + size]) == expected


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 4095, 65537])
def test_incremental_equals_whole(size: int) -> None:
    rng = random.Random(1000 + size)
    data = rng.randbytes(size)
    expected = reference(data)
    for chunk in (1, 3, 7, 8, 4096):
        h = CRC64()
        for i in range(0, size, chunk):
            h.update(data[i : i + chunk])
        assert h.value == expected, chunk
        assert h.length == size
        # The functional form: continue from the previous CRC.
        crc = 0
        for i in range(0, size, chunk):
            crc = crc64(data[i : i + chunk], crc)
        assert crc == expected, chunk


def test_update_with_empty_keeps_value() -> None:
    h = CRC64(b"hello world")
    h.update(b"")
    assert h.value == 5981764153023615706
    assert h.length == 11
    assert crc64(b"", 5981764153023615706) == 5981764153023615706


def test_crc64_class_initial_state() -> None:
    h = CRC64()
    assert h.value == 0
    assert h.length == 0
    h.update(bytearray(b"12345"))
    h.update(memoryview(b"67890"))
    assert h.value == 12811388247244714686
    assert h.length == 10


@pytest.mark.parametrize("seed", range(20))
def test_combine_random_parts_vs_crcmod(seed: int) -> None:
    rng = random.Random(seed)
    parts = [rng.randbytes(rng.choice([0, 1, 2, 9, 100, 4097, rng.randint(0, 70000)]))
             for _ in range(rng.randint(1, 8))]
    expected = reference(b"".join(parts))
    assert crc64_combine_many((reference(p), len(p)) for p in parts) == expected
    acc = 0
    for p in parts:
        acc = crc64_combine(acc, reference(p), len(p))
    assert acc == expected


def test_combine_large_len2_matches_zero_extension() -> None:
    # A long zero run: crc(A + 0^n) via combine == crcmod over the real bytes.
    a = b"prefix"
    for n in (1, 8, 1000, 1 << 20):
        zeros = bytes(n)
        assert crc64_combine(reference(a), reference(zeros), n) == reference(a + zeros)


# --------------------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None, database=None)
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=6),
)
def test_property_combine_over_random_splits(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    pieces = [data[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    whole = reference(data)
    assert crc64(data) == whole
    assert crc64_combine_many((crc64(p), len(p)) for p in pieces) == whole
    h = CRC64()
    for p in pieces:
        h.update(p)
    assert h.value == whole
    assert h.length == len(data)


@settings(max_examples=100, deadline=None, database=None)
@given(a=st.binary(max_size=500), b=st.binary(max_size=500))
def test_property_combine_two(a: bytes, b: bytes) -> None:
    assert crc64_combine(crc64(a), crc64(b), len(b)) == reference(a + b)
    assert crc64(b, crc64(a)) == reference(a + b)
